"""Customers' evaluations of customer service (评价详情, 分数, 时间), pulled from JOS and joined to chats.

`jingdong.im.pop.evaluationlist.get` (api.jd.methods.EVALUATION_LIST; KEFU_JOS_EVALUATION_METHOD names
another) is called window by window (KEFU_EVALUATION_WINDOW_HOURS each, page by page). A pull continues
where the shop's last one ended (a cursor per shop, moved after each whole window, so a failed pull resumes
rather than restarts), reaching back KEFU_EVALUATION_BACKFILL_DAYS the first time; a backfill pulls a
chosen period without moving the cursor. Evaluations are stored once (JD's id), masked, the customer only
as a keyed hash of the pin.

Each evaluation is joined to the conversation it rates (JD's session id, else the same customer's last
conversation in the day before the rating), and that conversation to what the bot did in it, so the
report tells how customers rate chats the bot handled alone from those a person took over.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select

from api.db.models import Exchange, JdEvaluation
from api.dialog.privacy import mask_pii
from api.jd import JosClient, beijing_timestamp, parse_beijing_timestamp
from api.jd.methods import EVALUATION_LIST, EVALUATION_STAT, field_value, fields_of
from api.jd.pulls import aware, pull_windows
from api.jd.shop import JdNotConfigured, counted_call, shop_credentials

EvaluationsNotConfigured = JdNotConfigured  # the name callers knew

log = logging.getLogger("kefu.evaluations")

KIND = "evaluations"
JOIN_WINDOW = timedelta(hours=24)  # a rating without a session id: the customer's chat in the day before
LOW_SCORE = 2  # 1-5: this or less is a dissatisfied customer


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):  # epoch milliseconds, as JD APIs often give
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        # stored in UTC: SQLite keeps the wall time only, and exchanges are in UTC
        return parse_beijing_timestamp(str(value)[:19]).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _score(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def pull(
    service: Any,
    shop_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 50,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Fetch the shop's evaluations and store the new ones (api.jd.pulls: incremental, resumable, or a
    backfill of a chosen period); returns counts and the period covered."""
    return pull_windows(
        service,
        shop_id,
        kind=KIND,
        method=EVALUATION_LIST,
        store=_store,
        since=since,
        until=until,
        page_size=page_size,
        now=now,
    )


def _store(service: Any, shop_id: str, records: list[dict[str, Any]]) -> int:
    new = 0
    m = EVALUATION_LIST
    ids = [str(i)[:100] for r in records if (i := field_value(r, m, "id")) is not None]
    with service.db.session() as s:
        known = set(
            s.scalars(
                select(JdEvaluation.jd_id).where(JdEvaluation.shop_id == shop_id, JdEvaluation.jd_id.in_(ids))
            )
        )
        for r in records:
            jd_id = field_value(r, m, "id")
            if jd_id is None or str(jd_id)[:100] in known:
                continue
            known.add(str(jd_id)[:100])
            customer = field_value(r, m, "customer")
            waiter, session = field_value(r, m, "waiter"), field_value(r, m, "session")
            s.add(
                JdEvaluation(
                    shop_id=shop_id,
                    jd_id=str(jd_id)[:100],
                    score=_score(field_value(r, m, "score")),
                    content_masked=mask_pii(str(field_value(r, m, "content") or "")),
                    evaluated_at=_when(field_value(r, m, "time")),
                    customer_hash=service.customer_hash(str(customer)) if customer else None,
                    waiter=str(waiter)[:100] if waiter else None,
                    session_id=mask_pii(str(session))[:200] if session else None,
                )
            )
            new += 1
    return new


def stats(service: Any, shop_id: str, since: datetime, until: datetime) -> dict[str, Any]:
    """JD's own statistics of the evaluations in a period (evaluationstat), read live."""
    creds = shop_credentials(service, shop_id)
    name = EVALUATION_STAT.configured_name(service.settings)
    biz = EVALUATION_STAT.request(
        startTime=beijing_timestamp(aware(since)), endTime=beijing_timestamp(aware(until))
    )
    with JosClient(*creds, base_url=service.settings.jos_url) as client:
        result = counted_call(client, name, biz)
    return {"method": name, **fields_of(result, EVALUATION_STAT)}


