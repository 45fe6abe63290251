from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime

ROLES = ("viewer", "collector", "analyst", "admin")


class ApiKey(Base):
    """A bearer key. Only the SHA-256 of the secret is stored.

    A rotation replaces the hash in place (the name, role and history stay) and sets
    ``rotated_at``; a revocation sets ``revoked_at`` and is final. ``last_used_at`` is
    recorded from memory at most about once a minute (see directory.py), so it lags.
    """

    __tablename__ = "api_key"
    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'collector', 'analyst', 'admin')", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
