"""catalog skus

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_skus",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("sku_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("sales", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("shop_id", "sku_id"),
    )
    with op.batch_alter_table("catalog_skus", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_skus_shop_sales", ["shop_id", "sales"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("catalog_skus", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_skus_shop_sales")
    op.drop_table("catalog_skus")
