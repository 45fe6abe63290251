"""Two ``pledgewatch scheduler`` processes on one database: every tick runs once, by the leader,
and when the leader is SIGKILLed the other takes over within a bounded time."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import Database
from app.migrate import upgrade
from app.scheduler.lock import holder_pid
from app.scheduler.models import JobRun
from tests.conftest import postgres_database_name, scratch_postgres

pytestmark = pytest.mark.slow

TICK_SECONDS = 1
LEASE_SECONDS = 3
TAKEOVER_BOUND = 30


@contextmanager
def scheduler_process(url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PLEDGEWATCH_DATABASE_URL": url,
        "PLEDGEWATCH_EVALUATE_EVERY_SECONDS": str(TICK_SECONDS),
        "PLEDGEWATCH_SCHEDULER_LEASE_SECONDS": str(LEASE_SECONDS),
        "PLEDGEWATCH_LOG_JSON": "false",
        "PLEDGEWATCH_LOG_LEVEL": "INFO",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _evaluate_runs(database: Database) -> list[tuple[datetime, str]]:
    with database.transaction(write=False) as session:
        rows = session.execute(
            select(JobRun.scheduled_for, JobRun.holder)
            .where(JobRun.job_id == "evaluate")
            .order_by(JobRun.scheduled_for)
        ).all()
    return [(row.scheduled_for, row.holder) for row in rows]


def _all_ticks(database: Database) -> list[tuple[str, datetime]]:
    with database.transaction(write=False) as session:
        return [
            (row.job_id, row.scheduled_for)
            for row in session.execute(select(JobRun.job_id, JobRun.scheduled_for))
        ]


def _wait(condition: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            pytest.fail(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)
    return time.monotonic() - started


def _two_schedulers_one_tick_each_and_a_takeover(url: str, tmp_path: Path) -> None:
    database = Database(url, pool_size=2)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    try:
        with ExitStack() as stack:
            first = stack.enter_context(scheduler_process(url, logs[0]))
            _wait(lambda: bool(_evaluate_runs(database)), 30, "the first tick", logs)
            second = stack.enter_context(scheduler_process(url, logs[1]))
            _wait(lambda: "scheduler started" in logs[1].read_text(), 30, "the second", logs)
            seen = len(_evaluate_runs(database))
            _wait(lambda: len(_evaluate_runs(database)) >= seen + 6, 30, "six ticks", logs)

            runs = _evaluate_runs(database)
            (leader,) = {holder for _, holder in runs}
            assert holder_pid(leader) == first.pid, "the process started first leads"
            assert "leader: running the jobs" not in logs[1].read_text()
            assert second.poll() is None
            _assert_one_tick_each(database, runs)

            first.send_signal(signal.SIGKILL)
            first.wait()
            took = _wait(
                lambda: any(holder != leader for _, holder in _evaluate_runs(database)),
                TAKEOVER_BOUND,
                "the takeover",
                logs,
            )
            assert took < TAKEOVER_BOUND
            after = len(_evaluate_runs(database))
            _wait(lambda: len(_evaluate_runs(database)) >= after + 2, 30, "two more ticks", logs)

            runs = _evaluate_runs(database)
            _assert_one_tick_each(database, runs)
            holders = [holder for _, holder in runs]
            successor = holders[-1]
            assert holder_pid(successor) == second.pid
            # The ticks are the leader's and then the successor's, never interleaved.
            handover = holders.index(successor)
            assert holders == [leader] * handover + [successor] * (len(holders) - handover)
            assert second.poll() is None
    finally:
        database.dispose()


def _assert_one_tick_each(database: Database, runs: list[tuple[datetime, str]]) -> None:
    ticks = _all_ticks(database)
    assert len(ticks) == len(set(ticks)), "a (job_id, scheduled_for) ran twice"
    times = [at for at, _ in runs]
    for earlier, later in itertools.pairwise(times):
        gap = later - earlier
        assert gap >= timedelta(seconds=TICK_SECONDS), (earlier, later)
        # Whole intervals apart: each tick of one schedule, none run off-schedule.
        assert round(gap.total_seconds(), 2) % TICK_SECONDS == 0, (earlier, later)


def test_two_schedulers_on_postgresql(postgres_template_url: str, tmp_path: Path) -> None:
    # A database of its own: the processes outlive nothing, but connections may linger.
    with scratch_postgres(postgres_database_name("sched")) as url:
        upgrade(url)
        _two_schedulers_one_tick_each_and_a_takeover(url, tmp_path)


def test_two_schedulers_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scheduler.db'}"
    upgrade(url)
    _two_schedulers_one_tick_each_and_a_takeover(url, tmp_path)
