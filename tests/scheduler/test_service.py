"""The scheduler service in this process: leadership, restarts, and the app's lifespan."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, select, text

from app.clock import SystemClock
from app.config import Settings
from app.db import Database
from app.main import create_app
from app.migrate import upgrade
from app.scheduler.jobs import SchedulerContext, current_context, ensure_interval_job
from app.scheduler.models import JobRun, SchedulerLease
from app.scheduler.service import SchedulerService
from tests.conftest import postgres_database_name, scratch_postgres


def tick() -> None:
    """A job that only leaves its job_run row (module-level: stored by reference)."""


def register_tick(scheduler: Any, context: SchedulerContext) -> None:
    ensure_interval_job(scheduler, "tick", tick, seconds=1)


def _fast(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"scheduler_lease_seconds": 3, **changes})


@contextmanager
def running(service: SchedulerService) -> Iterator[SchedulerService]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _runs(database: Database, job_id: str) -> list[tuple[datetime, str]]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            select(JobRun.scheduled_for, JobRun.holder)
            .where(JobRun.job_id == job_id)
            .order_by(JobRun.scheduled_for)
        ).all()
    return [(row.scheduled_for, row.holder) for row in rows]


def _stored_jobs(database: Database) -> list[tuple[str, float]]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            text("SELECT id, next_run_time FROM apscheduler_jobs ORDER BY id")
        ).all()
    return [(row.id, row.next_run_time) for row in rows]


def test_a_restart_neither_loses_nor_doubles_nor_postpones_jobs(
    settings: Settings, database: Database
) -> None:
    fast = _fast(settings)
    with running(SchedulerService(fast, database, clock=SystemClock())) as first:
        assert first.wait_until_leader(10)
        _wait(lambda: bool(_runs(database, "sync-sources")), 10, "the first sync")
        before = _stored_jobs(database)
    assert [job_id for job_id, _ in before] == ["deliver", "evaluate", "sync-sources"]

    with running(SchedulerService(fast, database, clock=SystemClock())) as second:
        assert second.wait_until_leader(10)
        after = _stored_jobs(database)
    assert [job_id for job_id, _ in after] == ["deliver", "evaluate", "sync-sources"]
    # deliver runs every few seconds, so its next run may move during the restart.
    assert dict(after)["evaluate"] == dict(before)["evaluate"], (
        "evaluate keeps its next run across the restart"
    )
    with database.transaction(write=False) as session:
        assert session.scalars(select(SchedulerLease)).all() == [], "the lease is given back"


def test_one_service_leads_and_a_stopped_leader_hands_over(
    settings: Settings, database: Database
) -> None:
    fast = _fast(settings)
    first = SchedulerService(fast, database, register=register_tick)
    second = SchedulerService(fast, database, register=register_tick)
    first.start()
    try:
        assert first.wait_until_leader(10)
        with running(second):
            _wait(lambda: len(_runs(database, "tick")) >= 3, 10, "three ticks")
            assert not second.is_leader
            first.stop()
            handed_over = len(_runs(database, "tick"))
            assert second.wait_until_leader(10)
            _wait(lambda: len(_runs(database, "tick")) >= handed_over + 2, 10, "two more ticks")
    finally:
        first.stop()

    runs = _runs(database, "tick")
    holders = [holder for _, holder in runs]
    assert holders == [first.holder] * handed_over + [second.holder] * (len(runs) - handed_over)
    times = [at for at, _ in runs]
    assert len(set(times)) == len(times)


LONG_JOB_STARTED = threading.Event()
LONG_JOB_SAW_STOP: list[bool] = []


def long_job() -> None:
    """A job that runs until asked to stop (module-level: stored by reference)."""
    LONG_JOB_STARTED.set()
    LONG_JOB_SAW_STOP.append(current_context().stop_requested.wait(60))


def register_long_job(scheduler: Any, context: SchedulerContext) -> None:
    ensure_interval_job(scheduler, "long", long_job, seconds=3600, next_run=datetime.now(UTC))


def test_stepping_down_asks_running_jobs_to_stop(settings: Settings, database: Database) -> None:
    LONG_JOB_STARTED.clear()
    LONG_JOB_SAW_STOP.clear()
    service = SchedulerService(_fast(settings), database, register=register_long_job)
    with running(service):
        assert LONG_JOB_STARTED.wait(30)
    # stop() waited for the job, which ended as soon as it was asked (a poll between chunks).
    assert LONG_JOB_SAW_STOP == [True]


def test_serve_runs_the_scheduler_unless_disabled(settings: Settings, database: Database) -> None:
    enabled = _fast(settings, scheduler_enabled=True)
    with TestClient(create_app(enabled, database=database)) as client:
        service = client.app.state.scheduler  # type: ignore[attr-defined]
        assert isinstance(service, SchedulerService)
        # Its polls take their turns at the API's gates, like the API's own writes.
        assert service.context.collector() is client.app.state.collect_context  # type: ignore[attr-defined]
        assert service.wait_until_leader(10)
        _wait(lambda: bool(_runs(database, "sync-sources")), 10, "the first sync")
    assert not service.alive, "the lifespan stops it"

    with TestClient(create_app(settings, database=database)) as client:
        assert client.app.state.scheduler is None  # type: ignore[attr-defined]


@contextmanager
def _empty_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_template_url")  # skips when PostgreSQL is away
    with scratch_postgres(postgres_database_name("empty")) as url:
        yield url


def test_the_scheduler_waits_for_the_migrations(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with _empty_database(backend, request, tmp_path) as url:
        settings = Settings(database_url=url, log_json=False, scheduler_lease_seconds=3)
        service = SchedulerService(settings)
        with running(service):
            assert not service.wait_until_leader(1.5)
            # Alembic owns the schema: nothing was created behind its back.
            engine = create_engine(url)
            try:
                assert inspect(engine).get_table_names() == []
            finally:
                engine.dispose()

            upgrade(url)
            assert service.wait_until_leader(10)
