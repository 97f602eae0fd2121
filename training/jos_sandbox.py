"""A real HTTP fake of the JOS router gateway (京东开放平台 routerjson): the tests' JD on a socket, and the
JD side of `kefu sandbox` (a sandbox: demo orders of made-up customers, nothing reaches JD).

Usage::

    with FakeJos("app-key", "app-secret", "token") as fake:
        fake.handle("jingdong.x.y.query", lambda biz: {"result": {"n": biz["n"]}})
        fake.faults = ["500", "timeout", None]      # consumed one per request, then normal answers
        ... JosClient(..., base_url=fake.url) ...
        fake.requests                                # every request received, in order

It checks what the real gateway checks (app_key, sign, timestamp window, access token) with its own
independent MD5 code rather than api.jd.signing, so a signing bug in the client cannot be hidden by the
fake agreeing with it. Only the standard library is used.

Fault specs, consumed one per request from `fake.faults`:
    "timeout"      sleep `timeout_sleep` s (set it above the client's timeout), then answer
    "drop"         close the connection without answering
    "500"          that HTTP status (any 3 digits) with an HTML body
    "malformed"    200 with invalid JSON
    "wrong-shape"  200 with valid JSON lacking the `<method>_responce` key
    "jos:CODE"     200 with an `error_response` carrying CODE
    "slow:S"       answer correctly after S seconds
    None           answer normally

Chat messages sent to customers: `install_chat_push(fake)` serves jingdong.dongdong.packet.josChatMessage.push
and returns the list of messages it accepted (one per upid: JD drops a repeated upid), with the faults above.

Orders, logistics and refunds: `install_orders(fake, DEMO_ORDERS, ...)` serves the order detail, logistics
trace and refund list methods from `SandboxOrder` fixtures, in the response shapes api/jd/orders.py reads
(written out here independently). Two demo orders misbehave on purpose: SLOW_ORDER answers after
`slow_seconds` (past any lookup budget) and ERROR_ORDER gets JOS error 3.
"""

from __future__ import annotations

import hashlib
import json
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DEMO_ORDERS",
    "ERROR_DESCRIPTIONS",
    "ERROR_ORDER",
    "SLOW_ORDER",
    "FakeJos",
    "FakeJosError",
    "RecordedRequest",
    "SandboxOrder",
    "SandboxRefund",
    "SentChatMessage",
    "fake_sign",
    "install_chat_push",
    "install_orders",
]

_BEIJING = timezone(timedelta(hours=8))
_SYSTEM_PARAMS = ("method", "app_key", "timestamp", "v", "sign")

ERROR_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "1": ("服务不可用", "Service unavailable"),
    "2": ("系统繁忙，请稍后再试", "System busy"),
    "3": ("服务内部错误", "Internal service error"),
    "11": ("access_token无效或已过期", "Invalid or expired access_token"),
    "12": ("app_key无效", "Invalid app_key"),
    "19": ("签名无效", "Invalid signature"),
    "20": ("时间戳格式错误", "Invalid timestamp format"),
    "21": ("时间戳超出允许范围", "Timestamp out of range"),
    "22": ("无权调用此API", "App not authorized for this method"),
    "30": ("缺少或无效的系统参数", "Missing or invalid system parameter"),
    "31": ("业务参数格式错误", "Invalid business parameters"),
    "63": ("服务暂时不可用", "Service temporarily unavailable"),
    "66": ("调用频率超限", "Call frequency limit exceeded"),
    "67": ("调用次数超限", "Call quota exceeded"),
}


def fake_sign(params: dict[str, str], app_secret: str) -> str:
    """The JOS sign, written out independently of api.jd.signing on purpose."""
    pieces = [app_secret]
    for name in sorted(params, key=lambda n: n.encode("utf-8")):
        value = params[name]
        if name != "sign" and value:
            pieces.append(name + value)
    pieces.append(app_secret)
    return hashlib.md5("".join(pieces).encode("utf-8")).hexdigest().upper()


class FakeJosError(Exception):
    """Raise from a handler to answer with `error_response` carrying `code`."""

    def __init__(self, code: str, zh_desc: str | None = None, en_desc: str | None = None) -> None:
        zh, en = ERROR_DESCRIPTIONS.get(code, (f"模拟错误 {code}", f"simulated error {code}"))
        super().__init__(code)
        self.code = code
        self.zh_desc = zh_desc or zh
        self.en_desc = en_desc or en


