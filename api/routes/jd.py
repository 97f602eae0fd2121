"""The JD-facing endpoint: signed customer messages pushed from the JD customer-service channel.

Two shapes are accepted, as form fields or a flat JSON object: our flat fields (message_id,
conversation_id, text, optional sku_id / customer_pin / order_id), or JD's own, the business payload as
the JSON string `jd_param_json` (msgId, sid, fromPin, msgType, content ...; read in api/jd/push.py, and
only after its signature holds). Both go through the same checks, replay protection and dialog.

A message is accepted only with a valid JOS signature made with the shop's AppSecret, a timestamp within
the configured window, and the shop's AppKey. Each message id is processed once: a replay of an id
gets the reply stored the first time (and is counted as a replay), whichever replica it reaches.
Ids are remembered by their SHA-256 (see `JdMessage`) for KEFU_JD_MESSAGE_RETENTION seconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.db.models import JdMessage, Shop
from api.dialog.conversation import TurnContext
from api.dialog.handle import handle_message
from api.dialog.privacy import mask_pii
from api.jd import BEIJING, JosAuthError, JosError, StaleTimestamp, chatlog, check_timestamp, push, verify
from api.jd import queue as jd_queue
from api.jd.evaluations import EvaluationsNotConfigured, list_evaluations, pull, stats, summary
from api.jd.service_stats import daily, groups
from api.kb import repo as kb_repo
from api.metrics import AUTH_FAILURES
from api.web.deps import SHOP_AUTH_RESPONSES, SHOP_ID, ServiceDep, ShopDep
from api.web.strict_json import StrictJSONRoute
from engine.coldstart import cold_start

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/jd",
    tags=["jd"],
    responses={
        400: {
            "description": "a missing or malformed parameter (a field of jd_param_json is named as "
            "jd_param_json.<field>), or a message id over 1000 characters"
        },
        401: {
            "description": "invalid app_key or signature (also for an unknown shop or one without JD "
            "credentials: the answer does not tell which shop ids exist), or a timestamp outside the window"
        },
        409: {"description": "the same message id is still being processed"},
        413: {"description": "the text is longer than KEFU_MAX_TEXT_CHARS"},
    },
)

SYSTEM = ("app_key", "timestamp", "sign")  # JOS's system parameters, in both shapes
FLAT_MESSAGE = ("message_id", "conversation_id", "text")
REQUIRED = (*SYSTEM, *FLAT_MESSAGE)  # the flat shape
REPLAY_WAIT_SECONDS = 10.0
# JD's ids are short; a longer one is garbage or an attack, and is refused rather than stored or hashed
MAX_MESSAGE_ID_CHARS = 1000


def message_digest(message_id: str) -> str:
    """The key a message id is remembered by: fixed length, whole id, and not readable."""
    return hashlib.sha256(message_id.encode("utf-8")).hexdigest()


INVALID_CREDENTIALS = "invalid app_key or signature"


def _refuse(code: int, reason: str, detail: str) -> HTTPException:
    AUTH_FAILURES.labels(reason).inc()
    return HTTPException(code, detail)


def _unauthorized(reason: str) -> HTTPException:
    """One answer for an unknown shop, a shop without JD credentials, a wrong app_key and a bad
    signature, so an outsider learns nothing about which shops exist; the metric keeps the reason."""
    return _refuse(status.HTTP_401_UNAUTHORIZED, reason, INVALID_CREDENTIALS)


async def _params(request: Request) -> dict[str, str]:
    """Form fields (as JOS sends them) or a flat JSON object; every value as a string.

    Anything else (a file part, JSON nested past the parser's depth) is the sender's mistake: 400.
    """
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except RecursionError as e:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body JSON is nested too deeply") from e
        except ValueError as e:  # not JSON, not UTF-8, or an integer too long for int() (> 4300 digits)
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not valid JSON") from e
        if not isinstance(body, dict):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body must be a JSON object")
        raw: dict[str, Any] = body
    else:
        async with request.form() as form:
            files = sorted({k for k, v in form.multi_items() if not isinstance(v, str)})
            if files:
                raise HTTPException(
                    status.HTTP_400_BAD_REQUEST,
                    f"file parts are not accepted ({', '.join(files)}); send the parameters as form fields",
                )
            raw = dict(form.items())
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in raw.items()}


@router.post("/{shop}/messages")
async def jd_message(shop: str, request: Request, service: ServiceDep) -> Any:
    """Verify, de-duplicate and answer one customer message from JD."""
    params = await _params(request)
    # verification, the database and matching are blocking work: off the event loop
    return await run_in_threadpool(_process, service, shop, params)


@dataclass(frozen=True)
class _Inbound:
    """One customer message, whichever shape it came in: what the claim, the dialog and the reply need."""

    message_id: str
    conversation_id: str
    text: str
    context: TurnContext


def _process(service: Any, shop: str, params: dict[str, str]) -> Any:
    jd_shape = push.PARAM in params
    if jd_shape:
        flat = sorted(k for k in FLAT_MESSAGE if params.get(k))
        if flat:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"send the message either in {push.PARAM} or as flat fields, not both ({', '.join(flat)})",
            )
    required = (*SYSTEM, push.PARAM) if jd_shape else REQUIRED
    missing = [k for k in required if not params.get(k)]
    if missing:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"missing parameter(s): {', '.join(missing)}")
    if any("\x00" in v for v in params.values()):  # the database cannot store them (message id, text)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "parameters must not contain NUL characters")
    if not jd_shape:
        _check_sizes(service, "message_id", params["message_id"], "text", params["text"])
    row = _authenticate(service, shop, params)
    if jd_shape:
        # the payload is read only once its signature holds: nobody unsigned reaches the parser
        inbound = _from_jd_payload(service, row, params[push.PARAM])
    else:
        inbound = _Inbound(
            params["message_id"],
            params["conversation_id"],
            params["text"],
            TurnContext(
                sku_id=params.get("sku_id") or None,
                customer_pin=params.get("customer_pin") or None,
                order_id=params.get("order_id") or None,
            ),
        )
    return _answer_once(service, row, inbound)


def _check_sizes(service: Any, id_name: str, message_id: str, text_name: str, text: str) -> None:
    """The caps on the message id (400) and the text (413, the same as the shop API's messages)."""
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{id_name} is longer than {MAX_MESSAGE_ID_CHARS} characters"
        )
    max_text = service.settings.max_text_chars
    if len(text) > max_text:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{text_name} is longer than {max_text} characters"
        )


