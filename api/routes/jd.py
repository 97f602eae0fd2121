"""The JD-facing endpoint: signed customer messages pushed from the JD customer-service channel.

A message is accepted only with a valid JOS signature made with the shop's AppSecret, a timestamp within
the configured window, and the shop's AppKey. Each message id is processed once: a replay of an id
gets the reply stored the first time (and is counted as a replay), whichever replica it reaches.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
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
from api.jd import StaleTimestamp, check_timestamp, verify
from api.metrics import AUTH_FAILURES
from api.web.deps import SHOP_AUTH_RESPONSES, SHOP_ID, ServiceDep, ShopDep

router = APIRouter(
    prefix="/jd",
    tags=["jd"],
    responses={
        400: {"description": "a missing or malformed parameter"},
        401: {"description": "bad signature, wrong app_key or a timestamp outside the window"},
        403: {"description": "the shop has no JD credentials"},
        404: {"description": "no such shop"},
        409: {"description": "the same message id is still being processed"},
    },
)

REQUIRED = ("app_key", "timestamp", "sign", "message_id", "conversation_id", "text")
REPLAY_WAIT_SECONDS = 10.0


def _refuse(code: int, reason: str, detail: str) -> HTTPException:
    AUTH_FAILURES.labels(reason).inc()
    return HTTPException(code, detail)


async def _params(request: Request) -> dict[str, str]:
    """Form fields (as JOS sends them) or a flat JSON object; every value as a string."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not valid JSON") from e
        if not isinstance(body, dict):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body must be a JSON object")
        raw: dict[str, Any] = body
    else:
        raw = dict((await request.form()).items())
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in raw.items()}


@router.post("/{shop}/messages")
async def jd_message(shop: str, request: Request, service: ServiceDep) -> Any:
    """Verify, de-duplicate and answer one customer message from JD."""
    params = await _params(request)
    # verification, the database and matching are blocking work: off the event loop
    return await run_in_threadpool(_process, service, shop, params)


def _process(service: Any, shop: str, params: dict[str, str]) -> Any:
    missing = [k for k in REQUIRED if not params.get(k)]
    if missing:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"missing parameter(s): {', '.join(missing)}")
    if any("\x00" in v for v in params.values()):  # the database cannot store them (message id, text)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "parameters must not contain NUL characters")
    if not SHOP_ID.match(shop):
        raise _refuse(status.HTTP_404_NOT_FOUND, "unknown_shop", f"no shop {shop!r}")
    with service.db.session() as s:
        row = s.get(Shop, shop)
        if row is not None:
            s.expunge(row)
    if row is None:
        raise _refuse(status.HTTP_404_NOT_FOUND, "unknown_shop", f"no shop {shop!r}")
    if not row.jd_app_key or not row.jd_app_secret:
        raise _refuse(
            status.HTTP_403_FORBIDDEN, "jd_not_configured", "JD credentials are not set for this shop"
        )
    box = service.secret_box
    if params["app_key"] != box.decrypt(row.jd_app_key):
        raise _refuse(status.HTTP_401_UNAUTHORIZED, "bad_app_key", "app_key does not belong to this shop")
    if not verify(params, box.decrypt(row.jd_app_secret)):
        raise _refuse(status.HTTP_401_UNAUTHORIZED, "bad_signature", "invalid signature")
    try:
        check_timestamp(params["timestamp"], window=timedelta(seconds=service.settings.jd_timestamp_window))
    except StaleTimestamp as e:
        raise _refuse(status.HTTP_401_UNAUTHORIZED, "stale_timestamp", f"timestamp refused: {e}") from e

    message_id = params["message_id"][:200]
    try:
        with service.db.session() as s:
            s.add(JdMessage(shop_id=shop, message_id=message_id, reply=None))
    except IntegrityError:
        AUTH_FAILURES.labels("replay").inc()
        return _stored_reply(service, shop, message_id)
    try:
        context = TurnContext(
            sku_id=params.get("sku_id") or None,
            customer_pin=params.get("customer_pin") or None,
            order_id=params.get("order_id") or None,
        )
        reply = handle_message(
            service, row, params["conversation_id"], params["text"], channel="jd", context=context
        )
    except Exception:
        # release the claim, or every retry of this message id would wait for a reply that never comes
        with service.db.session() as s:
            s.execute(delete(JdMessage).where(JdMessage.shop_id == shop, JdMessage.message_id == message_id))
        raise
    body = {"code": 0, "message_id": message_id, "reply": reply}
    with service.db.session() as s:
        stored = s.get(JdMessage, (shop, message_id))
        assert stored is not None
        # kept for replays, masked: an order answer carries the order number (a replay gets [订单号])
        stored.reply = {**body, "reply": {**reply, "text": mask_pii(str(reply.get("text", "")))}}
    return body


def _stored_reply(service: Any, shop: str, message_id: str) -> JSONResponse:
    """The reply given to the first delivery of this message id (waiting while it is still in work)."""
    deadline = time.monotonic() + REPLAY_WAIT_SECONDS
    while True:
        with service.db.session() as s:
            stored = s.get(JdMessage, (shop, message_id))
            reply = stored.reply if stored is not None else None
        if reply is not None:
            return JSONResponse(reply, headers={"X-Kefu-Replay": "true"})
        if time.monotonic() > deadline:
            raise HTTPException(status.HTTP_409_CONFLICT, "this message id is still being processed")
        time.sleep(0.05)


shop_router = APIRouter(prefix="/v1/shops/{shop}/jd", responses=SHOP_AUTH_RESPONSES, tags=["jd"])


@shop_router.post("/evaluations/pull")
def pull_evaluations(shop: ShopDep, service: ServiceDep) -> dict[str, int]:
    """Fetch the shop's customer-service evaluations from JOS now (also done on a schedule)."""
    from api.jd import JosAuthError, JosError
    from api.jd.evaluations import EvaluationsNotConfigured, pull

    try:
        return pull(service, shop.id)
    except EvaluationsNotConfigured as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    except JosAuthError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS refused the shop's credentials: {e}") from e
    except JosError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS call failed: {e}") from e


@shop_router.get("/evaluations")
def evaluations(
    shop: ShopDep, service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    from api.jd.evaluations import list_evaluations

    return list_evaluations(service, shop.id, limit)