@dataclass
class RecordedRequest:
    """One request as the fake received it (before any fault was applied)."""

    http_method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    fault: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def jos_method(self) -> str | None:
        return self.params.get("method")

    @property
    def biz_params(self) -> Any:
        raw = self.params.get("360buy_param_json")
        return json.loads(raw) if raw else {}


def _check_fault(spec: str | None) -> None:
    if spec is None or spec in ("timeout", "drop", "malformed", "wrong-shape"):
        return
    if spec.isdigit() and len(spec) == 3:
        return
    if spec.startswith("jos:") and spec[4:]:
        return
    if spec.startswith("slow:"):
        float(spec[5:])
        return
    raise ValueError(f"unknown FakeJos fault {spec!r}")


Handler = Callable[[Any], dict[str, Any]]


class FakeJos:
    """The fake gateway; start/stop it with `with` (or start()/stop())."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        access_token: str | None = None,
        *,
        timeout_sleep: float = 0.5,
        timestamp_window: timedelta = timedelta(minutes=10),
        clock_skew: timedelta = timedelta(0),
        path: str = "/routerjson",
    ) -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        # None: accept any token (APIs that need none).
        self.access_token = access_token
        self.timeout_sleep = timeout_sleep
        self.timestamp_window = timestamp_window
        # Added to the fake's idea of "now", to simulate a client clock that is off.
        self.clock_skew = clock_skew
        self.path = path
        self.handlers: dict[str, Handler] = {}
        self.requests: list[RecordedRequest] = []
        self.handler_errors: list[str] = []
        self._faults: list[str | None] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------------------------
    @property
    def faults(self) -> list[str | None]:
        return self._faults

    @faults.setter
    def faults(self, specs: Iterable[str | None]) -> None:
        specs = list(specs)
        for spec in specs:
            _check_fault(spec)
        with self._lock:
            self._faults = specs

    def handle(self, method: str, fn: Handler) -> Handler:
        """Register `fn(biz_params) -> dict`, which becomes the `<method>_responce` body plus code "0"."""
        self.handlers[method] = fn
        return fn

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeJos is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    def start(self) -> FakeJos:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-jos", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in "timeout"/"slow" faults
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeJos:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request processing --------------------------------------------------------------------------
    def _record(self, request: RecordedRequest) -> str | None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            request.fault = fault
            self.requests.append(request)
        return fault

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def answer(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """What the gateway says to a well-formed HTTP request carrying `params`."""
        for name in _SYSTEM_PARAMS:
            if not params.get(name):
                return 200, _error("30", en_desc=f"missing system parameter {name}")
        if params["app_key"] != self.app_key:
            return 200, _error("12")
        if params["sign"].upper() != fake_sign(params, self.app_secret):
            return 200, _error("19")
        try:
            ts = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=_BEIJING)
        except ValueError:
            return 200, _error("20")
        if abs(ts - (datetime.now(UTC) + self.clock_skew)) > self.timestamp_window:
            return 200, _error("21")
        if params["v"] != "2.0":
            return 200, _error("30", en_desc="unsupported v")
        if self.access_token is not None and params.get("access_token") != self.access_token:
            return 200, _error("11")
        method = params["method"]
        handler = self.handlers.get(method)
        if handler is None:
            return 200, _error("22", en_desc=f"FakeJos has no handler for {method}")
        try:
            biz = json.loads(params.get("360buy_param_json") or "{}")
        except ValueError:
            return 200, _error("31")
        try:
            result = handler(biz)
        except FakeJosError as exc:
            return 200, {"error_response": {"code": exc.code, "zh_desc": exc.zh_desc, "en_desc": exc.en_desc}}
        except Exception:
            self.handler_errors.append(traceback.format_exc())
            return 500, {"error": "handler raised"}
        return 200, {f"{method.replace('.', '_')}_responce": {"code": "0", **result}}


def _error(code: str, zh_desc: str | None = None, en_desc: str | None = None) -> dict[str, Any]:
    err = FakeJosError(code, zh_desc, en_desc)
    return {"error_response": {"code": err.code, "zh_desc": err.zh_desc, "en_desc": err.en_desc}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 makes bursts of concurrent clients wait for a 1 s SYN retransmit.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeJos
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that gave up (timeouts) leave broken pipes behind; that is expected, not test noise."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the default line includes GET query strings (token, sign) and clutters test output."""

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve("POST", self.rfile.read(length))

    def _serve(self, http_method: str, body: bytes) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        form = parse_qs(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8")
        params.update({k: v[0] for k, v in form.items()})
        fault = fake._record(RecordedRequest(http_method, url.path, params, dict(self.headers.items())))

        if url.path != fake.path:
            self._send(404, b"<html>404 Not Found</html>", "text/html")
            return
        if fault == "timeout":
            fake._wait(fake.timeout_sleep)
        elif fault == "drop":
            self.close_connection = True
            return
        elif fault == "malformed":
            self._send(200, b'{"jingdong_broken_responce": {"code": "0", ', "application/json")
            return
        elif fault == "wrong-shape":
            self._send_json(200, {"unexpected_responce": {"code": "0"}})
            return
        elif fault is not None and fault.isdigit():
            self._send(int(fault), b"<html><body>upstream error</body></html>", "text/html")
            return
        elif fault is not None and fault.startswith("jos:"):
            self._send_json(200, _error(fault[4:]))
            return
        elif fault is not None and fault.startswith("slow:"):
            fake._wait(float(fault[5:]))
        self._send_json(*fake.answer(params))

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type};charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away


