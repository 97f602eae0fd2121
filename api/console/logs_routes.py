"""Conversations, Unanswered and Quality: what customers asked and what the bot did with it.

Conversations: the exchange log, each turn's decision and reason, filterable by handoff reason, with
the agents' corrections (feedback). Unanswered: the shop's mined clusters (api/kb/mining.py) with one
click to add a message as a paraphrase or open a new entry prefilled. Quality: the shop's traffic figures
(api/store/traffic.py, drawn by api/console/quality.py) over the last 24 hours, 7 or 30 days, and the
model's last (build-time) evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import and_, not_, or_, select

from api.console import quality
from api.console.evaluation import last_evaluation
from api.console.web import PREFIX, ConsoleDep, render
from api.db.models import Exchange, Feedback
from api.dialog.conversation import (
    REASON_ANGRY,
    REASON_HUMAN,
    REASON_MODE_ASSIST,
    REASON_MODE_OFF,
    REASON_NO_MODEL,
    REASON_NON_TEXT,
    REASON_REPEATED,
    REASON_VENTING,
)
from api.jd.queue import NOT_DELIVERABLE, NOT_DELIVERED
from api.kb import mining
from api.web.strict_json import StrictJSONRoute
from engine.mining import mine

router = APIRouter(route_class=StrictJSONRoute, prefix=PREFIX, include_in_schema=False)
PAGE_SIZE = 200
# handoff reasons a merchant filters by, each the reason texts it starts with; "other": the bot tried and
# was not confident enough (low confidence, repeated misses, a failed lookup)
HANDOFF_REASONS: dict[str, tuple[str, ...]] = {
    "human": (REASON_HUMAN,),
    "repeated": (REASON_REPEATED,),
    "angry": (REASON_ANGRY, REASON_VENTING),
    "non_text": (REASON_NON_TEXT,),
    "mode_off": (REASON_MODE_OFF,),
    "mode_assist": (REASON_MODE_ASSIST,),
    "no_model": (REASON_NO_MODEL,),
    "not_delivered": (NOT_DELIVERED, NOT_DELIVERABLE),
}
FILTERS = ("all", "handoff", *HANDOFF_REASONS, "other")


def _filter(kind: str) -> Any:
    if kind == "all":
        return None
    handoff = Exchange.decision == "handoff"
    if kind == "handoff":
        return handoff
    if kind == "other":
        known = [
            Exchange.reason.startswith(p, autoescape=True) for ps in HANDOFF_REASONS.values() for p in ps
        ]
        return and_(handoff, not_(or_(*known)))
    return and_(
        handoff, or_(*(Exchange.reason.startswith(p, autoescape=True) for p in HANDOFF_REASONS[kind]))
    )


@router.get("/conversations")
def conversations(
    request: Request,
    console: ConsoleDep,
    reason: Annotated[str, Query(max_length=20)] = "all",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    """The shop's recent turns, grouped by conversation (newest first), with their corrections."""
    reason = reason if reason in FILTERS else "all"
    q = select(Exchange).where(Exchange.shop_id == console.shop.id)
    condition = _filter(reason)
    if condition is not None:
        q = q.where(condition)
    q = q.order_by(Exchange.id.desc()).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
    console.service.exchange_log.sync()  # the turns just tried in this process are shown
    with console.service.db.session() as s:
        rows = list(s.scalars(q))
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        ids = [r.id for r in rows]
        feedback: dict[int, list[Feedback]] = defaultdict(list)
        if ids:
            fq = select(Feedback).where(Feedback.shop_id == console.shop.id, Feedback.exchange_id.in_(ids))
            for fb in s.scalars(fq.order_by(Feedback.id)):
                feedback[fb.exchange_id].append(fb)
        for r in rows:
            s.expunge(r)
    groups: dict[str, list[Exchange]] = {}
    for r in rows:
        groups.setdefault(r.conversation_id, []).append(r)
    conversations = [(cid, list(reversed(turns))) for cid, turns in groups.items()]
    return render(
        request,
        "conversations.html",
        console,
        conversations=conversations,
        feedback=feedback,
        reason=reason,
        filters=FILTERS,
        page_no=page,
        more=more,
    )


@router.get("/unanswered")
def unanswered(request: Request, console: ConsoleDep) -> Response:
    """The last 30 days' mined clusters: each a new entry to write, or paraphrases of an entry."""
    service, shop = console.service, console.shop
    start, end = mining.period(None, None)
    served = service.served(shop.id, shop.active_version)
    service.exchange_log.sync()
    with service.db.session() as s:
        messages = mining.mined_messages(s, shop.id, start, end)
    by_reason: dict[str, int] = dict.fromkeys(mining.REASONS, 0)
    for m in messages:
        by_reason[m.why] += 1
    proposals = mine(served.matcher, messages) if served is not None and messages else []
    entries = [(e.id, e.question) for e in served.matcher.entries] if served is not None else []
    questions = dict(entries)
    return render(
        request,
        "unanswered.html",
        console,
        proposals=proposals,
        questions=questions,
        entries=entries,
        messages=len(messages),
        by_reason=by_reason,
        served=served is not None,
        since=start,
    )


@router.get("/quality")
def quality_page(
    request: Request,
    console: ConsoleDep,
    period: Annotated[str, Query(max_length=10)] = quality.DEFAULT_PERIOD,
) -> Response:
    """The shop's traffic figures over the period picked (Try left out), and the last evaluation."""
    period = period if period in quality.PERIODS else quality.DEFAULT_PERIOD
    data = quality.figures(console.service, console.shop.id, period)
    return render(
        request,
        "quality.html",
        console,
        data=data,
        charts=quality.charts(console.t, data),
        period=period,
        periods=list(quality.PERIODS),
        since=_shown(data["since"]),
        until=_shown(data["until"]),
        evaluation=last_evaluation(console),
    )


def _shown(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