def _authenticate(service: Any, shop: str, params: dict[str, str]) -> Shop:
    """The shop, once the app_key, the JOS signature over every form field and the timestamp hold."""
    if not SHOP_ID.match(shop):
        raise _unauthorized("unknown_shop")
    with service.db.session() as s:
        row = s.get(Shop, shop)
        if row is not None:
            s.expunge(row)
    if row is None:
        raise _unauthorized("unknown_shop")
    if not row.jd_app_key or not row.jd_app_secret:
        raise _unauthorized("jd_not_configured")
    box = service.secret_box
    if params["app_key"] != box.decrypt(row.jd_app_key):
        raise _unauthorized("bad_app_key")
    if not verify(params, box.decrypt(row.jd_app_secret)):
        raise _unauthorized("bad_signature")
    try:
        check_timestamp(params["timestamp"], window=timedelta(seconds=service.settings.jd_timestamp_window))
    except StaleTimestamp as e:
        raise _refuse(status.HTTP_401_UNAUTHORIZED, "stale_timestamp", f"timestamp refused: {e}") from e
    return row


def _from_jd_payload(service: Any, row: Shop, raw: str) -> _Inbound:
    """The message of a JD-shaped push (api/jd/push.py); a bad payload is a 400 naming the field."""
    try:
        message = push.parse(raw)
    except push.PushError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e
    _check_sizes(
        service,
        f"{push.PARAM}.{push.FIELDS['message_id']}",
        message.message_id,
        f"{push.PARAM}.{push.FIELDS['content']}",
        message.content or "",
    )
    catalog = None
    if message.sku_id is not None:  # the card reads as the product's name when the catalog has it
        settings = row.settings or {}
        catalog = service.catalogs.get(row.id, float(settings.get("target_precision") or 0.95))
    return _Inbound(
        message.message_id, message.session_id, push.turn_text(message, catalog), push.turn_context(message)
    )


