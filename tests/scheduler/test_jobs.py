"""Jobs: each tick runs at most once whoever tries it, and collect jobs follow the sources."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Database
from app.domain.sources.models import Source
from app.scheduler.jobs import (
    SchedulerContext,
    current_context,
    ensure_interval_job,
    reconcile_collect_jobs,
    run_once,
    sync_sources,
)
from app.scheduler.models import JobRun
from app.scheduler.service import build_scheduler

TICK = datetime(2025, 1, 15, 12, 0, 0, 250_000, tzinfo=UTC)


def _runs(database: Database) -> list[tuple[str, datetime, str]]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            select(JobRun.job_id, JobRun.scheduled_for, JobRun.holder).order_by(JobRun.id)
        ).all()
    return [(row.job_id, row.scheduled_for, row.holder) for row in rows]


def test_a_tick_runs_once_and_the_next_tick_runs_again(
    context: SchedulerContext, database: Database
) -> None:
    ran: list[str] = []
    assert run_once(context, "evaluate", TICK, lambda: ran.append("first"))
    assert not run_once(context, "evaluate", TICK, lambda: ran.append("again"))
    other = replace(context, holder="elsewhere")
    assert not run_once(other, "evaluate", TICK, lambda: ran.append("elsewhere"))
    assert run_once(context, "evaluate", TICK + timedelta(seconds=1), lambda: ran.append("next"))
    assert run_once(context, "sync-sources", TICK, lambda: ran.append("other job"))

    assert ran == ["first", "next", "other job"]
    assert _runs(database) == [
        ("evaluate", TICK, "here"),
        ("evaluate", TICK + timedelta(seconds=1), "here"),
        ("sync-sources", TICK, "here"),
    ]


def test_a_tick_is_the_same_tick_in_any_time_zone_and_below_a_millisecond(
    context: SchedulerContext,
) -> None:
    ran: list[int] = []
    assert run_once(context, "evaluate", TICK, lambda: ran.append(1))
    in_paris = TICK.astimezone(datetime.fromisoformat("2025-01-01T00:00+01:00").tzinfo)
    assert not run_once(context, "evaluate", in_paris, lambda: ran.append(2))
    # Float timestamps in the job store can move a run time by a microsecond.
    assert not run_once(
        context, "evaluate", TICK + timedelta(microseconds=1), lambda: ran.append(3)
    )
    assert ran == [1]


def test_simultaneous_attempts_at_one_tick_run_it_once(
    context: SchedulerContext, database: Database
) -> None:
    ran: list[str] = []
    lock = threading.Lock()
    contenders = 8
    start = threading.Barrier(contenders)
    outcomes: list[bool] = []

    def attempt(holder: str) -> None:
        mine = replace(context, holder=holder)

        def body() -> None:
            with lock:
                ran.append(holder)

        start.wait()
        outcomes.append(run_once(mine, "evaluate", TICK, body))

    threads = [threading.Thread(target=attempt, args=(f"p{n}",)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == [False] * (contenders - 1) + [True]
    assert len(ran) == 1
    assert _runs(database) == [("evaluate", TICK, ran[0])]


def test_a_failing_job_still_counts_its_tick(context: SchedulerContext) -> None:
    def boom() -> None:
        raise RuntimeError("bad job")

    with pytest.raises(RuntimeError):
        run_once(context, "evaluate", TICK, boom)
    assert not run_once(context, "evaluate", TICK, lambda: None)


def test_jobs_see_the_context_only_while_they_run(context: SchedulerContext) -> None:
    seen: list[SchedulerContext] = []
    run_once(context, "evaluate", TICK, lambda: seen.append(current_context()))
    assert seen == [context]
    with pytest.raises(RuntimeError, match="no scheduler context"):
        current_context()


@pytest.fixture
def scheduler(database: Database) -> Iterator[Any]:
    """A real scheduler on the database's job store, paused so that nothing runs."""
    instance = build_scheduler(database)
    instance.start(paused=True)
    yield instance
    instance.shutdown(wait=False)


def _source(source_id: str, *, every: int = 10, failures: int = 0, **fields: Any) -> Source:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": source_id,
        "name": source_id,
        "kind": "rss",
        "url": f"https://example.org/{source_id}.xml",
        "every_minutes": every,
        "pledges": [],
        "match_any": [],
        "match_all": [],
        "match_none": [],
        "stance": "supports",
        "source_type": "independent",
        "reliability": "medium",
        "trusted": False,
        "enabled": True,
        "consecutive_failures": failures,
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    return Source(**values)


def _collect_jobs(scheduler: Any) -> dict[str, tuple[timedelta, datetime, list[Any]]]:
    return {
        job.id: (job.trigger.interval, job.next_run_time, list(job.args))
        for job in scheduler.get_jobs()
        if job.id.startswith("collect:")
    }


def test_collect_jobs_follow_the_enabled_sources(
    scheduler: Any, database: Database, clock: FrozenClock
) -> None:
    now = clock.now()
    polled = now - timedelta(minutes=4)
    with database.transaction() as session:
        session.add_all(
            [
                _source("fresh"),
                _source("polled", every=10, last_run_at=polled),
                _source("failing", every=10, failures=2, last_run_at=polled),
                _source("off", enabled=False),
            ]
        )

    reconcile_collect_jobs(scheduler, database, now)
    assert _collect_jobs(scheduler) == {
        "collect:fresh": (timedelta(minutes=10), now, ["fresh"]),
        "collect:polled": (timedelta(minutes=10), polled + timedelta(minutes=10), ["polled"]),
        "collect:failing": (timedelta(minutes=40), polled + timedelta(minutes=40), ["failing"]),
    }

    # Unchanged sources keep their jobs (and next runs); changed ones are rescheduled.
    clock.advance(timedelta(minutes=1))
    with database.transaction() as session:
        session.get_one(Source, "failing").consecutive_failures = 0
        session.get_one(Source, "polled").enabled = False
        session.get_one(Source, "off").enabled = True
    reconcile_collect_jobs(scheduler, database, clock.now())
    assert _collect_jobs(scheduler) == {
        "collect:fresh": (timedelta(minutes=10), now, ["fresh"]),
        "collect:failing": (timedelta(minutes=10), polled + timedelta(minutes=10), ["failing"]),
        "collect:off": (timedelta(minutes=10), clock.now(), ["off"]),
    }


def test_sync_sources_does_nothing_without_a_running_scheduler(
    context: SchedulerContext, database: Database
) -> None:
    with database.transaction() as session:
        session.add(_source("fresh"))
    assert run_once(context, "sync-sources", TICK, sync_sources)


def test_registering_a_job_again_keeps_one_job_and_its_next_run(
    scheduler: Any, database: Database
) -> None:
    def next_runs() -> list[tuple[str, datetime]]:
        return [(job.id, job.next_run_time) for job in scheduler.get_jobs()]

    ensure_interval_job(scheduler, "evaluate", _noop, seconds=300)
    (first,) = next_runs()
    ensure_interval_job(scheduler, "evaluate", _noop, seconds=300)
    assert next_runs() == [first], "same id, same interval: same job, same next run"

    later = first[1] + timedelta(hours=1)
    ensure_interval_job(scheduler, "evaluate", _noop, seconds=300, next_run=later)
    assert next_runs() == [("evaluate", later)]

    ensure_interval_job(scheduler, "evaluate", _noop, seconds=60)
    ((job_id, moved),) = next_runs()
    assert job_id == "evaluate"
    assert moved < later, "a new interval gives a new schedule"


def _noop() -> None:
    """A job that does nothing (module-level: the job store keeps it by reference)."""
