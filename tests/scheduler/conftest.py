"""Fixtures of the scheduler tests."""

from __future__ import annotations

import pytest

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.scheduler.jobs import SchedulerContext


@pytest.fixture
def context(settings: Settings, database: Database, clock: FrozenClock) -> SchedulerContext:
    return SchedulerContext(settings=settings, database=database, clock=clock, holder="here")
