"""dynamic and notify entries, answer variants, agent tasks

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kb_entries", schema=None) as batch_op:
        # existing entries are plain FAQ answers
        batch_op.add_column(sa.Column("action", sa.String(length=40), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("notify", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(
            sa.Column("answer_variants", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    op.create_table(
        "agent_tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("entry_id", sa.String(length=200), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_agent_tasks_shop_status", "agent_tasks", ["shop_id", "status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_agent_tasks_shop_status", table_name="agent_tasks")
    op.drop_table("agent_tasks")
    with op.batch_alter_table("kb_entries", schema=None) as batch_op:
        batch_op.drop_column("answer_variants")
        batch_op.drop_column("notify")
        batch_op.drop_column("action")