# ------------------------------------------------------------------------------------ order fixtures
@dataclass(frozen=True)
class SandboxRefund:
    refund_id: str
    amount_fen: int  # JD gives refund sums in fen
    status: int  # refund-apply status code (0 待审核, 1 审核通过, 2 审核不通过, ...)
    apply_time: str
    check_time: str = ""


@dataclass(frozen=True)
class SandboxOrder:
    order_id: str
    pin: str  # the buyer's JD pin
    state: str  # JD orderState code
    state_remark: str  # its Chinese wording
    payment: str  # yuan, as JD writes it
    created: str  # Beijing time
    waybill: str = ""  # "" while not shipped
    carrier: str = ""
    traces: tuple[tuple[str, str], ...] = ()  # (time, what happened), oldest first
    refunds: tuple[SandboxRefund, ...] = ()


DEMO_PINS = ("jd_demo_alice", "jd_demo_bob", "jd_demo_carol")
DEMO_ORDERS: tuple[SandboxOrder, ...] = (
    SandboxOrder(
        "300012345601", "jd_demo_alice", "WAIT_SELLER_STOCK_OUT", "等待出库", "5999.00", "2026-11-20 10:21:33"
    ),
    SandboxOrder(
        "300012345602",
        "jd_demo_alice",
        "WAIT_GOODS_RECEIVE_CONFIRM",
        "等待确认收货",
        "6499.00",
        "2026-11-18 21:05:10",
        waybill="JDVA20261118001",
        carrier="京东快递",
        traces=(
            ("2026-11-19 08:12:00", "您的订单已出库"),
            ("2026-11-19 20:40:00", "您的快件已到达【北京通州分拣中心】"),
            ("2026-11-20 07:55:00", "您的快件正在派送中，请保持电话畅通"),
        ),
    ),
    SandboxOrder(
        "300012345603",
        "jd_demo_bob",
        "FINISHED_L",
        "完成",
        "4299.00",
        "2026-11-02 14:30:00",
        waybill="JDVA20261102007",
        carrier="京东快递",
        traces=(("2026-11-03 09:00:00", "您的订单已出库"), ("2026-11-04 11:20:00", "您的快件已签收")),
        refunds=(SandboxRefund("RF7001", 19900, 1, "2026-11-10 16:00:00", "2026-11-11 10:00:00"),),
    ),
    SandboxOrder(
        "300012345604",
        "jd_demo_bob",
        "TRADE_CANCELED",
        "已取消",
        "3899.00",
        "2026-11-21 09:10:00",
        refunds=(SandboxRefund("RF7002", 389900, 0, "2026-11-21 09:12:00"),),
    ),
    SandboxOrder(
        "300012345605",
        "jd_demo_carol",
        "WAIT_GOODS_RECEIVE_CONFIRM",
        "等待确认收货",
        "7999.00",
        "2026-11-19 12:00:00",
        waybill="SF1400123456789",
        carrier="顺丰速运",
        traces=(
            ("2026-11-20 18:30:00", "快件已发车"),
            ("2026-11-21 06:10:00", "快件到达【上海浦东集散中心】"),
        ),
    ),
    SandboxOrder(
        "300012345606",
        "jd_demo_carol",
        "LOCKED",
        "已锁定（售后处理中）",
        "499.00",
        "2026-11-15 19:45:00",
        waybill="JDVA20261115033",
        carrier="京东快递",
        traces=(("2026-11-16 10:00:00", "您的快件已签收"),),
        refunds=(SandboxRefund("RF7003", 49900, 2, "2026-11-17 08:00:00", "2026-11-17 15:30:00"),),
    ),
)
SLOW_ORDER = "300012345698"  # the order call answers after `slow_seconds`
ERROR_ORDER = "300012345699"  # the order call fails with JOS error 3


