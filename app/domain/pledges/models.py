from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime


class Pledge(Base):
    """A commitment, with its derived state kept current so reads never scan history."""

    __tablename__ = "pledge"
    __table_args__ = (
        CheckConstraint("kind IN ('commitment', 'planned_engagement', 'concern')", name="kind"),
        CheckConstraint(
            "status IN ('not_yet_rated', 'in_progress', 'stalled', 'compromise', 'kept', 'broken')",
            name="status",
        ),
        CheckConstraint(
            "verification IN ('unverified', 'claimed', 'corroborated', 'verified')",
            name="verification",
        ),
        CheckConstraint("review_every_days > 0", name="review_every_days_positive"),
    )

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    made_on: Mapped[date] = mapped_column(Date)
    venue: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_title: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_publisher: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_published_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    source_quote: Mapped[str | None] = mapped_column(Text, nullable=True)
    verification_criteria: Mapped[str] = mapped_column(Text)
    due_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    review_every_days: Mapped[int] = mapped_column(Integer, default=30)

    # Derived state, maintained by the services on every write that affects it.
    status: Mapped[str] = mapped_column(String(32), default="not_yet_rated")
    status_since: Mapped[datetime] = mapped_column(UTCDateTime())
    verification: Mapped[str] = mapped_column(String(16), default="unverified")
    evidence_count: Mapped[int] = mapped_column(Integer, default=0)
    unreviewed_count: Mapped[int] = mapped_column(Integer, default=0)
    last_evidence_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Taken from the global revision counter, so it only ever grows.
    version: Mapped[int] = mapped_column(BigInteger)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(120))

    parties: Mapped[list[PledgeParty]] = relationship(
        back_populates="pledge",
        lazy="raise",
        cascade="all, delete-orphan",
        order_by="(PledgeParty.role, PledgeParty.position)",
    )
    topic_rows: Mapped[list[PledgeTopic]] = relationship(
        back_populates="pledge",
        lazy="raise",
        cascade="all, delete-orphan",
        order_by="PledgeTopic.position",
    )


class PledgeParty(Base):
    """A party (ISO 3166-1 alpha-2) that made, or received, a pledge."""

    __tablename__ = "pledge_party"
    __table_args__ = (
        CheckConstraint("role IN ('made_by', 'made_to')", name="role"),
        Index("ix_pledge_party_party", "party", "pledge_id"),
    )

    pledge_id: Mapped[str] = mapped_column(
        ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(8), primary_key=True)
    party: Mapped[str] = mapped_column(String(2), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)

    pledge: Mapped[Pledge] = relationship(back_populates="parties", lazy="raise")


class PledgeTopic(Base):
    __tablename__ = "pledge_topic"
    __table_args__ = (Index("ix_pledge_topic_topic", "topic", "pledge_id"),)

    pledge_id: Mapped[str] = mapped_column(
        ForeignKey("pledge.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)

    pledge: Mapped[Pledge] = relationship(back_populates="topic_rows", lazy="raise")
