"""Mining a shop's exchange log: what the bot did not answer well, proposed as new KB entries or as
paraphrases of existing ones (engine.mining), in the KB's own columns.

A logged customer message (already masked when stored) is mined when, in the period:
- the bot handed it off after trying to answer it (not: the customer asked for a person, was venting or
  sent a picture; the shop's mode was off or assist, or it had no model; a reply that was not delivered);
- the bot asked which entry was meant (clarify);
- an agent corrected the reply (feedback `correction`, unless it names the entry that answered), or it
  got a thumbs-down (feedback `down`); the latest label of an exchange counts, as in labelled.csv;
- the bot answered it in a conversation the customer rated badly on JD (api.jd.evaluations: score
  LOW_SCORE or less, joined to the conversation by JD's session, else the customer's last chat that day).

The console's Try messages (TEST_CHANNELS) are the merchant's own tests, not a customer's unanswered
question: none of them is mined, whatever happened to it. Each message is counted once, under the first
of REASONS that applies. The clarify choice ("第二个") is
mined as the question it answered. Clustering uses the shop's served model (its normalization, synonyms
and vectors), so a shop with no published version has nothing to mine against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from api.db.models import Exchange, Feedback
from api.dialog.conversation import (
    CHOICE_REASON,
    REASON_HUMAN,
    REASON_MODE_ASSIST,
    REASON_MODE_OFF,
    REASON_NO_MODEL,
    REASON_NON_TEXT,
    REASON_VENTING,
)
from api.jd.evaluations import low_rated_conversations
from api.jd.queue import NOT_DELIVERABLE, NOT_DELIVERED
from api.store import periods
from api.store.exchanges import TEST_CHANNELS
from api.store.periods import PeriodError as PeriodError  # raised by period(): the routes catch it
from engine.mining import MAX_MESSAGES, Message, mine, proposal_rows

DEFAULT_PERIOD = timedelta(days=30)
MAX_PERIOD = timedelta(days=92)
REASONS = ("correction", "thumbs_down", "handoff", "clarify", "low_rating")  # most specific first
# handoffs that say nothing about what the KB lacks: the bot did not try, or there was no question
NOT_A_MISS = (
    REASON_HUMAN,
    REASON_VENTING,
    REASON_NON_TEXT,
    REASON_MODE_OFF,
    REASON_MODE_ASSIST,
    REASON_NO_MODEL,
    NOT_DELIVERED,
    NOT_DELIVERABLE,
)


def period(
    since: datetime | None, until: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """[since, until) in UTC (api.store.periods): DEFAULT_PERIOD by default, at most MAX_PERIOD long."""
    return periods.period(since, until, now, default=DEFAULT_PERIOD, longest=MAX_PERIOD, what="mined")


@dataclass
class MiningResult:
    since: datetime
    until: datetime
    model_version: int | None
    messages: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    rows: list[dict[str, str]] = field(default_factory=list)
    clustered: int = 0  # messages in a proposed cluster

    def figures(self) -> dict[str, Any]:
        kinds = Counter(r["proposal"] for r in self.rows)
        return {
            "messages": self.messages,
            "by_reason": self.by_reason,
            "clusters": len(self.rows),
            "clustered_messages": self.clustered,
            "new_entries": kinds["new_entry"],
            "paraphrases": kinds["paraphrases"],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "model_version": self.model_version,
            "figures": self.figures(),
            "proposals": self.rows,
        }


def _is_miss(ex: Exchange) -> bool:
    return not any(ex.reason.startswith(r) for r in NOT_A_MISS)


def mined_messages(
    s: Any,
    shop_id: str,
    since: datetime,
    until: datetime,
    exclude_channels: Collection[str] = TEST_CHANNELS,
) -> list[Message]:
    """The shop's logged messages of the period worth mining, each with why (see the module); messages
    of `exclude_channels` (default: the console's Try) are never mined."""
    in_period = [Exchange.shop_id == shop_id, Exchange.created_at >= since, Exchange.created_at < until]
    if exclude_channels:
        in_period.append(Exchange.channel.not_in(sorted(exclude_channels)))
    why: dict[int, str] = {}
    rows: dict[int, Exchange] = {}

    def keep(ex: Exchange, reason: str) -> None:
        rows[ex.id] = ex
        if ex.id not in why or REASONS.index(reason) < REASONS.index(why[ex.id]):
            why[ex.id] = reason

    newest = Exchange.created_at.desc()
    q = select(Exchange).where(*in_period, Exchange.decision.in_(("handoff", "clarify")))
    for ex in s.scalars(q.order_by(newest).limit(MAX_MESSAGES)):
        if ex.decision == "clarify" or _is_miss(ex):
            keep(ex, ex.decision)
    latest: dict[int, tuple[Feedback, Exchange]] = {}
    q2 = select(Feedback, Exchange).join(Exchange, Feedback.exchange_id == Exchange.id)
    for fb, ex in s.execute(q2.where(Feedback.shop_id == shop_id, *in_period).order_by(Feedback.id)).all():
        latest[ex.id] = (fb, ex)
    for fb, ex in latest.values():
        if fb.kind == "down":
            keep(ex, "thumbs_down")
        elif fb.kind == "correction" and (fb.out_of_scope or fb.correct_entry_id != ex.entry_id):
            keep(ex, "correction")
    conversations = sorted(low_rated_conversations(s, shop_id, since, until))
    if conversations:
        q3 = select(Exchange).where(
            *in_period, Exchange.decision == "answer", Exchange.conversation_id.in_(conversations)
        )
        for ex in s.scalars(q3.order_by(newest).limit(MAX_MESSAGES)):
            keep(ex, "low_rating")
    out = []
    for exchange_id, ex in rows.items():
        if ex.question_masked is None and ex.reason.startswith(CHOICE_REASON):
            continue  # "第二个" without the question it chose for (logged before that was kept)
        out.append(Message(ex.question_masked or ex.text_masked, ex.created_at, why[exchange_id]))
    return out


def mine_shop(service: Any, shop: Any, since: datetime, until: datetime) -> MiningResult:
    """Mine the shop's log of [since, until) with the model it is served by now."""
    served = service.served(shop.id, shop.active_version)
    result = MiningResult(since, until, served.version if served is not None else None)
    service.exchange_log.sync()  # the exchanges this process logged, still in its buffer, are mined too
    with service.db.session() as s:
        messages = mined_messages(s, shop.id, since, until)
    result.messages = len(messages)
    for m in messages:
        result.by_reason[m.why] += 1
    if served is None or not messages:
        return result
    proposals = mine(served.matcher, messages)
    result.rows = proposal_rows(proposals, served.matcher.entries)
    result.clustered = sum(p.size for p in proposals)
    return result