def install_orders(
    fake: FakeJos,
    orders: Iterable[SandboxOrder] = DEMO_ORDERS,
    *,
    order_method: str,
    logistics_method: str,
    refund_method: str,
    slow_seconds: float = 5.0,
) -> dict[str, SandboxOrder]:
    """Serve order detail, logistics trace and refund list for `orders` on `fake`; returns them by id."""
    by_id = {o.order_id: o for o in orders}

    def order(biz: Any) -> dict[str, Any]:
        order_id = str(biz.get("order_id") or "")
        if order_id == SLOW_ORDER:
            fake._wait(slow_seconds)
        if order_id == ERROR_ORDER:
            raise FakeJosError("3")
        o = by_id.get(order_id)
        if o is None:
            return {
                "orderDetailInfo": {
                    "apiResult": {
                        "success": False,
                        "chineseErrCode": "订单不存在",
                        "englishErrCode": "no order",
                    },
                    "orderInfo": None,
                }
            }
        info = {
            "orderId": o.order_id,
            "pin": o.pin,
            "orderState": o.state,
            "orderStateRemark": o.state_remark,
            "orderTotalPrice": o.payment,
            "orderPayment": o.payment,
            "orderStartTime": o.created,
            "waybill": o.waybill,
            "logisticsId": "2087" if o.waybill else "",
        }
        return {"orderDetailInfo": {"apiResult": {"success": True}, "orderInfo": info}}

    def logistics(biz: Any) -> dict[str, Any]:
        o = by_id.get(str(biz.get("orderId") or ""))
        if o is None:
            raise FakeJosError("31", en_desc="unknown orderId")
        traces = [{"opeTime": t, "opeTitle": "运输中", "opeRemark": text} for t, text in o.traces]
        return {"response": {"waybillCode": o.waybill, "carrierName": o.carrier, "traces": traces}}

    def refunds(biz: Any) -> dict[str, Any]:
        order_id = str(biz.get("orderId") or "")
        o = by_id.get(order_id)
        rows = [
            {
                "id": r.refund_id,
                "orderId": order_id,
                "applyRefundSum": r.amount_fen,
                "status": r.status,
                "applyTime": r.apply_time,
                "checkTime": r.check_time,
            }
            for r in (o.refunds if o else ())
        ]
        return {"queryResult": {"success": True, "totalCount": len(rows), "result": rows}}

    fake.handle(order_method, order)
    fake.handle(logistics_method, logistics)
    fake.handle(refund_method, refunds)
    return by_id


# ------------------------------------------------------------------------------------------ evaluations
@dataclass(frozen=True)
class SandboxEvaluation:
    """A made-up customer's rating of a made-up chat, as jingdong.im.pop.evaluationlist.get lists it."""

    evaluation_id: str
    customer: str  # pin
    waiter: str
    sid: str  # JD's session id of the rated chat
    score: int  # 1-5
    content: str
    time: str  # Beijing time, YYYY-MM-DD HH:MM:SS