def _answer_once(service: Any, row: Shop, inbound: _Inbound) -> Any:
    """The reply to a message id, made once: a replay gets the stored reply (see the module docstring)."""
    shop = row.id
    message_id = inbound.message_id
    digest = message_digest(message_id)
    job = {
        "conversation_id": inbound.conversation_id,
        "text": inbound.text,
        "customer_pin": inbound.context.customer_pin,
        "sku_id": inbound.context.sku_id,
        "order_id": inbound.context.order_id,
    }
    if jd_queue.async_replies(service, row, job):  # acknowledged now, answered through JOS later
        return jd_queue.accept(service, row, job, message_id, digest)
    try:
        with service.db.session() as s:
            s.add(JdMessage(shop_id=shop, message_digest=digest, reply=None))
    except IntegrityError:
        AUTH_FAILURES.labels("replay").inc()
        return _stored_reply(service, shop, digest, message_id)
    try:
        reply = handle_message(
            service, row, inbound.conversation_id, inbound.text, channel="jd", context=inbound.context
        )
    except Exception:
        # release the claim, or every retry of this message id would wait for a reply that never comes
        with service.db.session() as s:
            s.execute(delete(JdMessage).where(JdMessage.shop_id == shop, JdMessage.message_digest == digest))
        raise
    body = {"code": 0, "reply": reply}  # stored without the id, which may carry personal data
    with service.db.session() as s:
        stored = s.get(JdMessage, (shop, digest))
        assert stored is not None
        # kept for replays, masked: an order answer carries the order number (a replay gets [订单号])
        stored.reply = {**body, "reply": {**reply, "text": mask_pii(str(reply.get("text", "")))}}
    return {"code": 0, "message_id": message_id, "reply": reply}


def _stored_reply(service: Any, shop: str, digest: str, message_id: str) -> JSONResponse:
    """The reply given to the first delivery of this message id (waiting while it is still in work)."""
    deadline = time.monotonic() + REPLAY_WAIT_SECONDS
    while True:
        with service.db.session() as s:
            stored = s.get(JdMessage, (shop, digest))
            reply = stored.reply if stored is not None else None
        if reply is not None:
            body = {"code": reply.get("code", 0), "message_id": message_id, "reply": reply.get("reply")}
            return JSONResponse(body, headers={"X-Kefu-Replay": "true"})
        if time.monotonic() > deadline:
            raise HTTPException(status.HTTP_409_CONFLICT, "this message id is still being processed")
        time.sleep(0.05)


shop_router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1/shops/{shop}/jd", responses=SHOP_AUTH_RESPONSES, tags=["jd"]
)


@contextmanager
def _jos_errors() -> Iterator[None]:
    """JOS failures as the merchant should read them: missing setup 409, JD refusing or failing 502."""
    try:
        yield
    except EvaluationsNotConfigured as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    except JosAuthError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS refused the shop's credentials: {e}") from e
    except JosError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS call failed: {e}") from e


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """Query-string times: a time without a zone is Beijing time, as JD shows it to merchants."""
    since, until = (
        t.replace(tzinfo=BEIJING) if t is not None and t.tzinfo is None else t for t in (since, until)
    )
    for name, t in (("since", since), ("until", until)):
        if t is not None and not 2000 <= t.year <= 2100:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} must be a time between 2000 and 2100")
    if since is not None and until is not None and since >= until:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "since must be before until")
    return since, until


