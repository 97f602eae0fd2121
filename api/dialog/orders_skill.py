"""The orders skill: order, logistics and refund questions answered from JOS, in the merchant's wording.

A KB entry with an `action` (engine.kb.ACTIONS) is dynamic: its answer is a template ({order.state},
{logistics.latest}, {refund.amount} ...) that this skill fills from JD (api/jd/orders.py). The skill takes
a turn when the KB answers a dynamic entry, offers one as the top option of a clarify, or when the message
carries an order number and is about an order.

The order number comes from the message as typed (a 10-13 digit run, or digits after 订单号), from the
push context (an order card), or from what the conversation remembers; otherwise the bot asks for it and
waits (`state.pending`). It is remembered only encrypted with the service's key (never in clear in the
shared store; the stored history and logs hold the masked text).

An order is described only to the customer who placed it: the order's buyer pin must equal the pin the
channel gives for the customer. Another customer's order, or no pin at all, gets a polite refusal (a
reply of kind "clarify", asking for the right number) and no data of the order; a second refusal in a
conversation goes to a person. A JOS error, a lookup over its time budget or an unknown order hands off
(code dynamic_failure) with the reason.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from api.catalog.links import PRODUCT_LEAD
from api.dialog.conversation import Reply, Turn
from api.dialog.privacy import ORDER, mask_pii
from api.jd.orders import LookupFailed, OrderLookup
from api.metrics import ORDER_LOOKUPS
from engine.kb import KBEntry
from engine.results import Decision

log = logging.getLogger("kefu.orders")

ASK_TEXT = "麻烦提供一下您的订单号，我马上帮您查询～"
REFUSED_TEXT = (
    "抱歉，这个订单不在您当前咨询的账号下，为保护买家隐私无法为您查询。"
    "请核对订单号后再发给我，或用下单账号联系我们。"
)
NO_PIN_TEXT = (
    "为保护订单隐私，我只能查询您本人账号下的订单。请登录下单的京东账号，从订单页进入咨询后再问我哦。"
)
NOT_SHIPPED_TEXT = "您的订单{order.id}还没有发货（当前状态：{order.state}），发货后就能查看物流了。"
NO_REFUND_TEXT = "您的订单{order.id}暂时没有退款申请（订单状态：{order.state}）。"
MISSING_VALUE = "暂无"
MAX_REFUSALS = 2  # another customer's order asked for this often in a conversation: a person takes over
REASON_REFUSALS = "orders of other customers asked for repeatedly"
# how the skill's turns start their logged reason (api.store.traffic counts the skill's turns by them)
REASON_ANSWERED = "dynamic entry"  # followed by the entry id and its action
REASON_NO_PIN = "no customer pin: an order is shown to its buyer only"
REASON_ASK = "order number needed for dynamic entry"
REASON_NOT_CONFIGURED = "the shop has no JD credentials for order lookups"
REASON_LOOKUP_FAILED = "order lookup failed"
REASON_REFUSED = "the order belongs to another customer: nothing shown"
REASONS = (
    REASON_ANSWERED,
    REASON_NO_PIN,
    REASON_ASK,
    REASON_NOT_CONFIGURED,
    REASON_LOOKUP_FAILED,
    REASON_REFUSED,
    REASON_REFUSALS,
)

_AFTER_KEYWORD = re.compile(r"(?:订单编号|订单号|订单|单号)\s*[:：#]?\s*(?:是|为)?\s*(\d{6,20})(?!\d)")
_BARE_RUN = re.compile(r"(?<!\d)\d{10,13}(?!\d)")
_ABOUT_ORDER = re.compile(r"订单|物流|快递|包裹|到哪|发货|退款|退钱|运单|单号|签收|派送")
_BY_KEYWORD = (
    (re.compile(r"退款|退钱|退的钱"), "refund_status"),
    # not a bare 到哪: "处理到哪一步了" asks for the order's state
    (
        re.compile(r"物流|快递|包裹|发货|运单|签收|派送|到哪了|到哪儿|(?:什么时候|几时|多久|几天)能?到"),
        "logistics",
    ),
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+\.[A-Za-z_]+)\}")
# a product link or label (商品编号, SKU, skuId=, item.jd.hk/ …) right before a number
_PRODUCT_BEFORE = re.compile(rf"{PRODUCT_LEAD}$")


def find_order_id(text: str) -> str | None:
    """The order number in a message as typed: digits after 订单号/订单/单号, or a bare 10-13 digit run
    that is not a phone, ID or card number (classified as the privacy masking does)."""
    t = unicodedata.normalize("NFKC", text or "")
    if m := _AFTER_KEYWORD.search(t):
        return m.group(1)
    for m in _BARE_RUN.finditer(t):
        if _PRODUCT_BEFORE.search(t[: m.start()]):
            continue  # a product's number (商品编号 100012345678, a product link): not an order
        if mask_pii(m.group()) == ORDER:
            return m.group()
    return None


def fill(template: str, fields: Mapping[str, str]) -> str:
    """The template with its {family.field} placeholders replaced; a value JD did not give reads 暂无."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1)) or MISSING_VALUE, template)


