"""Tables of the service. Every row that belongs to a shop carries `shop_id`, and every query filters on
it: shops never see each other's KB, logs, feedback or settings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from api.db.ids import next_exchange_id

# a 64-bit id column: BIGINT on PostgreSQL; on SQLite INTEGER, which is 64-bit already and, as a primary key,
# the rowid (a BIGINT primary key would not be)
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC, aware on the way in and out on every database. SQLite keeps no offset, so a plain
    DateTime(timezone=True) read back naive there and aware on PostgreSQL, and the API wrote times with
    and without "+00:00" by backend. Written: converted to UTC (a naive value is taken as UTC, as every
    time this service makes is); read: UTC attached where the database dropped it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        # naive: UTC, not the database session's time zone (PostgreSQL would read it in its own)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._utc(value)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Shop(Base):
    __tablename__ = "shops"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    api_key_hash: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(10), default="auto")  # auto | assist | off
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    jd_app_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted
    jd_app_secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted
    jd_access_token: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # the merchant console's password (api/console/passwords.py: scrypt), set by the operator; None: the
    # console takes the shop's API key only
    console_password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Entry(Base):
    """The shop's editable KB: what the next publish snapshots."""

    __tablename__ = "kb_entries"

    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    question: Mapped[str] = mapped_column(Text)
    similar: Mapped[list[Any]] = mapped_column(JSON, default=list)
    answer: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(200), default="")
    valid_from: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    valid_to: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    action: Mapped[str] = mapped_column(String(40), default="")  # a dynamic entry's lookup (kb.ACTIONS)
    notify: Mapped[bool] = mapped_column(Boolean, default=False)  # answer and raise a task for the agents
    answer_variants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class KBVersion(Base):
    """One publish: a frozen KB snapshot and the model built from it."""

    __tablename__ = "kb_versions"
    __table_args__ = (UniqueConstraint("shop_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(
        String(12), default="building"
    )  # building | ready | failed | superseded
    kb_hash: Mapped[str] = mapped_column(String(64), default="")
    entries: Mapped[int] = mapped_column(Integer, default=0)
    # the frozen KB (the demo KB: ~100 kB of JSON) is read only where used (builds, entry checks), not by
    # every status read, publish answer and version list: deferred, loaded on first access in a session
    snapshot: Mapped[list[Any]] = mapped_column(JSON, default=list, deferred=True)
    # the shop's engine options at publish time (dictionary, synonyms, ...): a rebuild must use the same
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # the build on the task queue (api/kb/builds.py): "queued" (waiting for a worker, also between
    # attempts), then the stage the build reported (tokenize ... evaluate, save); None once finished
    stage: Mapped[str | None] = mapped_column(String(20), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1 of the current attempt
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # builds started (claims)
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)  # host:pid of the build process
    # last sign of life of whoever holds the build: a claim older than builds.STALE_AFTER is a dead worker's
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # when the merchant last asked for this version, in the order of the shop's requests: publishing it
    # (new, or repeating it while it builds) and activating it explicitly (rollback) each give it the shop's
    # next number (kb_repo.next_request). A finished build is activated only when its version was asked
    # for after the active one (Publisher.activate, forward_only): an older build finishing last, or a
    # build that was running when the merchant rolled back, does not replace what the merchant chose.
    request_seq: Mapped[int] = mapped_column(Integer, default=0)


class Exchange(Base):
    """One customer message and what the bot did with it (the text is stored masked)."""

    __tablename__ = "exchanges"
    __table_args__ = (
        Index("ix_exchanges_shop_time", "shop_id", "created_at"),
        Index("ix_exchanges_shop_customer", "shop_id", "customer_hash"),
    )

    # made in the process before the row is written (api/db/ids.py): time-ordered, so newest first is by id
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False, default=next_exchange_id)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(20), default="api")
    text_masked: Mapped[str] = mapped_column(Text)
    # the question the reply answered when the message is not it (a clarify choice such as "第二个"):
    # labelled data must pair the entry with the customer's real question
    question_masked: Mapped[str | None] = mapped_column(Text, nullable=True)
    decision: Mapped[str] = mapped_column(String(10))
    entry_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # the customer as a keyed hash of the pin JD pushed (None: no pin): joins JD's evaluations
    customer_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Feedback(Base):
    """Thumbs up/down and agent corrections: labelled data for `kefu calibrate`."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    exchange_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("exchanges.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(12))  # up | down | correction
    correct_entry_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    out_of_scope: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdWriter(Base):
    """A process that makes exchange ids: its row id, modulo 2**14, is the node part of its ids, so live
    processes never share one (api/db/ids.py). One row per process start."""

    __tablename__ = "id_writers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JdEvaluation(Base):
    """A customer's evaluation of customer service, pulled from JOS."""

    __tablename__ = "jd_evaluations"
    __table_args__ = (UniqueConstraint("shop_id", "jd_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    jd_id: Mapped[str] = mapped_column(String(100))
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_masked: Mapped[str] = mapped_column(Text, default="")
    evaluated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    pulled_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # who rated which chat: the customer only as a keyed hash (SecretBox.keyed_hash), the agent's pin, the
    # JD session; they join the rating to the conversation and what the bot did in it
    customer_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    waiter: Mapped[str | None] = mapped_column(String(100), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)


class JdChatMessage(Base):
    """One message of a shop's chat history with its customers and agents, pulled from JOS (cold start).

    Stored masked, the customer only as a keyed hash of the pin; `digest` (JD's message id, or the
    session, time, sender and text when JD gives none) keeps a message from being stored twice."""

    __tablename__ = "jd_chat_messages"
    __table_args__ = (
        UniqueConstraint("shop_id", "digest"),
        Index("ix_jd_chat_shop_session", "shop_id", "session_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))  # customer | agent
    text_masked: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    customer_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    waiter: Mapped[str | None] = mapped_column(String(100), nullable=True)
    pulled_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JdChatSession(Base):
    """A chat session of the shop (jingdong.im.pop.sessionlist.get): who, which agent, when."""

    __tablename__ = "jd_chat_sessions"
    __table_args__ = (UniqueConstraint("shop_id", "session_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(200))
    customer_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    waiter: Mapped[str | None] = mapped_column(String(100), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class JdPullCursor(Base):
    """Where the last incremental pull of a JOS list ended, per shop and kind ("evaluations" ...)."""

    __tablename__ = "jd_pull_cursors"

    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    until: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JdMessage(Base):
    """Idempotency of the JD-facing endpoint: a message id is processed once, its reply kept.

    The key is the SHA-256 of the whole message id, not the id: a fixed length means no two ids collide
    by truncation, and an id that carries personal data is not stored readable. The stored reply holds
    no message id either. Rows older than KEFU_JD_MESSAGE_RETENTION are pruned (hence the index).
    """

    __tablename__ = "jd_messages"

    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    message_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    reply: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    # async replies (api.jd.queue): None for a reply given in the HTTP response; else queued | answering |
    # sending | sent | failed. The send is recorded so that a task running twice sends once.
    delivery: Mapped[str | None] = mapped_column(String(10), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    send_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AgentTask(Base):
    """Something a person must do after the bot answered (改地址, 修改订单, 备注发票信息): not a handoff."""

    __tablename__ = "agent_tasks"
    __table_args__ = (Index("ix_agent_tasks_shop_status", "shop_id", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(String(200))
    entry_id: Mapped[str] = mapped_column(String(200))
    context: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the last customer messages, masked
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | done
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# tables of other packages share this metadata (Alembic and the schema checks see every table)
import api.catalog.models  # noqa: E402, F401
