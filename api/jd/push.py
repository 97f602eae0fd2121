"""JD's own push shape: a JOS-signed request whose business payload is the JSON string `jd_param_json`.

JOS sends business parameters as one JSON string beside the system parameters (app_key, timestamp,
sign ...), and signs it like any other form field, so the signature covers the payload as sent. The
payload's names are JD's (DongDong style); `FIELDS` and `CARD_FIELDS` are the only place they are
spelled, so a rename on JD's side is a one-line change here.

`parse` turns the payload into a `JdPush` or raises `PushError` naming the field (the endpoint's 400);
`turn_text` and `turn_context` give the text and `TurnContext` the dialog already understands.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from api.dialog.conversation import TurnContext

if TYPE_CHECKING:
    from api.catalog.skill import Catalog

__all__ = [
    "CARD_FIELDS",
    "FIELDS",
    "PARAM",
    "JdPush",
    "MsgType",
    "PushError",
    "parse",
    "turn_context",
    "turn_text",
]

PARAM = "jd_param_json"  # the form field that carries the payload

# our name -> JD's JSON name in the payload
FIELDS = {
    "message_id": "msgId",
    "session_id": "sid",  # becomes the conversation id
    "vender_id": "venderId",
    "customer_pin": "fromPin",
    "waiter": "waiter",  # the agent's pin, when a person is on the session
    "msg_type": "msgType",
    "content": "content",
    "time": "time",  # epoch milliseconds
}
# our name -> JD's JSON name inside a card's `content` (an object, or a JSON string of one)
CARD_FIELDS = {
    "sku_id": "skuId",
    "sku_name": "skuName",
    "order_id": "orderId",
    "order_state": "orderState",
}

MsgType = Literal["text", "image", "sku", "order", "unknown"]
_KNOWN_TYPES: tuple[MsgType, ...] = ("text", "image", "sku", "order")

# What the dialog reads for a message it has no words for (api/dialog/nontext.py): a picture gets the
# shop's non-text reply or a handoff; so does a product card the bot cannot introduce, and any message
# type we do not know.
IMAGE_TEXT = "[图片]"
PRODUCT_CARD_TEXT = "[商品]"
UNKNOWN_TEXT = "[未知消息]"
# An order card reads as the customer giving the order number: the orders skill reads the number from
# this text (orders_skill.find_order_id), answers the order's state and remembers it for the next question.
ORDER_CARD_TEXT = "订单号：{order_id}"

# JD's ids are numbers (sent as JSON numbers or strings); a catalog's SKU ids may be its own codes
_SKU_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_ORDER_ID = re.compile(r"[0-9]{1,30}")


class PushError(ValueError):
    """A payload field that is missing or malformed; the message names it (jd_param_json.<field> ...)."""


@dataclass(frozen=True)
class JdPush:
    """One customer message in JD's push shape, checked and typed."""

    message_id: str
    session_id: str
    customer_pin: str
    msg_type: MsgType
    raw_type: str  # msgType as JD sent it (an unknown one is kept here)
    content: str | None = None  # the text of a text message, the URL of an image
    vender_id: str | None = None  # accepted as sent, not checked against anything yet
    waiter: str | None = None
    time_ms: int | None = None
    sku_id: str | None = None  # a SKU card
    sku_name: str | None = None
    order_id: str | None = None  # an order card
    order_state: str | None = None


def _name(field: str, card: bool = False) -> str:
    return f"{PARAM}.content.{CARD_FIELDS[field]}" if card else f"{PARAM}.{FIELDS[field]}"


