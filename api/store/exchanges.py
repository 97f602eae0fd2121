"""The exchange log and feedback: every reply stored masked, every thumbs/correction kept as a label."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from api.db.ids import next_exchange_id
from api.db.models import Exchange, Feedback, Shop, utcnow
from api.dialog.conversation import CHOICE_REASON
from api.dialog.privacy import mask_pii
from api.kb import repo as kb_repo
from engine.cells import escape_cell

CONSOLE_CHANNEL = "console"  # Try in the merchant console: the merchant's own tests, not a customer's
# channels whose exchanges are no customer's: left out of the traffic figures and of mining by default
TEST_CHANNELS: tuple[str, ...] = (CONSOLE_CHANNEL,)


def _storable(text: str) -> str:
    """Without NUL characters, which PostgreSQL text cannot hold (a customer message may carry them)."""
    return text.replace("\x00", "")


def exchange_row(
    *,
    shop: str,
    conversation_id: str,
    channel: str,
    text: str,
    decision: str,
    entry_id: str | None,
    confidence: float,
    reason: str,
    model_version: int | None,
    latency_ms: float,
    question: str | None = None,
    customer_hash: str | None = None,
) -> dict[str, Any]:
    """One exchange as the row to insert, masked, with its time but no id yet: `question` is the customer
    question it answered if not `text`; `customer_hash` is the keyed hash of the customer's pin (never
    the pin). Strings are cut to their columns' sizes, so a batch insert never fails on one row's length."""
    return {
        "shop_id": shop,
        "conversation_id": _storable(mask_pii(conversation_id))[:200],  # a VARCHAR(200) column
        "channel": channel[:20],
        "text_masked": _storable(mask_pii(text)),
        "question_masked": None if question is None else _storable(mask_pii(question)),
        "decision": decision[:10],
        "entry_id": None if entry_id is None else entry_id[:200],
        "confidence": float(confidence),
        "reason": _storable(mask_pii(reason)),
        "model_version": model_version,
        "latency_ms": float(latency_ms),
        "created_at": utcnow(),
        "customer_hash": customer_hash,
    }


def insert_rows(s: Session | Connection, rows: list[dict[str, Any]]) -> None:
    """Rows made by exchange_row, in one INSERT (an executemany)."""
    if rows:
        s.execute(insert(Exchange), rows)


def log_exchange(s: Session, **fields: Any) -> int:
    """Store one exchange now, in the caller's transaction (exchange_row's fields); returns its id.
    The service's reply path goes through the buffered ExchangeLog (api/store/exchange_log.py) instead."""
    row = {**exchange_row(**fields), "id": next_exchange_id()}
    insert_rows(s, [row])
    return int(row["id"])


def recent(s: Session, shop: str, limit: int = 100, offset: int = 0) -> list[Exchange]:
    q = (
        select(Exchange)
        .where(Exchange.shop_id == shop)
        .order_by(Exchange.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(s.scalars(q))


class UnknownEntryError(ValueError):
    """A correction names an entry that the KB version which answered the exchange does not have."""


def add_feedback(
    s: Session, shop: str, exchange_id: int, kind: str, correct: str | None, oos: bool
) -> Feedback:
    """Attach feedback to one of the shop's own exchanges (another shop's id is 'not found').

    A correction's entry must exist in the KB version that answered (the active one if none did): an
    unknown id would override a valid label and make `kefu calibrate` on that model fail.
    """
    ex = s.get(Exchange, exchange_id)
    if ex is None or ex.shop_id != shop:
        raise LookupError(f"no exchange {exchange_id} in shop {shop!r}")
    if kind == "correction" and correct is not None and not oos:
        _check_entry(s, shop, ex, correct)
    fb = Feedback(
        shop_id=shop, exchange_id=exchange_id, kind=kind, correct_entry_id=correct, out_of_scope=oos
    )
    s.add(fb)
    s.flush()
    return fb


def _check_entry(s: Session, shop: str, ex: Exchange, entry_id: str) -> None:
    shop_row = s.get(Shop, shop)
    version = ex.model_version or (shop_row.active_version if shop_row is not None else None)
    row = kb_repo.get_version(s, shop, version) if version is not None else None
    if row is None:
        raise UnknownEntryError(
            f"correct_entry_id {entry_id!r} cannot be checked: exchange {ex.id} was not answered by a KB "
            f"version and shop {shop!r} has no active version; publish the KB first"
        )
    if entry_id not in {str(item.get("id")) for item in row.snapshot or ()}:
        raise UnknownEntryError(
            f"correct_entry_id {entry_id!r} is not an entry of KB version {row.version}, "
            f"which answered exchange {ex.id}"
        )


def labelled_csv(s: Session, shop: str) -> str:
    """Feedback as `query,expected_id` rows for `kefu calibrate` (empty id: out of scope).

    A thumbs-up confirms the bot's entry; a correction names the right one. A bare thumbs-down says only
    what was wrong, not what was right, so it is left out. The latest label of an exchange wins. The
    query is the customer's real question: for a clarify choice ("第二个") the question the list was
    offered for; a choice logged before that was kept is left out.
    """
    rows = s.execute(
        select(Feedback, Exchange)
        .join(Exchange, Feedback.exchange_id == Exchange.id)
        .where(Feedback.shop_id == shop)
        .order_by(Feedback.id)
    ).all()
    labels: dict[int, tuple[str, str]] = {}
    for fb, ex in rows:
        query = ex.question_masked or ex.text_masked
        if ex.question_masked is None and ex.reason.startswith(CHOICE_REASON):
            continue
        if fb.kind == "up" and ex.entry_id:
            labels[ex.id] = (query, ex.entry_id)
        elif fb.kind == "correction":
            labels[ex.id] = (query, "" if fb.out_of_scope else (fb.correct_entry_id or ""))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["query", "expected_id"])
    # customer text goes to a merchant's spreadsheet: no cell may run as a formula (read back by kefu)
    w.writerows([escape_cell(query), escape_cell(expected)] for query, expected in labels.values())
    return out.getvalue()


def exchange_dict(ex: Exchange) -> dict[str, Any]:
    return {
        "id": ex.id,
        "conversation_id": ex.conversation_id,
        "channel": ex.channel,
        "text": ex.text_masked,
        "decision": ex.decision,
        "entry_id": ex.entry_id,
        "confidence": ex.confidence,
        "reason": ex.reason,
        "model_version": ex.model_version,
        "latency_ms": ex.latency_ms,
        "created_at": ex.created_at.isoformat(),
    }
