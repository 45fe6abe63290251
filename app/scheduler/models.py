from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Index, Integer, LargeBinary, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import Column

from app.db import Base, UTCDateTime


class SchedulerLease(Base):
    """Who may run jobs (the SQLite leader lock; PostgreSQL uses an advisory lock)."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobRun(Base):
    """One execution of a scheduled job for one tick: the proof that no tick ran twice."""

    __tablename__ = "job_run"
    __table_args__ = (
        UniqueConstraint("job_id", "scheduled_for"),
        Index("ix_job_run_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(191))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    holder: Mapped[str] = mapped_column(String(200))


# APScheduler's own job store table, declared here so that Alembic owns the schema; the
# job store's own CREATE IF NOT EXISTS then finds it made.
apscheduler_jobs = Table(
    "apscheduler_jobs",
    Base.metadata,
    Column("id", String(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
