"""jd message digest

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:05:12.000000

jd_messages was keyed by the message id cut to 200 characters: two ids sharing a prefix collided, and an
id carrying personal data was stored as given. It is now keyed by the SHA-256 of the id (existing rows
are hashed in place; the stored replies lose their copy of the id), and `created_at` is indexed for
pruning.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _digest(message_id: str) -> str:
    # the same function as api.routes.jd.message_digest (a migration must not import the app)
    return hashlib.sha256(message_id.encode("utf-8")).hexdigest()


def upgrade() -> None:
    conn = op.get_bind()
    table = sa.table(
        "jd_messages",
        sa.column("shop_id", sa.String()),
        sa.column("message_id", sa.String()),
        sa.column("reply", sa.JSON()),
    )
    rows = conn.execute(sa.select(table.c.shop_id, table.c.message_id, table.c.reply)).all()
    for shop_id, message_id, reply in rows:
        values: dict[str, Any] = {"message_id": _digest(message_id)}
        if isinstance(reply, dict) and "message_id" in reply:
            values["reply"] = {k: v for k, v in reply.items() if k != "message_id"}
        conn.execute(
            table.update()
            .where(table.c.shop_id == shop_id, table.c.message_id == message_id)
            .values(**values)
        )
    with op.batch_alter_table("jd_messages", schema=None) as batch_op:
        batch_op.alter_column(
            "message_id",
            new_column_name="message_digest",
            type_=sa.String(length=64),
            existing_type=sa.String(length=200),
            existing_nullable=False,
        )
        batch_op.create_index(batch_op.f("ix_jd_messages_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    # the digests cannot be turned back into ids: a replay of a message seen before the downgrade is
    # processed again
    with op.batch_alter_table("jd_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jd_messages_created_at"))
        batch_op.alter_column(
            "message_digest",
            new_column_name="message_id",
            type_=sa.String(length=200),
            existing_type=sa.String(length=64),
            existing_nullable=False,
        )
