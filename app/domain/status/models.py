from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime
from app.domain.ledger.canonical import GENESIS


class StatusChange(Base):
    """One append-only entry of a pledge's status history (bitemporal)."""

    __tablename__ = "status_change"
    __table_args__ = (
        # Status as of any date, per pledge, is one index seek.
        Index(
            "ix_status_change_pledge_effective",
            "pledge_id",
            "effective_at",
            "recorded_at",
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pledge_id: Mapped[str] = mapped_column(ForeignKey("pledge.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_status: Mapped[str] = mapped_column(String(32))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(Text)
    evidence_ids: Mapped[list[int]] = mapped_column(JSON)


class Revision(Base):
    """A single counter that grows with every write the dashboard can see.

    It is the ``/status`` ETag and every pledge's ``version``: a dashboard's
    conditional request costs one primary-key read.
    """

    __tablename__ = "revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    # The ledger's head, moved under the same lock: one row read tells a dashboard both.
    ledger_length: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    ledger_head: Mapped[str] = mapped_column(String(64), default=GENESIS, server_default=GENESIS)
