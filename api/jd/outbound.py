"""Replies that go out through JD: one chat message to a customer with the chat push method.

Used by async replies (api.jd.queue): JD pushed the customer's message, was acknowledged at once, and the
bot's reply is sent back later as a chat message from the shop's waiter (bot) account. The request's
objects and field names are described once, in api.jd.methods (CHAT_PUSH_*).

One call, no retries here: the queue retries with backoff and keeps the reply's deadline, and `upid`
(derived from JD's message id) lets JD drop a second copy should a timed-out send have arrived after all.
"""

from __future__ import annotations

import hashlib
from typing import Any

from api.jd import JosApiError, JosClient
from api.jd.methods import (
    CHAT_PUSH,
    CHAT_PUSH_ACCESS,
    CHAT_PUSH_ACCESS_FIELDS,
    CHAT_PUSH_MESSAGE,
    CHAT_PUSH_MESSAGE_FIELDS,
)
from api.jd.shop import JdNotConfigured, counted_call, shop_credentials

__all__ = ["JdNotConfigured", "bot_pin", "chat_push_params", "send_chat_message", "upid_for"]


def upid_for(shop_id: str, message_digest: str) -> str:
    """The chat message's unique id, the same for every attempt at answering one JD message (JD's
    idempotency); derived from the message id's digest, so it carries nothing readable of the id."""
    return "kefu-" + hashlib.sha256(f"{shop_id}\x00{message_digest}".encode()).hexdigest()[:32]


def bot_pin(settings: Any, shop_settings: dict[str, Any] | None) -> str | None:
    """The waiter account the bot speaks as: the shop's `jd_bot_pin` setting, else KEFU_JD_BOT_PIN."""
    return (shop_settings or {}).get("jd_bot_pin") or settings.jd_bot_pin or None


def chat_push_params(
    settings: Any, *, access_token: str, upid: str, from_pin: str, to_pin: str, body: str
) -> dict[str, Any]:
    """The chat push's business parameters: its two objects, filled field by field (names from
    api.jd.methods), the fixed values from settings. A field missing from the description is a bug."""
    access_values = {
        "accessid": settings.jd_chat_accessid,
        "aspid": settings.jd_chat_aspid,
        "source": settings.jd_chat_source,
        "accessToken": access_token,
        "version": settings.jd_chat_version,
    }
    message_values = {
        "upid": upid,
        "ver": settings.jd_chat_ver,
        "fromApp": settings.jd_chat_from_app,
        "fromClientType": settings.jd_chat_client_type,
        "fromPin": from_pin,
        "toApp": settings.jd_chat_to_app,
        "toClientType": settings.jd_chat_client_type,
        "toPin": to_pin,
        "body": body,
        "open_id_buyer": "",
        "xid_buyer": "",
    }
    out: dict[str, Any] = {}
    for (param, java_type), names, values in (
        (CHAT_PUSH_ACCESS, CHAT_PUSH_ACCESS_FIELDS, access_values),
        (CHAT_PUSH_MESSAGE, CHAT_PUSH_MESSAGE_FIELDS, message_values),
    ):
        assert set(names) == set(values), f"{param}: fields {sorted(set(names) ^ set(values))} differ"
        out[param] = {"@type": java_type, **{name: values[name] for name in names}}
    return CHAT_PUSH.request(**out)


def send_chat_message(
    service: Any,
    shop_id: str,
    shop_settings: dict[str, Any] | None,
    *,
    upid: str,
    to_pin: str,
    body: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send `body` to the customer `to_pin` as the shop's bot: one JOS call (JosError when it fails,
    JdNotConfigured without credentials or a bot pin); returns JOS's answer."""
    settings = service.settings
    from_pin = bot_pin(settings, shop_settings)
    if not from_pin:
        raise JdNotConfigured(
            f"shop {shop_id!r} has no bot pin to send from: set KEFU_JD_BOT_PIN or the shop's jd_bot_pin"
        )
    app_key, app_secret, token = shop_credentials(service, shop_id)
    params = chat_push_params(
        settings, access_token=token, upid=upid, from_pin=from_pin, to_pin=to_pin, body=body
    )
    name = CHAT_PUSH.configured_name(settings)
    with JosClient(
        app_key, app_secret, token, base_url=settings.jos_url, timeout=timeout, max_retries=0
    ) as client:
        result = counted_call(client, name, params)
    if _refused(result):
        raise JosApiError("the chat push answered success=false", method=name, retryable=False)
    return result


def _refused(result: Any) -> bool:
    """JD's answer says `success: false` (at the top or in its result object)."""
    for node in (result, result.get("result") if isinstance(result, dict) else None):
        if isinstance(node, dict) and node.get("success") is False:
            return True
    return False