# ------------------------------------------------------------------------------------------- joining
def rated_conversation(s: Any, shop_id: str, ev: JdEvaluation) -> str | None:
    """The logged conversation an evaluation rates: JD's session id, else the customer's last chat in the
    JOIN_WINDOW before the rating; None when the bot never saw it (or it cannot be told)."""
    at = aware(ev.evaluated_at) if ev.evaluated_at else None
    conversation = None
    if ev.session_id:
        conversation = s.scalar(
            select(Exchange.conversation_id)
            .where(Exchange.shop_id == shop_id, Exchange.conversation_id == ev.session_id)
            .limit(1)
        )
    if conversation is None and ev.customer_hash and at is not None:
        conversation = s.scalar(
            select(Exchange.conversation_id)
            .where(
                Exchange.shop_id == shop_id,
                Exchange.customer_hash == ev.customer_hash,
                Exchange.created_at <= at,
                Exchange.created_at >= at - JOIN_WINDOW,
            )
            .order_by(Exchange.created_at.desc())
            .limit(1)
        )
    return conversation


def _handled_by(s: Any, shop_id: str, ev: JdEvaluation) -> tuple[str, str | None]:
    """("bot" | "human" | "unmatched", conversation id) of the chat an evaluation rates."""
    conversation = rated_conversation(s, shop_id, ev)
    if conversation is None:
        return "unmatched", None
    at = aware(ev.evaluated_at) if ev.evaluated_at else None
    q = select(Exchange.decision).where(Exchange.shop_id == shop_id, Exchange.conversation_id == conversation)
    if at is not None:
        q = q.where(Exchange.created_at <= at)
    decisions = set(s.scalars(q))
    return ("human" if "handoff" in decisions else "bot"), conversation


def low_rated_conversations(s: Any, shop_id: str, since: datetime, until: datetime) -> set[str]:
    """The conversations customers rated LOW_SCORE or less, by ratings made in the period or up to a day
    after it (a rating follows its chat); ratings without a time count when they name their session."""
    q = select(JdEvaluation).where(
        JdEvaluation.shop_id == shop_id,
        JdEvaluation.score <= LOW_SCORE,
        or_(
            JdEvaluation.evaluated_at.is_(None),
            and_(
                JdEvaluation.evaluated_at >= aware(since),
                JdEvaluation.evaluated_at < aware(until) + JOIN_WINDOW,
            ),
        ),
    )
    out = set()
    for ev in s.scalars(q):
        _, conversation = _handled_by(s, shop_id, ev)
        if conversation is not None:
            out.add(conversation)
    return out


def list_evaluations(service: Any, shop_id: str, limit: int = 100) -> list[dict[str, Any]]:
    service.exchange_log.sync()  # evaluations are joined to the logged conversations
    with service.db.session() as s:
        rows = list(
            s.scalars(
                select(JdEvaluation)
                .where(JdEvaluation.shop_id == shop_id)
                .order_by(JdEvaluation.id.desc())
                .limit(limit)
            )
        )
        out = []
        for r in rows:
            handled_by, conversation = _handled_by(s, shop_id, r)
            out.append(
                {
                    "jd_id": r.jd_id,
                    "score": r.score,
                    "content": r.content_masked,
                    "evaluated_at": r.evaluated_at.isoformat() if r.evaluated_at else None,
                    "pulled_at": r.pulled_at.isoformat(),
                    "waiter": r.waiter,
                    "handled_by": handled_by,
                    "conversation_id": conversation,
                }
            )
        return out


def summary(
    service: Any, shop_id: str, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """How customers rate chats the bot handled alone ("bot") and chats a person took over ("human");
    "unmatched": ratings of chats the bot never saw (or that cannot be told apart)."""
    groups: dict[str, list[int]] = {"bot": [], "human": [], "unmatched": []}
    service.exchange_log.sync()
    with service.db.session() as s:
        q = select(JdEvaluation).where(JdEvaluation.shop_id == shop_id)
        if since is not None:
            q = q.where(JdEvaluation.evaluated_at >= aware(since))
        if until is not None:
            q = q.where(JdEvaluation.evaluated_at < aware(until))
        for ev in s.scalars(q):
            handled_by, _ = _handled_by(s, shop_id, ev)
            if ev.score is not None:
                groups[handled_by].append(ev.score)
    return {
        name: {
            "evaluations": len(scores),
            "average_score": round(sum(scores) / len(scores), 3) if scores else None,
            "dissatisfied_share": round(sum(x <= LOW_SCORE for x in scores) / len(scores), 3)
            if scores
            else None,
        }
        for name, scores in groups.items()
    }
