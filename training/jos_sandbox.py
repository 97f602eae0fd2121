"""A real HTTP fake of the JOS router gateway (京东开放平台 routerjson), for tests that need JD on a socket.

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
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["ERROR_DESCRIPTIONS", "FakeJos", "FakeJosError", "RecordedRequest", "fake_sign"]

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
