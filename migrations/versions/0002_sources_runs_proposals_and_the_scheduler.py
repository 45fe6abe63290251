"""sources, runs, proposals and the scheduler

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 04:56:57.140745
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.String(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apscheduler_jobs")),
    )
    with op.batch_alter_table("apscheduler_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_apscheduler_jobs_next_run_time"), ["next_run_time"], unique=False
        )

    op.create_table(
        "job_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=191), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_run")),
        sa.UniqueConstraint(
            "job_id", "scheduled_for", name=op.f("uq_job_run_job_id_scheduled_for")
        ),
    )
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.create_index("ix_job_run_started_at", ["started_at"], unique=False)

    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_lease")),
    )
    op.create_table(
        "source",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("every_minutes", sa.Integer(), nullable=False),
        sa.Column("pledges", sa.JSON(), nullable=False),
        sa.Column("match_any", sa.JSON(), nullable=False),
        sa.Column("match_all", sa.JSON(), nullable=False),
        sa.Column("match_none", sa.JSON(), nullable=False),
        sa.Column("stance", sa.String(length=16), nullable=False),
        sa.Column("source_type", sa.String(length=32), nullable=False),
        sa.Column("reliability", sa.String(length=8), nullable=False),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("mapping", sa.JSON(), nullable=True),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("last_modified", sa.Text(), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('rss', 'json', 'csv')", name=op.f("ck_source_kind")),
        sa.CheckConstraint(
            "reliability IN ('low', 'medium', 'high')", name=op.f("ck_source_reliability")
        ),
        sa.CheckConstraint(
            "source_type IN ('pledger_official', 'counterpart_official', 'independent', 'dataset', 'analyst_note')",
            name=op.f("ck_source_source_type"),
        ),
        sa.CheckConstraint(
            "stance IN ('supports', 'undermines', 'context')", name=op.f("ck_source_stance")
        ),
        sa.CheckConstraint("every_minutes > 0", name=op.f("ck_source_every_minutes_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source")),
    )
    op.create_table(
        "source_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_id", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("items_seen", sa.Integer(), nullable=False),
        sa.Column("evidence_added", sa.Integer(), nullable=False),
        sa.Column("links_added", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('running', 'ok', 'not_modified', 'failed')",
            name=op.f("ck_source_run_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_source_run_source_id_source"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_run")),
    )
    with op.batch_alter_table("source_run", schema=None) as batch_op:
        batch_op.create_index(
            "ix_source_run_source_started", ["source_id", "started_at", "id"], unique=False
        )

    op.create_table(
        "proposal",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("proposed_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evidence_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=120), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("status_change_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "proposed_status IN ('kept', 'broken')", name=op.f("ck_proposal_proposed_status")
        ),
        sa.CheckConstraint(
            "state IN ('open', 'confirmed', 'dismissed')", name=op.f("ck_proposal_state")
        ),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_proposal_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["status_change_id"],
            ["status_change.id"],
            name=op.f("fk_proposal_status_change_id_status_change"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposal")),
    )
    with op.batch_alter_table("proposal", schema=None) as batch_op:
        batch_op.create_index(
            "ix_proposal_pledge_rule", ["pledge_id", "rule", "state"], unique=False
        )
        batch_op.create_index(
            "ix_proposal_state_created", ["state", "created_at", "id"], unique=False
        )

    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.add_column(sa.Column("observed_value", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("target_met", sa.Boolean(), nullable=True))

    with op.batch_alter_table("source_tally", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("targets_met", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("source_tally", schema=None) as batch_op:
        batch_op.drop_column("targets_met")

    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.drop_column("target_met")
        batch_op.drop_column("observed_value")

    with op.batch_alter_table("proposal", schema=None) as batch_op:
        batch_op.drop_index("ix_proposal_state_created")
        batch_op.drop_index("ix_proposal_pledge_rule")

    op.drop_table("proposal")
    with op.batch_alter_table("source_run", schema=None) as batch_op:
        batch_op.drop_index("ix_source_run_source_started")

    op.drop_table("source_run")
    op.drop_table("source")
    op.drop_table("scheduler_lease")
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.drop_index("ix_job_run_started_at")

    op.drop_table("job_run")
    with op.batch_alter_table("apscheduler_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apscheduler_jobs_next_run_time"))

    op.drop_table("apscheduler_jobs")
