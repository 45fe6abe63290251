from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Source(Base):
    """A feed the scheduler polls, and what it may attach evidence to."""

    __tablename__ = "source"
    __table_args__ = (
        CheckConstraint("kind IN ('rss', 'json', 'csv')", name="kind"),
        CheckConstraint("stance IN ('supports', 'undermines', 'context')", name="stance"),
        CheckConstraint(
            "source_type IN ('pledger_official', 'counterpart_official', 'independent', "
            "'dataset', 'analyst_note')",
            name="source_type",
        ),
        CheckConstraint("reliability IN ('low', 'medium', 'high')", name="reliability"),
        CheckConstraint("every_minutes > 0", name="every_minutes_positive"),
    )

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))
    url: Mapped[str] = mapped_column(Text)
    every_minutes: Mapped[int] = mapped_column(Integer)
    pledges: Mapped[list[str]] = mapped_column(JSON)
    match_any: Mapped[list[str]] = mapped_column(JSON)
    match_all: Mapped[list[str]] = mapped_column(JSON)
    match_none: Mapped[list[str]] = mapped_column(JSON)
    stance: Mapped[str] = mapped_column(String(16))
    source_type: Mapped[str] = mapped_column(String(32))
    reliability: Mapped[str] = mapped_column(String(8))
    trusted: Mapped[bool] = mapped_column(Boolean)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # json: where the items are and which fields to read; csv: the date and value columns.
    mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    # Conditional GET, kept between runs.
    etag: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_modified: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SourceRun(Base):
    """One poll of a source: when, how it ended, what it brought, and what it left for the next."""

    __tablename__ = "source_run"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('running', 'ok', 'not_modified', 'failed', 'partial')", name="outcome"
        ),
        Index("ix_source_run_source_started", "source_id", "started_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    items_seen: Mapped[int] = mapped_column(Integer, default=0)
    evidence_added: Mapped[int] = mapped_column(Integer, default=0)
    links_added: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Items of the feed taken through ingest by this run (new or already known), and the
    # items it left for the next run (a run ingests at most so many: outcome "partial").
    items_ingested: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    items_left: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
