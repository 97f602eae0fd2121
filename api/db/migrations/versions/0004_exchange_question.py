"""exchange question

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        # earlier exchanges keep NULL: their message is the question (clarify choices are left out)
        batch_op.add_column(sa.Column("question_masked", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_column("question_masked")
