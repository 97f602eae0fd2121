"""async JD replies: each message's delivery status, send time, attempts and last error

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jd_messages", schema=None) as batch_op:
        # existing rows were answered in the HTTP response: no delivery, nothing sent
        batch_op.add_column(sa.Column("delivery", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("send_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("send_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jd_messages", schema=None) as batch_op:
        batch_op.drop_column("send_error")
        batch_op.drop_column("send_attempts")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("delivery")
