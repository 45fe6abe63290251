"""Partial source runs: a poll ingests at most so many items, the rest next run

A run now says how many of the feed's items it ingested and how many it left for
the next run, and ``partial`` is an outcome of its own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES = "'running', 'ok', 'not_modified', 'failed'"


def upgrade() -> None:
    with op.batch_alter_table("source_run", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("items_ingested", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("items_left", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.drop_constraint(op.f("ck_source_run_outcome"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_source_run_outcome"), f"outcome IN ({_OUTCOMES}, 'partial')"
        )


def downgrade() -> None:
    # A partial run did end, without error: the closest of the older outcomes is ok.
    op.execute("UPDATE source_run SET outcome = 'ok' WHERE outcome = 'partial'")
    with op.batch_alter_table("source_run", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_source_run_outcome"), type_="check")
        batch_op.create_check_constraint(op.f("ck_source_run_outcome"), f"outcome IN ({_OUTCOMES})")
        batch_op.drop_column("items_left")
        batch_op.drop_column("items_ingested")
