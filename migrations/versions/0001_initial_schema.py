"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 04:01:34.050964
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('viewer', 'collector', 'analyst', 'admin')",
            name=op.f("ck_api_key_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_key_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_key_name")),
    )
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("url_key", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_name", sa.String(length=200), nullable=False),
        sa.Column("source_type", sa.String(length=32), nullable=False),
        sa.Column("reliability", sa.String(length=8), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("collected_by", sa.String(length=120), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "reliability IN ('low', 'medium', 'high')",
            name=op.f("ck_evidence_reliability"),
        ),
        sa.CheckConstraint(
            "source_type IN ('pledger_official', 'counterpart_official', 'independent', 'dataset', 'analyst_note')",
            name=op.f("ck_evidence_source_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_evidence_content_hash")),
        sa.UniqueConstraint("url_key", name=op.f("uq_evidence_url_key")),
    )
    op.create_table(
        "idempotency_record",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_headers", sa.JSON(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_record")),
    )
    op.create_index(
        "ix_idempotency_record_created_at",
        "idempotency_record",
        ["created_at"],
        unique=False,
    )
    op.create_table(
        "pledge",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("made_on", sa.Date(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=True),
        sa.Column("source_title", sa.Text(), nullable=True),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("source_publisher", sa.Text(), nullable=True),
        sa.Column("source_published_on", sa.Date(), nullable=True),
        sa.Column("source_quote", sa.Text(), nullable=True),
        sa.Column("verification_criteria", sa.Text(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("review_every_days", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verification", sa.String(length=16), nullable=False),
        sa.Column("evidence_count", sa.Integer(), nullable=False),
        sa.Column("unreviewed_count", sa.Integer(), nullable=False),
        sa.Column("last_evidence_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint(
            "kind IN ('commitment', 'planned_engagement', 'concern')",
            name=op.f("ck_pledge_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('not_yet_rated', 'in_progress', 'stalled', 'compromise', 'kept', 'broken')",
            name=op.f("ck_pledge_status"),
        ),
        sa.CheckConstraint(
            "verification IN ('unverified', 'claimed', 'corroborated', 'verified')",
            name=op.f("ck_pledge_verification"),
        ),
        sa.CheckConstraint(
            "review_every_days > 0", name=op.f("ck_pledge_review_every_days_positive")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pledge")),
    )
    op.create_table(
        "revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revision")),
    )
    op.create_table(
        "evidence_link",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evidence_id", sa.Integer(), nullable=False),
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("stance", sa.String(length=16), nullable=False),
        sa.Column("review", sa.String(length=16), nullable=False),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=120), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("linked_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "review IN ('unreviewed', 'accepted', 'rejected')",
            name=op.f("ck_evidence_link_review"),
        ),
        sa.CheckConstraint(
            "stance IN ('supports', 'undermines', 'context')",
            name=op.f("ck_evidence_link_stance"),
        ),
        sa.ForeignKeyConstraint(
            ["evidence_id"],
            ["evidence.id"],
            name=op.f("fk_evidence_link_evidence_id_evidence"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_evidence_link_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence_link")),
        sa.UniqueConstraint(
            "evidence_id",
            "pledge_id",
            name=op.f("uq_evidence_link_evidence_id_pledge_id"),
        ),
    )
    op.create_index(
        "ix_evidence_link_pledge_published",
        "evidence_link",
        ["pledge_id", "review", "published_at"],
        unique=False,
    )
    op.create_index(
        "ix_evidence_link_review_queue",
        "evidence_link",
        ["review", "created_at", "id"],
        unique=False,
    )
    op.create_table(
        "pledge_party",
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("party", sa.String(length=2), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "role IN ('made_by', 'made_to')", name=op.f("ck_pledge_party_role")
        ),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_pledge_party_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "pledge_id", "role", "party", name=op.f("pk_pledge_party")
        ),
    )
    op.create_index(
        "ix_pledge_party_party", "pledge_party", ["party", "pledge_id"], unique=False
    )
    op.create_table(
        "pledge_topic",
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("topic", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_pledge_topic_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pledge_id", "topic", name=op.f("pk_pledge_topic")),
    )
    op.create_index(
        "ix_pledge_topic_topic", "pledge_topic", ["topic", "pledge_id"], unique=False
    )
    op.create_table(
        "source_tally",
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("stance", sa.String(length=16), nullable=False),
        sa.Column("source_type", sa.String(length=32), nullable=False),
        sa.Column("reliability", sa.String(length=8), nullable=False),
        sa.Column("source_name", sa.String(length=200), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_source_tally_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "pledge_id",
            "stance",
            "source_type",
            "reliability",
            "source_name",
            name=op.f("pk_source_tally"),
        ),
    )
    op.create_table(
        "status_change",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pledge_id", sa.String(length=100), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evidence_ids", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledge.id"],
            name=op.f("fk_status_change_pledge_id_pledge"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_change")),
    )
    op.create_index(
        "ix_status_change_pledge_effective",
        "status_change",
        ["pledge_id", "effective_at", "recorded_at", "id"],
        unique=False,
    )

    op.bulk_insert(
        sa.table(
            "revision", sa.column("id", sa.Integer), sa.column("value", sa.BigInteger)
        ),
        [{"id": 1, "value": 0}],
    )


def downgrade() -> None:
    op.drop_index("ix_status_change_pledge_effective", table_name="status_change")
    op.drop_table("status_change")
    op.drop_table("source_tally")
    op.drop_index("ix_pledge_topic_topic", table_name="pledge_topic")
    op.drop_table("pledge_topic")
    op.drop_index("ix_pledge_party_party", table_name="pledge_party")
    op.drop_table("pledge_party")
    op.drop_index("ix_evidence_link_review_queue", table_name="evidence_link")
    op.drop_index("ix_evidence_link_pledge_published", table_name="evidence_link")
    op.drop_table("evidence_link")
    op.drop_table("revision")
    op.drop_table("pledge")
    op.drop_index("ix_idempotency_record_created_at", table_name="idempotency_record")
    op.drop_table("idempotency_record")
    op.drop_table("evidence")
    op.drop_table("api_key")