@shop_router.post("/evaluations/pull")
def pull_evaluations(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[datetime | None, Query(description="backfill from (the cursor is left alone)")] = None,
    until: Annotated[datetime | None, Query(description="backfill to (default: now)")] = None,
) -> dict[str, Any]:
    """Fetch the shop's customer-service evaluations from JOS now (also done on a schedule): new ones
    since the last pull, or with `since` a chosen period (a backfill)."""
    if until is not None and since is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "until needs since (a backfill period)")
    since, until = _period(since, until)
    try:
        with _jos_errors():
            return pull(service, shop.id, since=since, until=until)
    except ValueError as e:  # a backfill reaching back too far
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e


@shop_router.get("/evaluations")
def evaluations(
    shop: ShopDep, service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    """The latest evaluations, each with the conversation it rates and who handled it (bot or human)."""
    return list_evaluations(service, shop.id, limit)


@shop_router.get("/evaluations/summary")
def evaluations_summary(
    shop: ShopDep, service: ServiceDep, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """How customers rate chats the bot handled alone and chats a person took over."""
    since, until = _period(since, until)
    return summary(service, shop.id, since, until)


@shop_router.get("/evaluations/stats")
def evaluations_stats(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[datetime, Query(description="period start (Beijing time without a zone)")],
    until: Annotated[datetime, Query(description="period end")],
) -> dict[str, Any]:
    """JD's statistics of the shop's evaluations in a period, read from JOS now."""
    start, end = _period(since, until)
    assert start is not None and end is not None
    with _jos_errors():
        return stats(service, shop.id, start, end)


@shop_router.get("/service-stats")
def service_stats(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[date, Query(description="first day (Beijing time)")],
    until: Annotated[date, Query(description="last day, included")],
) -> dict[str, Any]:
    """Per day: JD's service statistics (unreplied sessions, average wait, ask rate, agents' online time)
    beside the bot's messages, answer rate and handoff rate."""
    try:
        with _jos_errors():
            return daily(service, shop.id, since, until)
    except ValueError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e


@shop_router.post("/chatlog/pull")
def pull_chatlog(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[datetime | None, Query(description="backfill from (the cursor is left alone)")] = None,
    until: Annotated[datetime | None, Query(description="backfill to (default: now)")] = None,
) -> dict[str, Any]:
    """Fetch the shop's chat history and sessions from JOS (jingdong.im.pop.chatlog.get, …sessionlist.get),
    masked before it is stored: new ones since the last pull, or with `since` a chosen period."""
    if until is not None and since is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "until needs since (a backfill period)")
    since, until = _period(since, until)
    try:
        with _jos_errors():
            messages = chatlog.pull(service, shop.id, since=since, until=until)
            sessions = chatlog.pull_sessions(service, shop.id, since=since, until=until)
    except ValueError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e
    return {**messages, "sessions": {k: sessions[k] for k in ("seen", "new")}}


@shop_router.get("/chatlog/coldstart")
def chatlog_coldstart(
    shop: ShopDep, service: ServiceDep, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """From the pulled chat history: proposed entries (a first KB, or new entries and paraphrases for the
    shop's KB) in the KB's columns, and labelled traffic for `kefu calibrate` (query, expected_id)."""
    since, until = _period(since, until)
    pairs = [(p.question, p.answer) for p in chatlog.pairs(service, shop.id, since, until)]
    with service.db.session() as s:
        entries = kb_repo.draft_entries(s, shop.id)
    result = cold_start(pairs, entries)
    return {
        "figures": result.figures,
        "proposals": result.rows,
        "labelled": [{"query": q, "expected_id": e} for q, e in result.labelled],
    }


@shop_router.get("/groups")
def agent_groups(shop: ShopDep, service: ServiceDep) -> list[dict[str, Any]]:
    """The shop's agent groups (jingdong.im.pop.groupinfo.get), read from JOS now."""
    with _jos_errors():
        return groups(service, shop.id)
