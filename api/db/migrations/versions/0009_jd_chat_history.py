"""a shop's chat history and sessions pulled from JOS (cold start)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jd_chat_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("text_masked", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("customer_hash", sa.String(length=64), nullable=True),
        sa.Column("waiter", sa.String(length=100), nullable=True),
        sa.Column("pulled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_id", "digest"),
    )
    op.create_index(
        "ix_jd_chat_shop_session", "jd_chat_messages", ["shop_id", "session_id", "at"], unique=False
    )
    op.create_table(
        "jd_chat_sessions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=200), nullable=False),
        sa.Column("customer_hash", sa.String(length=64), nullable=True),
        sa.Column("waiter", sa.String(length=100), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("shop_id", "session_id"),
    )
    op.create_index("ix_jd_chat_sessions_shop_id", "jd_chat_sessions", ["shop_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jd_chat_sessions_shop_id", table_name="jd_chat_sessions")
    op.drop_table("jd_chat_sessions")
    op.drop_index("ix_jd_chat_shop_session", table_name="jd_chat_messages")
    op.drop_table("jd_chat_messages")