def install_evaluations(
    fake: FakeJos,
    evaluations: Iterable[SandboxEvaluation],
    *,
    list_method: str = "jingdong.im.pop.evaluationlist.get",
    stat_method: str = "jingdong.im.pop.evaluationstat.get",
    max_window: timedelta = timedelta(days=31),
) -> list[SandboxEvaluation]:
    """Serve the evaluation list (its time window, waiter filter and paging, as JD does) and its
    statistics for `evaluations` on `fake`. A window longer than `max_window` is refused, as JOS refuses
    over-long queries; a malformed time is JOS error 31."""
    rows = sorted(evaluations, key=lambda e: (e.time, e.evaluation_id))

    def window(biz: Any) -> list[SandboxEvaluation]:
        try:
            start = datetime.strptime(str(biz.get("startTime")), "%Y-%m-%d %H:%M:%S")
            end = datetime.strptime(str(biz.get("endTime")), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise FakeJosError("31", en_desc="startTime/endTime: yyyy-MM-dd HH:mm:ss") from None
        if end - start > max_window:
            raise FakeJosError("31", en_desc="time window too long")
        waiter = biz.get("waiter")
        return [
            e
            for e in rows
            if start <= datetime.strptime(e.time, "%Y-%m-%d %H:%M:%S") < end
            and (not waiter or e.waiter == waiter)
        ]

    def listing(biz: Any) -> dict[str, Any]:
        found = window(biz)
        page, size = int(biz.get("page") or 1), int(biz.get("pageSize") or 20)
        chunk = found[(page - 1) * size : page * size]
        records = [
            {
                "id": e.evaluation_id,
                "customer": e.customer,
                "waiter": e.waiter,
                "sid": e.sid,
                "score": e.score,
                "content": e.content,
                "time": e.time,
            }
            for e in chunk
        ]
        return {"result": {"success": True, "total": len(found), "evaluationList": records}}

    def stat(biz: Any) -> dict[str, Any]:
        found = window(biz)
        scores = [e.score for e in found]
        return {
            "result": {
                "success": True,
                "evaluationNum": len(found),
                "satisfiedNum": sum(s >= 4 for s in scores),
                "dissatisfiedNum": sum(s <= 2 for s in scores),
                "avgScore": round(sum(scores) / len(scores), 2) if scores else 0,
            }
        }

    fake.handle(list_method, listing)
    fake.handle(stat_method, stat)
    return rows


# ------------------------------------------------------------------------------------- service statistics
@dataclass(frozen=True)
class SandboxServiceDay:
    """One day of a made-up shop's customer service, as JD's statistics methods report it."""

    day: str  # YYYY-MM-DD (Beijing)
    unreplied: int
    avg_wait_seconds: float
    ask_rate: float
    online_seconds: dict[str, int] = field(default_factory=dict)  # agent pin -> seconds online


def install_service_stats(
    fake: FakeJos,
    days: Iterable[SandboxServiceDay],
    *,
    unreply_method: str = "jingdong.im.pop.unreplystat.get",
    avgwait_method: str = "jingdong.im.pop.consult.avgwaittime.get",
    askrate_method: str = "jingdong.im.pop.askRate.get",
    online_method: str = "jingdong.im.pop.waiter.onlinetime.stat.get",
) -> dict[str, SandboxServiceDay]:
    """Serve the four daily statistics for `days` on `fake` (a day without a fixture reports zeros)."""
    by_day = {d.day: d for d in days}
    empty = SandboxServiceDay("", 0, 0.0, 0.0)

    def day_of(biz: Any, key: str = "startTime") -> SandboxServiceDay:
        value = str(biz.get(key) or "")
        try:
            datetime.strptime(value[:10], "%Y-%m-%d")
        except ValueError:
            raise FakeJosError("31", en_desc=f"{key}: yyyy-MM-dd") from None
        return by_day.get(value[:10], empty)

    fake.handle(unreply_method, lambda biz: {"result": {"unReplyNum": day_of(biz).unreplied}})
    fake.handle(avgwait_method, lambda biz: {"result": {"avgWaitTime": day_of(biz, "date").avg_wait_seconds}})
    fake.handle(askrate_method, lambda biz: {"result": {"askRate": day_of(biz).ask_rate}})
    fake.handle(
        online_method,
        lambda biz: {
            "result": {
                "list": [{"waiter": w, "onlineTime": s} for w, s in day_of(biz).online_seconds.items()]
            }
        },
    )
    return by_day


# ------------------------------------------------------------------------------------------- chat push
@dataclass(frozen=True)
class SentChatMessage:
    """One chat message the fake accepted (param2 of the chat push, as JD reads it)."""

    upid: str
    from_pin: str
    to_pin: str
    body: str
    fields: dict[str, Any]


def install_chat_push(
    fake: FakeJos, *, method: str = "jingdong.dongdong.packet.josChatMessage.push"
) -> list[SentChatMessage]:
    """Serve the chat push on `fake`; returns the list the accepted messages are appended to. The two
    objects are checked as JD would (written out here independently of api.jd.methods): a missing
    object, toPin, fromPin or body is JOS error 31, and a repeated upid is accepted without a second
    message (JD's idempotency)."""
    sent: list[SentChatMessage] = []
    lock = threading.Lock()

    def push(biz: Any) -> dict[str, Any]:
        access, message = biz.get("param1"), biz.get("param2")
        if not isinstance(access, dict) or not isinstance(message, dict):
            raise FakeJosError("31", en_desc="param1 and param2 must be objects")
        missing = [k for k in ("upid", "fromPin", "toPin", "body") if not message.get(k)]
        if missing or not access.get("accessToken"):
            raise FakeJosError("31", en_desc=f"missing {', '.join(missing) or 'accessToken'}")
        with lock:
            if all(m.upid != message["upid"] for m in sent):
                sent.append(
                    SentChatMessage(
                        str(message["upid"]),
                        str(message["fromPin"]),
                        str(message["toPin"]),
                        str(message["body"]),
                        dict(message),
                    )
                )
        return {"result": {"success": True, "upid": message["upid"]}}

    fake.handle(method, push)
    return sent


# ------------------------------------------------------------------------------------------- chat logs
DEMO_CHATLOG = Path(__file__).resolve().parent.parent / "models" / "demo-chatlog.jsonl"


def load_chatlog(path: Path = DEMO_CHATLOG) -> list[dict[str, Any]]:
    """The demo shop's chat history as jingdong.im.pop.chatlog.get lists it (made-up customers and
    agents; customer turns from the demo conversation set, agents' replies around the KB's answers)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def install_chatlog(
    fake: FakeJos,
    messages: Iterable[dict[str, Any]],
    *,
    method: str = "jingdong.im.pop.chatlog.get",
    session_method: str = "jingdong.im.pop.sessionlist.get",
    max_window: timedelta = timedelta(days=31),
) -> list[dict[str, Any]]:
    """Serve chat messages by time window (and optional waiter / customer), page by page, as JD does, and
    the sessions they belong to (by their first message's time)."""
    rows = sorted(messages, key=lambda r: (r["time"], r["msgId"]))

    def listing(biz: Any) -> dict[str, Any]:
        try:
            start = datetime.strptime(str(biz.get("startTime")), "%Y-%m-%d %H:%M:%S")
            end = datetime.strptime(str(biz.get("endTime")), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise FakeJosError("31", en_desc="startTime/endTime: yyyy-MM-dd HH:mm:ss") from None
        if end - start > max_window:
            raise FakeJosError("31", en_desc="time window too long")
        found = [
            r
            for r in rows
            if start <= datetime.strptime(r["time"], "%Y-%m-%d %H:%M:%S") < end
            and (not biz.get("waiter") or r["waiter"] == biz["waiter"])
            and (not biz.get("customer") or r["customer"] == biz["customer"])
        ]
        page, size = int(biz.get("page") or 1), int(biz.get("pageSize") or 20)
        return {
            "result": {
                "success": True,
                "total": len(found),
                "chatLogList": found[(page - 1) * size : page * size],
            }
        }

    def sessions(biz: Any) -> dict[str, Any]:
        try:
            start = datetime.strptime(str(biz.get("startTime")), "%Y-%m-%d %H:%M:%S")
            end = datetime.strptime(str(biz.get("endTime")), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise FakeJosError("31", en_desc="startTime/endTime: yyyy-MM-dd HH:mm:ss") from None
        by_sid: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_sid.setdefault(r["sid"], []).append(r)
        found = [
            {
                "sid": sid,
                "customer": msgs[0]["customer"],
                "waiter": msgs[0]["waiter"],
                "startTime": msgs[0]["time"],
                "endTime": msgs[-1]["time"],
            }
            for sid, msgs in by_sid.items()
            if start <= datetime.strptime(msgs[0]["time"], "%Y-%m-%d %H:%M:%S") < end
            and (not biz.get("waiter") or msgs[0]["waiter"] == biz["waiter"])
        ]
        page, size = int(biz.get("page") or 1), int(biz.get("pageSize") or 20)
        return {
            "result": {
                "success": True,
                "total": len(found),
                "sessionList": found[(page - 1) * size : page * size],
            }
        }

    fake.handle(method, listing)
    fake.handle(session_method, sessions)
    return rows


DEMO_GROUPS = [
    {"groupId": 1, "groupName": "售前咨询", "waiters": ["xingchen_kf01", "xingchen_kf02"]},
    {"groupId": 2, "groupName": "售后服务", "waiters": ["xingchen_kf03"]},
]


def install_groups(
    fake: FakeJos,
    groups: Iterable[dict[str, Any]] = DEMO_GROUPS,
    *,
    method: str = "jingdong.im.pop.groupinfo.get",
) -> None:
    """Serve the shop's agent groups (made up)."""
    listed = list(groups)
    fake.handle(method, lambda biz: {"result": {"success": True, "groupList": listed}})
