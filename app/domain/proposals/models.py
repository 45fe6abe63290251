from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Proposal(Base):
    """A final verdict (kept or broken) that a rule proposes and an analyst decides."""

    __tablename__ = "proposal"
    __table_args__ = (
        CheckConstraint("proposed_status IN ('kept', 'broken')", name="proposed_status"),
        CheckConstraint("state IN ('open', 'confirmed', 'dismissed')", name="state"),
        Index("ix_proposal_state_created", "state", "created_at", "id"),
        Index("ix_proposal_pledge_rule", "pledge_id", "rule", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pledge_id: Mapped[str] = mapped_column(ForeignKey("pledge.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(64))
    proposed_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    evidence_ids: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))
    decided_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_change_id: Mapped[int | None] = mapped_column(
        ForeignKey("status_change.id", ondelete="SET NULL"), nullable=True
    )
