"""evaluations joined to conversations: customer hashes, agents, sessions; pull cursors

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jd_evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("waiter", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("session_id", sa.String(length=200), nullable=True))
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_hash", sa.String(length=64), nullable=True))
    op.create_index("ix_exchanges_shop_customer", "exchanges", ["shop_id", "customer_hash"], unique=False)
    op.create_table(
        "jd_pull_cursors",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("shop_id", "kind"),
    )


def downgrade() -> None:
    op.drop_table("jd_pull_cursors")
    op.drop_index("ix_exchanges_shop_customer", table_name="exchanges")
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_column("customer_hash")
    with op.batch_alter_table("jd_evaluations", schema=None) as batch_op:
        batch_op.drop_column("session_id")
        batch_op.drop_column("waiter")
        batch_op.drop_column("customer_hash")