class OrdersSkill:
    """Answers dynamic entries from JOS; see the module docstring for when and how."""

    name = "orders"

    def __init__(
        self,
        entries: Mapping[str, KBEntry],
        lookup: Callable[[], OrderLookup | None],
        box: Any = None,
        choose: Callable[[KBEntry], str] | None = None,
    ) -> None:
        """`lookup` makes the shop's JOS lookup when first needed (None: the shop has no JD credentials);
        `box` (a SecretBox) encrypts the remembered order number; `choose` picks among answer variants."""
        self.entries = entries
        self._lookup_factory = lookup
        self.box = box
        self.choose = choose or (lambda e: e.answer)
        self._by_action: dict[str, KBEntry] = {}
        for e in entries.values():
            if e.action and e.enabled:
                self._by_action.setdefault(e.action, e)

    # -------------------------------------------------------------------------------------- the turn
    def respond(self, turn: Turn) -> Reply | None:
        pending = turn.prev.pending if (turn.prev.pending or {}).get("skill") == self.name else None
        said = find_order_id(turn.text)
        entry = self._entry_for(turn, said, pending)
        if entry is None:
            if said:  # a number given before the question: kept for it
                self._remember(turn, said)
            if pending is not None and turn.result.decision is Decision.ANSWER:
                turn.state.pending = None  # the customer moved on to another question
            return None
        order_id = said or turn.context.order_id or self._recall(turn)
        if not turn.context.customer_pin:
            # nobody to check the order against: no lookup, no data
            ORDER_LOOKUPS.labels("refused").inc()
            turn.state.pending = None
            return Reply("clarify", NO_PIN_TEXT, reason=REASON_NO_PIN)
        if not order_id:
            if self._lookup_factory() is None:  # asking for a number nothing could look up wastes a turn
                ORDER_LOOKUPS.labels("not_configured").inc()
                return self._fail(turn, REASON_NOT_CONFIGURED)
            turn.state.pending = {"skill": self.name, "entry_id": entry.id}
            return Reply("clarify", ASK_TEXT, reason=f"{REASON_ASK} {entry.id}")
        return self._answer(turn, entry, order_id, pending)

    def _dynamic(self, entry_id: str | None) -> KBEntry | None:
        e = self.entries.get(entry_id) if entry_id else None
        return e if e is not None and e.action else None

    def _entry_for(self, turn: Turn, said: str | None, pending: dict[str, Any] | None) -> KBEntry | None:
        """The dynamic entry this turn asks about, or None when the turn is not the skill's."""
        r = turn.result
        static = r.decision is Decision.ANSWER and self._dynamic(r.entry_id) is None
        asked = self._dynamic(r.entry_id) if r.decision is Decision.ANSWER else None
        if pending is not None and said and not static and (asked is None or asked.action == "order_status"):
            # the number the bot asked for ("300012345602", "订单号是…") is for the question that waits,
            # not for the order-status entry the digits alone look like
            return self._specific(self._dynamic(str(pending.get("entry_id"))), turn.text)
        if r.decision is Decision.ANSWER:
            return self._specific(asked, turn.text)  # a static answer stays the KB's
        top = (r.options or r.candidates)[:1] if r.decision is Decision.CLARIFY else []
        if top and (entry := self._dynamic(top[0].entry_id)):
            return self._specific(entry, turn.text)
        if said and _ABOUT_ORDER.search(turn.text):
            return self._specific(self._by_action.get("order_status"), turn.text)
        return None

    def _specific(self, entry: KBEntry | None, text: str) -> KBEntry | None:
        """An order-status entry gives way to the logistics or refund entry the words ask for
        ("订单…退款到哪一步了" is about the refund, however close it is to "订单处理到哪一步了").
        None stays None: a static answer (退款多久到账) is the KB's, whatever words it shares."""
        if entry is None or entry.action != "order_status":
            return entry
        action = next((a for pattern, a in _BY_KEYWORD if pattern.search(text)), None)
        return (self._by_action.get(action) if action else None) or entry

    def _answer(self, turn: Turn, entry: KBEntry, order_id: str, pending: dict[str, Any] | None) -> Reply:
        lookup = self._lookup_factory()
        if lookup is None:
            ORDER_LOOKUPS.labels("not_configured").inc()
            return self._fail(turn, REASON_NOT_CONFIGURED)
        try:
            order = lookup.order(order_id)
            if order.pin != turn.context.customer_pin:
                return self._refuse(turn, entry, pending)
            details = lookup.details(entry.action, order)
        except LookupFailed as e:
            return self._fail(turn, f"{REASON_LOOKUP_FAILED} ({e.kind}): {e}")
        ORDER_LOOKUPS.labels("ok").inc()
        template = {"not_shipped": NOT_SHIPPED_TEXT, "no_refund": NO_REFUND_TEXT}.get(
            details.missing or "", self.choose(entry)
        )
        self._remember(turn, order.order_id)
        # A dynamic answer is never "the same question again": asked about another order, or later, it has
        # another answer. So neither the question nor the entry is kept for the policy's repeat check.
        turn.state = replace(
            turn.state,
            pending=None,
            clarify_options=[],
            misses=0,
            mood=None,
            last_question=None,
            last_answered_entry=None,
        )
        r = turn.result
        confidence = r.confidence if r.entry_id == entry.id else 1.0
        why = f"{REASON_ANSWERED} {entry.id}: {entry.action} from JD" + (
            f" ({details.missing})" if details.missing else ""
        )
        return Reply("answer", fill(template, details.fields), entry.id, confidence, reason=why)

    def _refuse(self, turn: Turn, entry: KBEntry, pending: dict[str, Any] | None) -> Reply:
        ORDER_LOOKUPS.labels("refused").inc()
        refused = int((pending or {}).get("refused") or 0) + 1
        turn.state.order_ref = None
        if refused >= MAX_REFUSALS:
            turn.state.pending = None
            return Reply("handoff", "", reason=REASON_REFUSALS)
        turn.state.pending = {"skill": self.name, "entry_id": entry.id, "refused": refused}
        turn.state.last_question = None  # the next number given is not a repeat
        return Reply("clarify", REFUSED_TEXT, reason=REASON_REFUSED)

    def _fail(self, turn: Turn, reason: str) -> Reply:
        turn.state.pending = None
        return Reply("handoff", "", reason=reason)

    # ------------------------------------------------------------------------- the remembered order
    def _remember(self, turn: Turn, order_id: str) -> None:
        """Keep the order number for the next questions, encrypted; without a key it is not kept at all."""
        if self.box is not None:
            turn.state.order_ref = self.box.encrypt(order_id)

    def _recall(self, turn: Turn) -> str | None:
        token = turn.prev.order_ref
        if not token or self.box is None:
            return None
        try:
            return str(self.box.decrypt(token))
        except Exception:  # a rotated-away key or a damaged value: ask again rather than fail
            log.info("remembered order number unreadable; asking again")
            return None
