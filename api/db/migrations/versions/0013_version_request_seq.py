"""explicit activations stick: the order in which the merchant asked for each version

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kb_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request_seq", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    # until now the version number was that order (a finished build activated if no higher number was
    # active): existing versions keep it
    op.execute("UPDATE kb_versions SET request_seq = version")


def downgrade() -> None:
    with op.batch_alter_table("kb_versions", schema=None) as batch_op:
        batch_op.drop_column("request_seq")
