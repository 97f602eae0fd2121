"""Customer messages (auto mode), suggestions for agents (assist mode), feedback and the exchange log."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api.db.models import Shop
from api.dialog.conversation import TurnContext
from api.dialog.handle import handle_message, suggestions
from api.metrics import FEEDBACK
from api.service import Service
from api.store import exchanges
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep, TurnShopDep
from api.web.schemas import DB_INT_MAX, AssistOut, ExchangeOut, FeedbackIn, MessageIn, ReplyOut, Suggestion
from api.web.strict_json import StrictJSONRoute

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/shops/{shop}",
    responses=SHOP_AUTH_RESPONSES,
    tags=["conversations"],
)


# The turn routes are `async def` that run the turn in one worker thread (Redis, the matcher and, on a miss,
# the database block). A plain `def` route with a response model costs two hops: FastAPI runs the route
# in a worker thread, then checks its reply against the model in another one. Each hop hands the
# interpreter lock between the loop's thread and a worker twice, and a thread descheduled in that
# handoff holds up every request of the process (README, "Where a building phase's slower messages are held").
@router.post("/messages", response_model=ReplyOut)
async def message(body: MessageIn, shop: TurnShopDep, service: ServiceDep) -> Any:
    """A customer message in a conversation: answer, clarify (up to 3 questions) or hand off."""
    context = TurnContext(sku_id=body.sku_id, customer_pin=body.customer_pin, order_id=body.order_id)
    return await run_in_threadpool(
        handle_message, service, shop, body.conversation_id, body.text, channel="api", context=context
    )


@router.post("/assist", response_model=AssistOut)
async def assist(body: MessageIn, shop: TurnShopDep, service: ServiceDep) -> AssistOut:
    """Up to 3 suggested answers for the human agent handling this conversation."""
    return await run_in_threadpool(_assist, body, shop, service)


def _assist(body: MessageIn, shop: Shop, service: Service) -> AssistOut:
    found, version = suggestions(service, shop, body.text)
    exchange_id = service.exchange_log.log(
        shop=shop.id,
        conversation_id=body.conversation_id,
        channel="assist",
        text=body.text,
        decision="assist",
        entry_id=found[0].entry_id if found else None,
        confidence=found[0].confidence if found else 0.0,
        reason=f"{len(found)} suggestion(s)",
        model_version=version,
        latency_ms=0.0,
    )
    return AssistOut(
        suggestions=[Suggestion(**asdict(x)) for x in found], model_version=version, exchange_id=exchange_id
    )


@router.post("/feedback", status_code=status.HTTP_201_CREATED)
def feedback(body: FeedbackIn, shop: ShopDep, service: ServiceDep) -> dict[str, Any]:
    """Thumbs up/down on a reply, or an agent's correction: becomes labelled data for calibration."""
    if body.kind == "correction" and not body.correct_entry_id and not body.out_of_scope:
        # reported like FastAPI's own 422s (the documented HTTPValidationError), so clients parse one format
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "correct_entry_id"),
                    "msg": "a correction needs correct_entry_id or out_of_scope=true",
                    "input": None,
                }
            ]
        )
    service.exchange_log.sync(body.exchange_id)  # feedback may follow its reply before the row is written
    try:
        with service.db.session() as s:
            fb = exchanges.add_feedback(
                s, shop.id, body.exchange_id, body.kind, body.correct_entry_id, body.out_of_scope
            )
            out: dict[str, Any] = {"id": fb.id, "exchange_id": fb.exchange_id, "kind": fb.kind}
    except LookupError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from e
    except exchanges.UnknownEntryError as e:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "correct_entry_id"),
                    "msg": str(e),
                    "input": body.correct_entry_id,
                }
            ]
        ) from e
    FEEDBACK.labels(shop.id, body.kind).inc()  # counted once stored: refused feedback is not feedback
    return out


@router.get("/exchanges", response_model=list[ExchangeOut])
def exchange_log(
    shop: ShopDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> list[ExchangeOut]:
    """The shop's recent exchanges, newest first (texts are stored masked)."""
    service.exchange_log.sync()
    with service.db.session() as s:
        return [
            ExchangeOut(**exchanges.exchange_dict(e)) for e in exchanges.recent(s, shop.id, limit, offset)
        ]


@router.get("/feedback/labelled.csv", response_class=PlainTextResponse)
def labelled(shop: ShopDep, service: ServiceDep) -> str:
    """Feedback as `query,expected_id` CSV, the input of `kefu calibrate MODEL labelled.csv`."""
    service.exchange_log.sync()
    with service.db.session() as s:
        return exchanges.labelled_csv(s, shop.id)