def _id(obj: dict[str, Any], field: str, *, required: bool, card: bool = False) -> str | None:
    """An id or short string: JD sends some ids as JSON numbers, so integers are taken as their digits."""
    key = CARD_FIELDS[field] if card else FIELDS[field]
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise PushError(f"{_name(field, card)} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PushError(f"{_name(field, card)} must be a string or an integer")
    text = str(value)
    if "\x00" in text:
        raise PushError(f"{_name(field, card)} must not contain NUL characters")
    return text


def _card(content: Any, msg_type: str) -> dict[str, Any]:
    """A card's content: an object, or a JSON string of one (JD sends both)."""
    name = f"{PARAM}.content"
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except RecursionError as e:
            raise PushError(f"{name} is nested too deeply") from e
        except ValueError as e:  # also an integer too long to convert
            raise PushError(f"{name} is not valid JSON (a {msg_type} card is an object)") from e
    if not isinstance(content, dict):
        raise PushError(f"{name} must be an object for msgType {msg_type}")
    return content


def parse(raw: str) -> JdPush:
    """The push in `raw` (the jd_param_json string), or PushError naming the first wrong field."""
    try:
        payload = json.loads(raw)
    except RecursionError as e:
        raise PushError(f"{PARAM} is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, or an integer too long to convert
        raise PushError(f"{PARAM} is not valid JSON") from e
    if not isinstance(payload, dict):
        raise PushError(f"{PARAM} must be a JSON object")
    message_id = _id(payload, "message_id", required=True)
    session_id = _id(payload, "session_id", required=True)
    customer_pin = _id(payload, "customer_pin", required=True)
    assert message_id is not None and session_id is not None and customer_pin is not None
    raw_type = payload.get(FIELDS["msg_type"])
    if raw_type is None or raw_type == "":
        raise PushError(f"{_name('msg_type')} missing")
    if not isinstance(raw_type, str):
        raise PushError(f"{_name('msg_type')} must be a string (text, image, sku, order ...)")
    msg_type: MsgType = next((t for t in _KNOWN_TYPES if t == raw_type.strip().lower()), "unknown")
    time_ms = payload.get(FIELDS["time"])
    if time_ms is not None:
        if isinstance(time_ms, str) and time_ms.isascii() and time_ms.isdigit():
            time_ms = int(time_ms)
        if isinstance(time_ms, bool) or not isinstance(time_ms, int) or time_ms < 0:
            raise PushError(f"{_name('time')} must be epoch milliseconds (a non-negative integer)")
    fields: dict[str, Any] = {
        "message_id": message_id,
        "session_id": session_id,
        "customer_pin": customer_pin,
        "msg_type": msg_type,
        "raw_type": raw_type,
        "vender_id": _id(payload, "vender_id", required=False),
        "waiter": _id(payload, "waiter", required=False),
        "time_ms": time_ms,
    }
    content = payload.get(FIELDS["content"])
    if msg_type in ("text", "image"):
        what = "the message text" if msg_type == "text" else "the picture's URL"
        if content is None or (isinstance(content, str) and not content.strip()):
            raise PushError(f"{_name('content')} missing ({what} for msgType {msg_type})")
        if not isinstance(content, str):
            raise PushError(f"{_name('content')} must be a string ({what}) for msgType {msg_type}")
        if "\x00" in content:
            raise PushError(f"{_name('content')} must not contain NUL characters")
        fields["content"] = content
    elif msg_type == "sku":
        if content is None or content == "":
            raise PushError(f"{_name('content')} missing (the SKU card for msgType sku)")
        card = _card(content, "sku")
        sku_id = _id(card, "sku_id", required=True, card=True)
        assert sku_id is not None
        if not _SKU_ID.fullmatch(sku_id):
            raise PushError(f"{_name('sku_id', card=True)} must be letters, digits, - or _ (at most 64)")
        fields["sku_id"] = sku_id
        fields["sku_name"] = _id(card, "sku_name", required=False, card=True)
    elif msg_type == "order":
        if content is None or content == "":
            raise PushError(f"{_name('content')} missing (the order card for msgType order)")
        card = _card(content, "order")
        order_id = _id(card, "order_id", required=True, card=True)
        assert order_id is not None
        if not _ORDER_ID.fullmatch(order_id):
            raise PushError(f"{_name('order_id', card=True)} must be digits (at most 30)")
        fields["order_id"] = order_id
        fields["order_state"] = _id(card, "order_state", required=False, card=True)
    return JdPush(**fields)


def turn_text(push: JdPush, catalog: Catalog | None = None) -> str:
    """What the dialog reads for the push.

    A SKU card reads as the product's name (else its id) when the shop's catalog finds exactly that
    product in it: the catalog skill then introduces the product, which is no miss. A card the catalog
    cannot place reads as the non-text marker [商品], answered like a picture rather than matched.
    """
    if push.msg_type == "text":
        return push.content or ""
    if push.msg_type == "image":
        return IMAGE_TEXT
    if push.msg_type == "order":
        return ORDER_CARD_TEXT.format(order_id=push.order_id)
    if push.msg_type == "sku":
        sku = catalog.by_id.get(push.sku_id or "") if catalog is not None else None
        if catalog is not None and sku is not None:
            for text in (sku.name, f"商品编号：{sku.sku_id}"):
                found = catalog.find(text)
                if found is not None and [s.sku_id for s in found.skus] == [sku.sku_id]:
                    return text
        return PRODUCT_CARD_TEXT
    return UNKNOWN_TEXT


def turn_context(push: JdPush) -> TurnContext:
    """The channel context of the push: the customer's pin and the card's product or order."""
    return TurnContext(sku_id=push.sku_id, customer_pin=push.customer_pin, order_id=push.order_id)
