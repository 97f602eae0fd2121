"""Orders, logistics and refunds read from JOS for dynamic KB entries (订单, 物流, 退款).

Each JOS method used is described once, as a `JosMethod`: the setting that names it (the method names
differ between JD app types, so they are configuration), the business parameters sent, and how its
answer is read into template fields ({order.state}, {logistics.latest}, {refund.amount} ...: the set is
engine.kb.ACTIONS). Answers are read tolerantly: a record is the first object anywhere in the result that
carries the method's key field, and each value is looked up under the names JD APIs use for it.

| setting (KEFU_...)      | default                                        | sent                        |
| jos_order_method        | jingdong.pop.order.get                         | order_id, optional_fields   |
| jos_logistics_method    | jingdong.ldop.receive.trace.get                | orderId, waybillCode        |
| jos_refund_method       | jingdong.pop.afs.soa.refundapply.queryPageList | orderId, pageIndex, pageSize|

A lookup has a time budget (KEFU_ORDER_LOOKUP_BUDGET, 1.5 s) for all its calls together: each call gets
what is left as its timeout and is not retried, since a retry could not finish in time anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx

from api.jd.client import JosClient
from api.jd.errors import JosError, JosTransportError
from api.metrics import JOS_ERRORS, ORDER_LOOKUPS

log = logging.getLogger("kefu.orders")

T = TypeVar("T")
Failure = Literal["timeout", "jos_error", "not_found", "not_configured"]

# JD orderState codes, for answers that carry no orderStateRemark
ORDER_STATES = {
    "WAIT_SELLER_STOCK_OUT": "等待出库",
    "WAIT_GOODS_RECEIVE_CONFIRM": "等待确认收货",
    "WAIT_SELLER_DELIVERY": "等待发货",
    "POP_ORDER_PAUSE": "暂停",
    "FINISHED_L": "完成",
    "TRADE_CANCELED": "已取消",
    "LOCKED": "已锁定",
}
# refund-apply status codes
REFUND_STATES = {
    0: "待审核",
    1: "审核通过，退款处理中",
    2: "审核未通过",
    3: "京东财务审核通过",
    4: "京东财务审核未通过",
    5: "人工审核通过",
    6: "已拦截并退款",
    7: "拦截成功",
    8: "拦截失败",
    9: "已关单并退款",
}
ORDER_OPTIONAL_FIELDS = (
    "orderId,pin,orderState,orderStateRemark,orderTotalPrice,orderPayment,orderStartTime,waybill,logisticsId"
)


class LookupFailed(Exception):
    """A lookup that cannot give an answer: the conversation goes to a person with this reason."""

    def __init__(self, kind: Failure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Order:
    """An order as read from JOS: its owner and its {order.*} fields."""

    order_id: str
    pin: str
    waybill: str
    fields: dict[str, str]


@dataclass(frozen=True)
class JosMethod(Generic[T]):
    """One JOS method used: where its name is configured, what is sent, how the answer is read."""

    purpose: str
    setting: str  # attribute of api.settings.Settings (env KEFU_<SETTING>)
    default: str
    request: Callable[[str, str], dict[str, Any]]  # (order id, waybill) -> business parameters
    read: Callable[[dict[str, Any]], T]


# ------------------------------------------------------------------------------------------ reading
def _record_with(node: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The first object (breadth first) that has one of `keys`."""
    queue = [node]
    while queue:
        item = queue.pop(0)
        if isinstance(item, dict):
            if any(k in item for k in keys):
                return item
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)
    return None


