"""A shop's logged traffic over a period, as plain JSON-able figures: the traffic section of `kefu report`
(GET /v1/shops/{shop}/report/traffic) and the console's quality page.

What the exchange log says the bot did with the customers' messages of [since, until): how many, and per
time bucket (an hour or a Beijing day) the share it answered, clarified or handed to a person, with small
talk counted apart (it is not a question) and the turns of the orders and catalog skills told from the
KB's own (by the entry ids and reasons those skills log); why it handed off (the logged reason read back
as the bounded codes of api.dialog.conversation.HandoffCode); how long replies took; the confidence it
decided with; what customers rated the chats on JD beside what the bot did in them (api.jd.evaluations
joins a rating to its conversation); thumbs and agent corrections; the entries most answered, with their
question from the live KB; and the questions most often handed off (masked as logged, grouped on their
normalized text).

Exchanges of the channels in `exclude_channels` are left out of every figure: by default TEST_CHANNELS
(api.store.exchanges), the console's Try page, whose messages are the merchant's own tests.

Cost: counts by entry and by feedback kind are SQL aggregates. Time buckets and latency percentiles are
computed here over the period's exchanges (bucketing differs between SQLite and PostgreSQL, and SQLite
has no percentiles): one streamed pass over the period's rows (six columns each), keeping one float per
message for the percentiles. Measured with tests/bench_traffic.py (200,000 exchanges over 92 days, on a
shared 2-core machine): 2.6-5.7 s on SQLite and 5.6 s on PostgreSQL, 11-15 MB at peak; linear in the
messages, so a million in a quarter takes about half a minute. Handed-off texts are read for handoffs
only; each JD rating of the period costs two small indexed queries (its conversation, what the bot did).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from api.catalog.skill import ENTRY_PREFIX as CATALOG_ENTRY_PREFIX
from api.catalog.skill import REASON_WHICH
from api.db.models import Exchange, Feedback, JdEvaluation, Shop
from api.dialog.conversation import (
    REASON_ANGRY,
    REASON_CANNOT_ANSWER,
    REASON_HUMAN,
    REASON_MISSES,
    REASON_MODE_ASSIST,
    REASON_MODE_OFF,
    REASON_NO_MODEL,
    REASON_NON_TEXT,
    REASON_REPEATED,
    REASON_VENTING,
)
from api.dialog.orders_skill import REASONS as ORDERS_REASONS
from api.jd import BEIJING
from api.jd.evaluations import LOW_SCORE, rated_conversation
from api.jd.pulls import aware
from api.jd.queue import NOT_DELIVERABLE, NOT_DELIVERED
from api.kb import repo as kb_repo
from api.store import periods
from api.store.exchanges import TEST_CHANNELS
from api.store.periods import PeriodError
from engine.normalize import normalize

Bucket = Literal["hour", "day"]
BUCKETS: tuple[Bucket, ...] = ("hour", "day")
DEFAULT_PERIOD = timedelta(days=7)
MAX_PERIOD = timedelta(days=92)
HOURLY_UP_TO = timedelta(days=3)  # a period up to this long is shown per hour, a longer one per day
TOP = 20  # entries and handed-off questions listed
CONFIDENCE_BINS = 10
PERCENTILES = (50, 95, 99)
QUESTIONS = ("answer", "clarify", "handoff")  # what the bot decides for a question
KINDS = (*QUESTIONS, "smalltalk")  # the customer messages the bot replied to (assist requests apart)
SKILLS = ("faq", "orders", "products")  # who took a question: the KB, the orders or the catalog skill
OUTCOMES = ("answered", "not_answered", "handed_off", "unmatched")  # what the bot did in a rated chat
# handoffs whose text is no question for the KB: the customer asked for a person, or sent no text
NOT_A_QUESTION = frozenset({"explicit_request", "non_text"})
_MISSES = re.compile(rf"^\d+ {re.escape(REASON_MISSES)}")
# the logged reason's start -> the handoff code (api.dialog.conversation.HandoffCode); first match wins
_CODES: tuple[tuple[str, str], ...] = (
    (REASON_HUMAN, "explicit_request"),
    (REASON_REPEATED, "repeated_question"),
    (REASON_ANGRY, "mood"),
    (REASON_VENTING, "mood"),
    (REASON_NON_TEXT, "non_text"),
    (REASON_MODE_OFF, "mode_off"),
    (REASON_MODE_ASSIST, "mode_assist"),
    (REASON_NO_MODEL, "no_model"),
    (NOT_DELIVERED, "not_delivered"),
    (NOT_DELIVERABLE, "not_delivered"),
    (REASON_CANNOT_ANSWER, "low_confidence"),
    *((reason, "dynamic_failure") for reason in ORDERS_REASONS),  # a skill's handoff (conversation)
)


def traffic_period(
    since: datetime | None, until: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """[since, until) in UTC (api.store.periods): the last DEFAULT_PERIOD by default, at most MAX_PERIOD."""
    return periods.period(since, until, now, default=DEFAULT_PERIOD, longest=MAX_PERIOD, what="reported")


def bucket_for(since: datetime, until: datetime) -> Bucket:
    """Hours for a short period (up to HOURLY_UP_TO), Beijing days for a longer one."""
    return "hour" if until - since <= HOURLY_UP_TO else "day"


def handoff_code(reason: str) -> str:
    """The code of a logged handoff, read back from its reason ("other" for a reason no code explains)."""
    if _MISSES.match(reason):
        return "repeated_miss"
    return next((code for start, code in _CODES if reason.startswith(start)), "other")


def skill_of(entry_id: str | None, reason: str) -> str:
    """Who took the turn: the catalog ("products"), the orders skill, or the KB ("faq")."""
    if (entry_id or "").startswith(CATALOG_ENTRY_PREFIX) or reason.startswith(REASON_WHICH):
        return "products"
    if reason.startswith(ORDERS_REASONS):
        return "orders"
    return "faq"


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 by nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return {
        f"p{p}": round(ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)], 3) if ordered else None
        for p in PERCENTILES
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _rates(counts: Counter[str]) -> dict[str, Any]:
    """Counts of each kind, and answer/clarify/handoff as shares of the questions (small talk apart)."""
    questions = sum(counts[k] for k in QUESTIONS)
    return {
        "messages": sum(counts[k] for k in KINDS),
        "questions": questions,
        **{k: counts[k] for k in KINDS},
        **{f"{k}_rate": _share(counts[k], questions) for k in QUESTIONS},
    }


def _logged(shop_id: str, since: datetime, until: datetime, exclude_channels: Collection[str]) -> list[Any]:
    """The conditions of the shop's exchanges logged in [since, until) on a channel not excluded."""
    where = [Exchange.shop_id == shop_id, Exchange.created_at >= since, Exchange.created_at < until]
    return where + _channels(exclude_channels)


