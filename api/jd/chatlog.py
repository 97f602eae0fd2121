"""A shop's chat history with its customers (jingdong.im.pop.chatlog.get), pulled for a cold start.

Pulled like evaluations (api.jd.pulls: windows, pages, a resumable cursor, a backfill of a chosen period,
the client's rate limit), and stored masked before anything else sees it: the text through the privacy
masking, the customer only as a keyed hash of the pin. What is stored is read back as (customer
question, agent answer) pairs: each customer message with the agent's next reply in its session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from api.db.models import JdChatMessage, JdChatSession
from api.dialog.privacy import mask_pii
from api.jd import parse_beijing_timestamp
from api.jd.methods import CHAT_LOG, SESSION_LIST, field_value
from api.jd.pulls import aware, pull_windows

KIND = "chatlog"


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        return parse_beijing_timestamp(str(value)[:19]).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None


def pull(
    service: Any,
    shop_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 100,
) -> dict[str, Any]:
    """Fetch the shop's chat messages and store the new ones; counts and the period covered."""
    return pull_windows(
        service,
        shop_id,
        kind=KIND,
        method=CHAT_LOG,
        store=_store,
        since=since,
        until=until,
        page_size=page_size,
    )


def _digest(r: dict[str, Any]) -> str:
    jd_id = field_value(r, CHAT_LOG, "id")
    key = (
        f"id\x00{jd_id}"
        if jd_id is not None
        else "\x00".join(str(field_value(r, CHAT_LOG, f)) for f in ("session", "time", "from", "content"))
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _store(service: Any, shop_id: str, records: list[dict[str, Any]]) -> int:
    rows = {_digest(r): r for r in records if field_value(r, CHAT_LOG, "content") not in (None, "")}
    with service.db.session() as s:
        known = set(
            s.scalars(
                select(JdChatMessage.digest).where(
                    JdChatMessage.shop_id == shop_id, JdChatMessage.digest.in_(list(rows))
                )
            )
        )
        new = 0
        for digest, r in rows.items():
            if digest in known:
                continue
            sender = str(field_value(r, CHAT_LOG, "from") or "")
            customer = str(field_value(r, CHAT_LOG, "customer") or "")
            waiter = str(field_value(r, CHAT_LOG, "waiter") or "")
            # the customer is whoever is not the agent: JD names both on every message
            role = (
                "customer" if (customer and sender == customer) or (waiter and sender != waiter) else "agent"
            )
            pin = customer or (sender if role == "customer" else "")
            s.add(
                JdChatMessage(
                    shop_id=shop_id,
                    digest=digest,
                    session_id=mask_pii(str(field_value(r, CHAT_LOG, "session") or ""))[:200],
                    role=role,
                    text_masked=mask_pii(str(field_value(r, CHAT_LOG, "content"))),
                    at=_when(field_value(r, CHAT_LOG, "time")),
                    customer_hash=service.customer_hash(pin) if pin else None,
                    waiter=waiter[:100] or None,
                )
            )
            new += 1
    return new


@dataclass(frozen=True)
class ChatPair:
    question: str  # the customer's message, masked
    answer: str  # the agent's next reply in the session, masked
    session_id: str
    at: datetime | None


def pairs(
    service: Any, shop_id: str, since: datetime | None = None, until: datetime | None = None
) -> list[ChatPair]:
    """(customer message, agent's next reply) of every session in the period, in time order. Several
    customer messages before one reply each get that reply: customers split a question over messages."""
    with service.db.session() as s:
        q = select(JdChatMessage).where(JdChatMessage.shop_id == shop_id)
        if since is not None:
            q = q.where(JdChatMessage.at >= aware(since))
        if until is not None:
            q = q.where(JdChatMessage.at < aware(until))
        rows = list(s.scalars(q.order_by(JdChatMessage.session_id, JdChatMessage.at, JdChatMessage.id)))
        out: list[ChatPair] = []
        waiting: list[JdChatMessage] = []
        session = None
        for row in rows:
            if row.session_id != session:
                session, waiting = row.session_id, []
            if row.role == "customer":
                waiting.append(row)
            elif waiting:
                out += [ChatPair(w.text_masked, row.text_masked, w.session_id, w.at) for w in waiting]
                waiting = []
    return out


# -------------------------------------------------------------------------------------------- sessions
def pull_sessions(
    service: Any,
    shop_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 100,
) -> dict[str, Any]:
    """Fetch the shop's chat sessions (jingdong.im.pop.sessionlist.get) and store the new ones."""
    return pull_windows(
        service,
        shop_id,
        kind="sessions",
        method=SESSION_LIST,
        store=_store_sessions,
        since=since,
        until=until,
        page_size=page_size,
    )


def _store_sessions(service: Any, shop_id: str, records: list[dict[str, Any]]) -> int:
    rows = {
        mask_pii(str(sid))[:200]: r
        for r in records
        if (sid := field_value(r, SESSION_LIST, "session")) not in (None, "")
    }
    with service.db.session() as s:
        known = set(
            s.scalars(
                select(JdChatSession.session_id).where(
                    JdChatSession.shop_id == shop_id, JdChatSession.session_id.in_(list(rows))
                )
            )
        )
        for session_id, r in rows.items():
            if session_id in known:
                continue
            customer = field_value(r, SESSION_LIST, "customer")
            waiter = field_value(r, SESSION_LIST, "waiter")
            s.add(
                JdChatSession(
                    shop_id=shop_id,
                    session_id=session_id,
                    customer_hash=service.customer_hash(str(customer)) if customer else None,
                    waiter=str(waiter)[:100] if waiter else None,
                    started_at=_when(field_value(r, SESSION_LIST, "start")),
                    ended_at=_when(field_value(r, SESSION_LIST, "end")),
                )
            )
    return len(set(rows) - known)


def session_count(service: Any, shop_id: str) -> int:
    with service.db.session() as s:
        return int(s.scalar(select(func.count()).where(JdChatSession.shop_id == shop_id)) or 0)
