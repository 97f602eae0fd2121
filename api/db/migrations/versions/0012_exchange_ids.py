"""exchange ids made in the process: 64-bit exchange ids, and the table that hands out id nodes

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "id_writers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    if op.get_bind().dialect.name != "postgresql":
        # SQLite's INTEGER is 64-bit already (and exchanges.id, its INTEGER PRIMARY KEY, is the rowid: a
        # BIGINT primary key would not be), so nothing else changes there
        return
    # the referencing column first: PostgreSQL re-checks the foreign key once both are BIGINT
    op.alter_column("feedback", "exchange_id", type_=sa.BigInteger(), existing_type=sa.Integer())
    op.alter_column("exchanges", "id", type_=sa.BigInteger(), existing_type=sa.Integer())
    # the old serial's sequence stays as the column default (unused: every insert gives its id)
    op.execute("ALTER SEQUENCE IF EXISTS exchanges_id_seq AS bigint")


def downgrade() -> None:
    op.drop_table("id_writers")
    if op.get_bind().dialect.name != "postgresql":
        return
    biggest = op.get_bind().execute(sa.text("SELECT max(id) FROM exchanges")).scalar()
    if biggest is not None and biggest > 2**31 - 1:
        raise RuntimeError(
            f"cannot downgrade below 0012: exchange ids up to {biggest} do not fit a 32-bit INTEGER "
            "(they were made by the service after the upgrade)"
        )
    op.execute("ALTER SEQUENCE IF EXISTS exchanges_id_seq AS integer")
    op.alter_column("exchanges", "id", type_=sa.Integer(), existing_type=sa.BigInteger())
    op.alter_column("feedback", "exchange_id", type_=sa.Integer(), existing_type=sa.BigInteger())