def _records_with(node: Any, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The first list (breadth first) whose objects have one of `keys`."""
    queue = [node]
    while queue:
        item = queue.pop(0)
        if isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
            if any(k in item[0] for k in keys):
                return item
            queue.extend(item)
        elif isinstance(item, dict):
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)
    return []


def _first(record: Mapping[str, Any], *keys: str) -> str:
    for k in keys:
        value = record.get(k)
        if value not in (None, ""):
            return str(value)
    return ""


def _yuan(value: str) -> str:
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return value


def _minutes(value: str) -> str:
    """ "2026-11-20 10:21:33" -> "2026-11-20 10:21": what a customer needs of a time."""
    return value[:16] if len(value) >= 16 and value[10:11] in (" ", "T") else value


def read_order(result: dict[str, Any]) -> Order:
    holder = _record_with(result, ("apiResult",)) or {}
    api_result = holder.get("apiResult")
    failed = isinstance(api_result, dict) and api_result.get("success") is False
    info = _record_with(result, ("orderId", "order_id"))
    if info is None or failed:
        raise LookupFailed("not_found", "JOS knows no such order")
    order_id = _first(info, "orderId", "order_id")
    state_code = _first(info, "orderState", "order_state")
    fields = {
        "order.id": order_id,
        "order.state": _first(info, "orderStateRemark") or ORDER_STATES.get(state_code, state_code),
        "order.amount": _yuan(_first(info, "orderPayment", "orderTotalPrice", "order_payment")),
        "order.created": _minutes(_first(info, "orderStartTime", "order_start_time", "created")),
    }
    return Order(order_id, _first(info, "pin", "buyerPin", "buyer_pin"), _first(info, "waybill"), fields)


def read_logistics(result: dict[str, Any]) -> dict[str, str]:
    traces = _records_with(result, ("opeTime", "ope_time", "time"))
    head = _record_with(result, ("carrierName", "companyName", "logisticsCompany", "waybillCode")) or {}
    latest = max(traces, key=lambda t: _first(t, "opeTime", "ope_time", "time"), default=None)
    return {
        "logistics.company": _first(head, "carrierName", "companyName", "logisticsCompany"),
        "logistics.waybill": _first(head, "waybillCode", "waybill"),
        "logistics.latest": _first(latest, "opeRemark", "opeTitle", "content") if latest else "暂无物流轨迹",
        "logistics.time": _minutes(_first(latest, "opeTime", "ope_time", "time")) if latest else "",
    }


def read_refund(result: dict[str, Any]) -> dict[str, str] | None:
    """The latest refund of the order, or None when it has none."""
    rows = _records_with(result, ("applyRefundSum", "applyTime", "refundId"))
    if not rows:
        return None
    r = max(rows, key=lambda x: _first(x, "applyTime"))
    status = _first(r, "status")
    try:
        state = REFUND_STATES.get(int(status), status)
        amount = f"{int(_first(r, 'applyRefundSum') or 0) / 100:.2f}"  # JD gives fen
    except ValueError:
        state, amount = status, _first(r, "applyRefundSum")
    return {
        "refund.state": state,
        "refund.amount": amount,
        "refund.time": _minutes(_first(r, "checkTime") or _first(r, "applyTime")),
    }


ORDER_METHOD: JosMethod[Order] = JosMethod(
    "order detail (owner, state, amount)",
    "jos_order_method",
    "jingdong.pop.order.get",
    lambda order_id, _: {"order_id": order_id, "optional_fields": ORDER_OPTIONAL_FIELDS},
    read_order,
)
LOGISTICS_METHOD: JosMethod[dict[str, str]] = JosMethod(
    "logistics trace of a shipped order",
    "jos_logistics_method",
    "jingdong.ldop.receive.trace.get",
    lambda order_id, waybill: {"orderId": order_id, "waybillCode": waybill},
    read_logistics,
)
REFUND_METHOD: JosMethod[dict[str, str] | None] = JosMethod(
    "refund applications of an order",
    "jos_refund_method",
    "jingdong.pop.afs.soa.refundapply.queryPageList",
    lambda order_id, _: {"orderId": order_id, "pageIndex": 1, "pageSize": 20},
    read_refund,
)
METHODS = (ORDER_METHOD, LOGISTICS_METHOD, REFUND_METHOD)


# ------------------------------------------------------------------------------------------- lookup
@dataclass(frozen=True)
class Details:
    """Every template field of an action; `missing` says what the order has not got yet."""

    fields: dict[str, str]
    missing: Literal["not_shipped", "no_refund"] | None = None


class OrderLookup:
    """Reads one shop's orders through JOS within a time budget per lookup (order, then its details)."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        access_token: str | None,
        *,
        base_url: str,
        method_names: Mapping[str, str] | None = None,
        budget: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._creds = (app_key, app_secret, access_token)
        self.base_url = base_url
        self.names = {m.setting: m.default for m in METHODS} | dict(method_names or {})
        self.budget = budget
        self._clock = clock
        self._deadline: float | None = None

    @classmethod
    def for_shop(cls, service: Any, shop: Any) -> OrderLookup | None:
        """The lookup for a shop with JD credentials (decrypted with the service's key), else None."""
        if not shop.jd_app_key or not shop.jd_app_secret:
            return None
        box = service.secret_box
        s = service.settings
        return cls(
            box.decrypt(shop.jd_app_key),
            box.decrypt(shop.jd_app_secret),
            box.decrypt(shop.jd_access_token) if shop.jd_access_token else None,
            base_url=s.jos_url,
            method_names={m.setting: getattr(s, m.setting) for m in METHODS},
            budget=s.order_lookup_budget,
        )

    def order(self, order_id: str) -> Order:
        """The order (starts the budget); LookupFailed when JOS fails, is too slow or knows no such order."""
        self._deadline = self._clock() + self.budget
        return self._call(ORDER_METHOD, order_id, "")

    def details(self, action: str, order: Order) -> Details:
        """The template fields of `action` for an order already read (and checked) with `order`."""
        if action == "logistics":
            if not order.waybill:
                return Details(dict(order.fields), "not_shipped")
            trace = self._call(LOGISTICS_METHOD, order.order_id, order.waybill)
            trace["logistics.waybill"] = trace["logistics.waybill"] or order.waybill
            return Details({**order.fields, **trace})
        if action == "refund_status":
            refund = self._call(REFUND_METHOD, order.order_id, order.waybill)
            if refund is None:
                return Details(dict(order.fields), "no_refund")
            return Details({**order.fields, **refund})
        return Details(dict(order.fields))

    def _call(self, method: JosMethod[T], order_id: str, waybill: str) -> T:
        name = self.names[method.setting]
        deadline = self._deadline if self._deadline is not None else self._clock() + self.budget
        left = deadline - self._clock()
        if left <= 0:
            raise self._failed("timeout", f"order lookup over its {self.budget:g} s budget before {name}")
        try:
            with JosClient(
                *self._creds, base_url=self.base_url, timeout=left, max_retries=0, rate_per_second=None
            ) as client:
                result = client.call(name, method.request(order_id, waybill))
        except JosTransportError as e:
            JOS_ERRORS.labels(type(e).__name__).inc()
            if isinstance(e.__cause__, httpx.TimeoutException):
                raise self._failed("timeout", f"{name} took longer than the {self.budget:g} s budget") from e
            raise self._failed("jos_error", f"{name} failed: {type(e).__name__}") from e
        except JosError as e:
            JOS_ERRORS.labels(type(e).__name__).inc()
            raise self._failed("jos_error", f"{name} failed: {type(e).__name__} (code {e.code})") from e
        if self._clock() > deadline:
            raise self._failed("timeout", f"{name} answered after the {self.budget:g} s budget")
        try:
            return method.read(result)
        except LookupFailed as e:
            raise self._failed(e.kind, f"{name}: {e}") from e

    @staticmethod
    def _failed(kind: Failure, message: str) -> LookupFailed:
        ORDER_LOOKUPS.labels(kind).inc()
        log.info("order lookup failed (%s): %s", kind, message)
        return LookupFailed(kind, message)