def _channels(exclude_channels: Collection[str]) -> list[Any]:
    return [Exchange.channel.not_in(sorted(exclude_channels))] if exclude_channels else []


def _iso(t: datetime) -> str:
    return t.astimezone(BEIJING).isoformat()


def _floor(t: datetime, bucket: Bucket) -> datetime:
    """The Beijing hour or day `t` falls in (its start, in Beijing time)."""
    local = t.astimezone(BEIJING)
    if bucket == "day":
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.replace(minute=0, second=0, microsecond=0)


def _starts(since: datetime, until: datetime, bucket: Bucket) -> list[datetime]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    out, t = [], _floor(since, bucket)
    while t < until:
        out.append(t)
        t += step
    return out


def traffic_figures(
    s: Session,
    shop_id: str,
    since: datetime,
    until: datetime,
    bucket: Bucket | None = None,
    top: int = TOP,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> dict[str, Any]:
    """The figures of the shop's traffic in [since, until) (aware datetimes), per `bucket` (default:
    bucket_for the period's length), without the exchanges of `exclude_channels` (default: the console's
    Try, the merchant's tests; () counts every channel). Raises PeriodError for an inverted period or an
    unknown bucket."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be aware datetimes")
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if since >= until:
        raise PeriodError("since", "since must be before until")
    if bucket is not None and bucket not in BUCKETS:
        raise PeriodError("bucket", f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")
    chosen: Bucket = bucket or bucket_for(since, until)
    excluded = tuple(sorted(set(exclude_channels)))
    in_period = _logged(shop_id, since, until, excluded)

    starts = _starts(since, until, chosen)
    per_bucket: list[Counter[str]] = [Counter() for _ in starts]
    bucket_latency: list[list[float]] = [[] for _ in starts]
    # a row's bucket by arithmetic from the first bucket's start (Beijing has no daylight saving time)
    origin, step = starts[0].astimezone(UTC), (3600 if chosen == "hour" else 86400)
    totals: Counter[str] = Counter()
    by_skill = {skill: dict.fromkeys(QUESTIONS, 0) for skill in SKILLS}
    codes: Counter[str] = Counter()
    latency: list[float] = []
    confidence = [dict.fromkeys(QUESTIONS, 0) for _ in range(CONFIDENCE_BINS)]
    rows = s.connection().execute(  # Core rows: the ORM's per-row work is not needed here
        select(
            Exchange.created_at,
            Exchange.decision,
            Exchange.entry_id,
            Exchange.reason,
            Exchange.confidence,
            Exchange.latency_ms,
        )
        .where(*in_period)
        .execution_options(yield_per=5000)  # streamed: a long period is not held in memory at once
    )
    for created, decision, entry_id, reason, conf, ms in rows:
        totals[decision] += 1
        if decision not in KINDS:
            continue  # an agent's request for suggestions (assist), not a reply to the customer
        at = int((created - origin).total_seconds() // step)
        per_bucket[at][decision] += 1
        value = float(ms)
        latency.append(value)
        bucket_latency[at].append(value)
        if decision == "smalltalk":
            continue
        by_skill[skill_of(entry_id, reason)][decision] += 1
        b = min(max(int(float(conf) * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)
        confidence[b][decision] += 1
        if decision == "handoff":
            codes[handoff_code(reason)] += 1

    conversations = s.scalar(
        select(func.count(distinct(Exchange.conversation_id))).where(*in_period, Exchange.decision.in_(KINDS))
    )
    messages = sum(totals[k] for k in KINDS)
    return {
        "shop": shop_id,
        "since": _iso(since),
        "until": _iso(until),
        "bucket": chosen,
        "excluded_channels": list(excluded),
        "totals": {
            **_rates(totals),
            "conversations": int(conversations or 0),
            "smalltalk_share": _share(totals["smalltalk"], messages),
            "assist_requests": totals["assist"],
        },
        "by_skill": by_skill,
        "series": [
            {"start": _iso(t), **_rates(per_bucket[i]), "latency_ms": percentiles(bucket_latency[i])}
            for i, t in enumerate(starts)
        ],
        "handoff_reasons": [
            {"code": code, "count": n, "share": _share(n, totals["handoff"])}
            for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "latency_ms": {
            "n": len(latency),
            **percentiles(latency),
            "mean": round(sum(latency) / len(latency), 3) if latency else None,
            "max": round(max(latency), 3) if latency else None,
        },
        "confidence": [
            {"lo": b / CONFIDENCE_BINS, "hi": (b + 1) / CONFIDENCE_BINS, **counts}
            for b, counts in enumerate(confidence)
        ],
        "ratings": ratings(s, shop_id, since, until, excluded),
        "feedback": feedback(s, shop_id, since, until, excluded),
        "top_entries": top_entries(s, shop_id, since, until, top, excluded),
        "handed_off_questions": handed_off_questions(s, shop_id, since, until, top, excluded),
    }


def ratings(
    s: Session,
    shop_id: str,
    since: datetime,
    until: datetime,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> dict[str, Any]:
    """JD ratings made in the period, by what the bot did in the rated chat before the rating: answered
    (at least once, no handoff), not answered (only clarified or small talk), handed off, or a chat the
    bot never saw ("unmatched"); turns on `exclude_channels` are not what the bot did for the customer.
    Ratings without a score or a time are left out."""
    scores: dict[str, list[int]] = {o: [] for o in OUTCOMES}
    q = select(JdEvaluation).where(
        JdEvaluation.shop_id == shop_id,
        JdEvaluation.score.is_not(None),
        JdEvaluation.evaluated_at >= since,
        JdEvaluation.evaluated_at < until,
    )
    for ev in s.scalars(q.order_by(JdEvaluation.id)):
        conversation = rated_conversation(s, shop_id, ev)
        outcome = "unmatched"
        if conversation is not None:
            did = set(
                s.scalars(
                    select(distinct(Exchange.decision)).where(
                        Exchange.shop_id == shop_id,
                        Exchange.conversation_id == conversation,
                        Exchange.created_at <= aware(ev.evaluated_at),  # type: ignore[arg-type]
                        *_channels(exclude_channels),
                    )
                )
            )
            outcome = "handed_off" if "handoff" in did else "answered" if "answer" in did else "not_answered"
        scores[outcome].append(int(ev.score))  # type: ignore[arg-type]
    return {
        "ratings": sum(len(v) for v in scores.values()),
        "low_score": LOW_SCORE,
        "by_outcome": {outcome: _score_figures(values) for outcome, values in scores.items()},
    }


def _score_figures(values: list[int]) -> dict[str, Any]:
    return {
        "ratings": len(values),
        "scores": {str(k): n for k, n in sorted(Counter(values).items())},
        "average": round(sum(values) / len(values), 3) if values else None,
        "dissatisfied_share": _share(sum(v <= LOW_SCORE for v in values), len(values)),
    }


def feedback(
    s: Session,
    shop_id: str,
    since: datetime,
    until: datetime,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> dict[str, int]:
    """Thumbs and agent corrections given on the period's exchanges (every label, not only the latest),
    those of `exclude_channels` apart."""
    logged = _logged(shop_id, since, until, exclude_channels)
    rows = s.execute(
        select(Feedback.kind, Feedback.out_of_scope, func.count())
        .join(Exchange, Feedback.exchange_id == Exchange.id)
        .where(Feedback.shop_id == shop_id, *logged)
        .group_by(Feedback.kind, Feedback.out_of_scope)
    ).all()
    out = {"up": 0, "down": 0, "correction": 0, "correction_out_of_scope": 0}
    for kind, oos, n in rows:
        if kind in out:
            out[kind] += int(n)
        if kind == "correction" and oos:
            out["correction_out_of_scope"] += int(n)
    out["exchanges"] = int(
        s.scalar(
            select(func.count(distinct(Feedback.exchange_id)))
            .join(Exchange, Feedback.exchange_id == Exchange.id)
            .where(Feedback.shop_id == shop_id, *logged)
        )
        or 0
    )
    return out


def top_entries(
    s: Session,
    shop_id: str,
    since: datetime,
    until: datetime,
    top: int = TOP,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> list[Any]:
    """The entries answered most often (not counting `exclude_channels`), each with its question in the
    live KB (the active version, else the editable KB; None for an entry neither has any more, or a
    product of the catalog)."""
    answered = func.count().label("n")
    logged = _logged(shop_id, since, until, exclude_channels)
    rows = s.execute(
        select(Exchange.entry_id, answered, func.max(Exchange.created_at))
        .where(*logged, Exchange.decision == "answer", Exchange.entry_id.is_not(None))
        .group_by(Exchange.entry_id)
        .order_by(answered.desc(), Exchange.entry_id)
        .limit(top)
    ).all()
    total = s.scalar(select(func.count()).where(*logged, Exchange.decision == "answer"))
    questions = _live_questions(s, shop_id, [str(r[0]) for r in rows])
    return [
        {
            "entry_id": entry_id,
            "question": questions.get(entry_id),
            "skill": "products" if entry_id.startswith(CATALOG_ENTRY_PREFIX) else "faq",
            "count": int(n),
            "share": _share(int(n), int(total or 0)),
            "last_seen": _iso(last),
        }
        for entry_id, n, last in rows
    ]


def _live_questions(s: Session, shop_id: str, ids: Iterable[str]) -> dict[str, str]:
    wanted = set(ids)
    found: dict[str, str] = {}
    shop = s.get(Shop, shop_id)
    row = kb_repo.get_version(s, shop_id, shop.active_version) if shop and shop.active_version else None
    for item in (row.snapshot if row is not None else None) or ():
        if str(item.get("id")) in wanted:
            found[str(item["id"])] = str(item.get("question") or "")
    missing = wanted - found.keys()
    if missing:
        for item in kb_repo.list_entries(s, shop_id):
            if item["id"] in missing:
                found[item["id"]] = item["question"]
    return found


def handed_off_questions(
    s: Session,
    shop_id: str,
    since: datetime,
    until: datetime,
    top: int = TOP,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> list[dict[str, Any]]:
    """The questions handed off most often, grouped on their normalized text (engine.normalize, without
    spaces): the text shown is the latest masked one of its group, with the codes it was handed off for.
    A request for a person and a message without text are no question and are left out, and so are the
    exchanges of `exclude_channels`."""
    groups: dict[str, dict[str, Any]] = {}
    rows = s.connection().execute(
        select(Exchange.created_at, Exchange.text_masked, Exchange.question_masked, Exchange.reason)
        .where(*_logged(shop_id, since, until, exclude_channels), Exchange.decision == "handoff")
        .order_by(Exchange.created_at, Exchange.id)
        .execution_options(yield_per=5000)
    )
    for created, text, question, reason in rows:
        code = handoff_code(reason)
        shown = question or text
        key = normalize(shown).replace(" ", "")  # spaces mean nothing between Chinese words
        if code in NOT_A_QUESTION or not key:
            continue
        g = groups.setdefault(key, {"count": 0, "codes": Counter()})
        g["count"] += 1
        g["codes"][code] += 1
        g["text"], g["last_seen"] = shown, created  # rows come oldest first: the latest wins
    ranked = sorted(groups.values(), key=lambda g: (-g["count"], -g["last_seen"].timestamp(), g["text"]))
    return [
        {
            "text": g["text"],
            "count": g["count"],
            "last_seen": _iso(g["last_seen"]),
            "codes": dict(sorted(g["codes"].items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        for g in ranked[:top]
    ]
