from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Evidence(Base):
    """One dated item. Unique by normalised URL and by content hash."""

    __tablename__ = "evidence"
    __table_args__ = (
        CheckConstraint(
            "source_type IN ('pledger_official', 'counterpart_official', 'independent', "
            "'dataset', 'analyst_note')",
            name="source_type",
        ),
        CheckConstraint("reliability IN ('low', 'medium', 'high')", name="reliability"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # SHA-256 of the normalised URL: a unique index on the URL itself would break
    # on PostgreSQL for URLs longer than a B-tree entry may be.
    url_key: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    summary: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source_name: Mapped[str] = mapped_column(String(200))
    source_type: Mapped[str] = mapped_column(String(32))
    reliability: Mapped[str] = mapped_column(String(8))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    collected_by: Mapped[str] = mapped_column(String(120))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A dataset observation: the value read, and whether it meets the pledge's target.
    observed_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    target_met: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class EvidenceLink(Base):
    """How one evidence item bears on one pledge, and whether an analyst accepts it."""

    __tablename__ = "evidence_link"
    __table_args__ = (
        UniqueConstraint("evidence_id", "pledge_id"),
        CheckConstraint("stance IN ('supports', 'undermines', 'context')", name="stance"),
        CheckConstraint("review IN ('unreviewed', 'accepted', 'rejected')", name="review"),
        # The pledge's evidence, newest first, and the dated counts behind as_of.
        Index("ix_evidence_link_pledge_published", "pledge_id", "review", "published_at"),
        Index("ix_evidence_link_review_queue", "review", "created_at", "id"),
        # as_of: the accepted links of one month, every pledge's, in one range.
        Index("ix_evidence_link_review_published", "review", "published_at", "pledge_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evidence_id: Mapped[int] = mapped_column(ForeignKey("evidence.id", ondelete="CASCADE"))
    pledge_id: Mapped[str] = mapped_column(ForeignKey("pledge.id", ondelete="CASCADE"))
    stance: Mapped[str] = mapped_column(String(16))
    review: Mapped[str] = mapped_column(String(16))
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    linked_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Copied from the evidence (which never changes) so that ordering and dated
    # counts are answered from this table's index alone.
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SourceTally(Base):
    """Accepted links per pledge, stance and source: what verification is graded on.

    Kept up to date on every accept and reject, so a pledge's verification is
    recomputed from a handful of rows instead of a scan of its evidence.
    """

    __tablename__ = "source_tally"

    pledge_id: Mapped[str] = mapped_column(
        ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True
    )
    stance: Mapped[str] = mapped_column(String(16), primary_key=True)
    source_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    reliability: Mapped[str] = mapped_column(String(8), primary_key=True)
    source_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    links: Mapped[int] = mapped_column(Integer)
    # Of those links, how many are dataset observations that meet their target.
    targets_met: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The earliest publication among those links, and among those that meet a target:
    # from them follow the dates on which each grade was reached (GradeDates).
    first_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_met_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EvidenceMonth(Base):
    """Accepted links per pledge and calendar month of publication, with a running total.

    What ``/status?as_of=`` counts from: the links up to a moment are the running
    total of the last month before it plus the few links of its own month, a
    fixed number of index seeks however long the history. A row exists only
    while its month has accepted links.
    """

    __tablename__ = "evidence_month"
    # On SQLite the rows are stored in key order: a seek finds the row itself, not a rowid.
    __table_args__ = ({"sqlite_with_rowid": False},)

    pledge_id: Mapped[str] = mapped_column(
        ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True
    )
    # year * 100 + month, e.g. 202411: ordered, and the same on every database.
    month: Mapped[int] = mapped_column(Integer, primary_key=True)
    links: Mapped[int] = mapped_column(Integer)
    # Accepted links published up to the end of this month (this one's included).
    through: Mapped[int] = mapped_column(Integer)
    latest_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GradeDates(Base):
    """When a pledge's accepted evidence first reached each verification level.

    One row per pledge and set of agreeing stances (a status grades on the links
    that agree with it, see ``verification.AGREEING_STANCES``). Levels only rise
    as links accumulate, so the grade as of a moment is the highest level whose
    date is not after it. Kept with the tallies it is derived from.
    """

    __tablename__ = "grade_dates"
    __table_args__ = ({"sqlite_with_rowid": False},)

    pledge_id: Mapped[str] = mapped_column(
        ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True
    )
    # The agreeing stances, sorted and joined by "+": "supports", "supports+undermines".
    agreeing: Mapped[str] = mapped_column(String(32), primary_key=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    corroborated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
