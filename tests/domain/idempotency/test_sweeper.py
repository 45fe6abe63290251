"""The expired-key sweep: every expired key, in short chunks, one admission at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import func, select

from app.clock import FrozenClock
from app.db import Database
from app.domain.idempotency import sweeper as sweeper_module
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.idempotency.sweeper import ExpiredKeySweeper
from app.gates import DatabaseGates


class RecordingGates(DatabaseGates):
    def __init__(self) -> None:
        super().__init__(connections=4, single_writer=True)
        self.held = 0
        self.most = 0
        self.admissions = 0

    @asynccontextmanager
    async def admit(self, *, write: bool, background: bool = False) -> AsyncIterator[None]:
        async with super().admit(write=write, background=background):
            self.held += 1
            self.admissions += 1
            self.most = max(self.most, self.held)
            try:
                yield
            finally:
                self.held -= 1


def add_keys(database: Database, clock: FrozenClock, names: list[str]) -> None:
    with database.transaction() as session:
        for name in names:
            session.add(
                IdempotencyRecord(
                    scope="s" * 64,
                    key=name,
                    request_hash="h" * 64,
                    state="done",
                    response_status=201,
                    response_headers=[],
                    response_body=b"{}",
                    created_at=clock.now(),
                )
            )


def count(database: Database) -> int:
    with database.transaction(write=False) as session:
        return int(session.scalar(select(func.count()).select_from(IdempotencyRecord)) or 0)


def test_a_sweep_deletes_every_expired_key_in_chunks_one_admission_at_a_time(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper_module, "SWEEP_CHUNK", 2)
    add_keys(database, clock, [f"old-{n}" for n in range(5)])
    clock.advance(timedelta(hours=24, seconds=1))
    add_keys(database, clock, ["fresh"])
    gates = RecordingGates()
    sweeper = ExpiredKeySweeper(
        database=database, gates=gates, clock=clock, ttl=timedelta(hours=24)
    )

    assert anyio.run(sweeper.sweep) == 5

    assert count(database) == 1
    assert (gates.admissions, gates.most) == (3, 1)


def test_the_sweeper_runs_on_its_own_until_stopped(database: Database, clock: FrozenClock) -> None:
    add_keys(database, clock, ["old"])
    clock.advance(timedelta(days=2))
    gates = RecordingGates()
    sweeper = ExpiredKeySweeper(
        database=database, gates=gates, clock=clock, ttl=timedelta(hours=24), every_seconds=0
    )

    async def run() -> None:
        sweeper.start()
        with anyio.fail_after(30):
            while count(database):
                await anyio.sleep(0.01)
        await sweeper.stop()

    anyio.run(run)
    assert count(database) == 0
