"""The figures the Quality page charts, read from the exchange log and JD's evaluations, per day.

Days are Beijing days (as merchants read JD's back office). Exchanges of the console's own Try page are
left out: they are the merchant's tests, not customers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Exchange, JdEvaluation
from api.jd import BEIJING

MAX_ROWS = 500_000  # exchanges read for one chart period at most
CONSOLE_CHANNEL = "console"


@dataclass
class Day:
    messages: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    confidence: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)


def _day(t: datetime) -> str:
    t = t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite returns naive UTC
    return t.astimezone(BEIJING).strftime("%m-%d")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def daily(s: Session, shop: str, days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    """Per day of the last `days`: messages, answer / clarify / handoff / small-talk rates, mean
    confidence of answers, median and p95 latency, and the mean JD rating (1-5) of the day."""
    end = now or datetime.now(UTC)
    start = (end.astimezone(BEIJING) - timedelta(days=days - 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    labels = [(start + timedelta(days=i)).strftime("%m-%d") for i in range(days)]
    by_day = {label: Day() for label in labels}
    q = (
        select(Exchange.created_at, Exchange.decision, Exchange.confidence, Exchange.latency_ms)
        .where(Exchange.shop_id == shop, Exchange.created_at >= start.astimezone(UTC))
        .where(Exchange.channel != CONSOLE_CHANNEL)
        .limit(MAX_ROWS)
    )
    for created, decision, confidence, latency in s.execute(q):
        d = by_day.get(_day(created))
        if d is None:
            continue
        d.messages += 1
        d.decisions[decision] += 1
        if decision == "answer":
            d.confidence.append(float(confidence))
        d.latency.append(float(latency))
    rq = select(JdEvaluation.evaluated_at, JdEvaluation.score).where(
        JdEvaluation.shop_id == shop, JdEvaluation.evaluated_at >= start.astimezone(UTC)
    )
    for at, score in s.execute(rq):
        d = by_day.get(_day(at)) if at is not None else None
        if d is not None and score is not None:
            d.ratings.append(int(score))

    def rate(d: Day, kind: str) -> float | None:
        return d.decisions.get(kind, 0) / d.messages if d.messages else None

    rows: list[dict[str, Any]] = []
    for label in labels:
        d = by_day[label]
        rows.append(
            {
                "day": label,
                "messages": d.messages,
                "answer": rate(d, "answer"),
                "clarify": rate(d, "clarify"),
                "handoff": rate(d, "handoff"),
                "smalltalk": rate(d, "smalltalk"),
                "confidence": sum(d.confidence) / len(d.confidence) if d.confidence else None,
                "latency_p50": _pct(d.latency, 0.5),
                "latency_p95": _pct(d.latency, 0.95),
                "rating": sum(d.ratings) / len(d.ratings) if d.ratings else None,
                "ratings": len(d.ratings),
            }
        )
    total = sum(by_day[label].messages for label in labels)
    return {"labels": labels, "rows": rows, "messages": total}
