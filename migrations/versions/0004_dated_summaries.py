"""Dated summaries behind as_of: monthly link totals, earliest links, grade dates

``/status?as_of=`` reads these instead of counting and grading links, so that it
costs the same however long the history. Existing data is summarised from its
links on upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:51:21.058503
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evidence_month",
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.Column("through", sa.Integer(), nullable=False),
        sa.Column("latest_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_evidence_month_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pledge_id", "month", name=op.f("pk_evidence_month")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "grade_dates",
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("agreeing", sa.String(length=32), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("corroborated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_grade_dates_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pledge_id", "agreeing", name=op.f("pk_grade_dates")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("source_tally", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("first_met_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("evidence_link", schema=None) as batch_op:
        batch_op.create_index(
            "ix_evidence_link_review_published",
            ["review", "published_at", "pledge_id"],
            unique=False,
        )
    _summarise_existing_links()


def _summarise_existing_links() -> None:
    # Imported here: only this step needs the application's view of the rows.
    from app.domain.evidence.service import rebuild_summaries

    session = Session(bind=op.get_bind())
    rebuild_summaries(session, None)
    session.flush()


def downgrade() -> None:
    with op.batch_alter_table("evidence_link", schema=None) as batch_op:
        batch_op.drop_index("ix_evidence_link_review_published")
    with op.batch_alter_table("source_tally", schema=None) as batch_op:
        batch_op.drop_column("first_met_at")
        batch_op.drop_column("first_at")
    op.drop_table("grade_dates")
    op.drop_table("evidence_month")
