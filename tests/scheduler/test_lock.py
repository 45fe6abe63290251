"""The leader lock, on both databases: one holder at a time, and a dead holder is replaced."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app.clock import FrozenClock
from app.db import Database
from app.scheduler.lock import AdvisoryLock, LeaseLock, holder_pid, leader_lock, make_holder
from app.scheduler.models import SchedulerLease


def test_one_holder_at_a_time_and_release_lets_the_next_in(database: Database) -> None:
    first = leader_lock(database, holder="first", lease_seconds=15)
    second = leader_lock(database, holder="second", lease_seconds=15)
    try:
        assert first.try_acquire()
        assert first.try_acquire(), "taking it again while holding it is fine"
        assert not second.try_acquire()
        assert first.renew()
        assert not second.renew(), "a lock never acquired is not held"

        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()


def test_postgresql_uses_an_advisory_lock_and_sqlite_a_lease(database: Database) -> None:
    lock = leader_lock(database, holder="x", lease_seconds=15)
    expected = AdvisoryLock if database.dialect == "postgresql" else LeaseLock
    assert isinstance(lock, expected)
    lock.release()


def test_a_lease_is_taken_over_once_expired_and_not_before(
    database: Database, clock: FrozenClock
) -> None:
    first = LeaseLock(database, holder="first", lease_seconds=15, clock=clock)
    second = LeaseLock(database, holder="second", lease_seconds=15, clock=clock)
    assert first.try_acquire()

    clock.advance(timedelta(seconds=14))
    assert not second.try_acquire(), "still within the lease"

    clock.advance(timedelta(seconds=2))
    assert second.try_acquire(), "expired: anyone may take it"
    assert not first.renew(), "the old holder learns it lost the lease"
    assert not first.try_acquire()
    with database.transaction(write=False) as session:
        lease = session.get_one(SchedulerLease, "scheduler")
        assert lease.holder == "second"
        assert lease.expires_at == clock.now() + timedelta(seconds=15)


def test_renewing_a_lease_keeps_it(database: Database, clock: FrozenClock) -> None:
    first = LeaseLock(database, holder="first", lease_seconds=15, clock=clock)
    second = LeaseLock(database, holder="second", lease_seconds=15, clock=clock)
    assert first.try_acquire()
    for _ in range(5):
        clock.advance(timedelta(seconds=10))
        assert first.renew()
        assert not second.try_acquire()


def test_racing_for_an_expired_lease_has_one_winner(database: Database, clock: FrozenClock) -> None:
    stale = LeaseLock(database, holder="dead", lease_seconds=15, clock=clock)
    assert stale.try_acquire()
    clock.advance(timedelta(seconds=60))
    contenders = [
        LeaseLock(database, holder=f"c{n}", lease_seconds=15, clock=clock) for n in range(8)
    ]
    results: list[bool] = []
    start = threading.Barrier(len(contenders))

    def contend(lock: LeaseLock) -> None:
        start.wait()
        results.append(lock.try_acquire())

    threads = [threading.Thread(target=contend, args=(lock,)) for lock in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_advisory_lock_dies_with_its_connection(database: Database) -> None:
    first = AdvisoryLock(database.url, holder="first")
    second = AdvisoryLock(database.url, holder="second")
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        pid = first.backend_pid()

        # What the server sees when the holder is SIGKILLed or its network dies.
        with database.transaction() as session:
            session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        deadline = time.monotonic() + 10
        while not second.try_acquire():
            assert time.monotonic() < deadline, "the lock outlived its connection"
            time.sleep(0.05)
        assert not first.renew(), "the old holder learns it lost the lock"
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_advisory_locks_of_two_databases_do_not_meet(database: Database) -> None:
    # The lock is per database: schedulers of two deployments on one server never wait
    # for each other. Shown with this worker's database and the server's own.
    other_url = database.url.rsplit("/", 1)[0] + "/postgres"
    ours = AdvisoryLock(database.url, holder="ours")
    theirs = AdvisoryLock(other_url, holder="theirs")
    try:
        assert ours.try_acquire()
        assert theirs.try_acquire()
    finally:
        ours.release()
        theirs.release()


def test_holder_names_carry_the_process_id() -> None:
    holder = make_holder()
    assert holder_pid(holder) == os.getpid()
    assert make_holder() != holder


def test_the_lease_table_keeps_one_row(database: Database, clock: FrozenClock) -> None:
    for n in range(3):
        lock = LeaseLock(database, holder=f"h{n}", lease_seconds=15, clock=clock)
        assert lock.try_acquire()
        clock.advance(timedelta(seconds=20))
    with database.transaction(write=False) as session:
        assert session.scalars(select(SchedulerLease.holder)).all() == ["h2"]


def test_the_sqlite_lease_renews_on_a_connection_of_its_own_that_waits_a_third_of_a_lease(
    tmp_path: Path, sqlite_template: Path
) -> None:
    path = tmp_path / "lease.db"
    shutil.copyfile(sqlite_template, path)
    database = Database(f"sqlite:///{path}", pool_size=1)
    lock = leader_lock(database, holder="leader", lease_seconds=3)
    assert isinstance(lock, LeaseLock)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        assert lock.try_acquire()
        lease_engine = lock._database.engine
        assert lease_engine is not database.engine, "never waits for the pool jobs use"
        with lease_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1000

        # Another writer holds SQLite's write lock for longer than the renewal may wait: the
        # renewal gives up (the lease still runs, so it is still ours) instead of hanging.
        blocker.execute("BEGIN IMMEDIATE")
        assert lock.renew(), "not lost: nobody may take it before it expires"
        blocker.execute("ROLLBACK")
        assert lock.renew()
    finally:
        blocker.close()
        lock.release()
        database.dispose()
