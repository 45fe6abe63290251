"""The key directory: answers from memory for a few seconds, then asks the database again."""

from __future__ import annotations

import anyio
from sqlalchemy import update

from app.clock import FrozenClock
from app.db import Database
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.models import ApiKey
from app.domain.keys.service import create_key
from app.gates import DatabaseGates


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _revoke(database: Database, name: str, clock: FrozenClock) -> None:
    with database.transaction() as session:
        session.execute(update(ApiKey).where(ApiKey.name == name).values(revoked_at=clock.now()))


def test_a_key_is_known_then_a_revocation_is_seen_once_the_cached_answer_expires(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    monotonic = FakeMonotonic()
    directory = KeyDirectory(
        database=database,
        gates=DatabaseGates(connections=1, single_writer=False),
        ttl_seconds=2.0,
        monotonic=monotonic,
    )

    first = anyio.run(directory.principal_for, secret)
    assert first is not None
    assert (first.name, first.role) == ("job", "collector")

    _revoke(database, "job", clock)
    monotonic.now += 1.0
    assert anyio.run(directory.principal_for, secret) == first  # still the cached answer
    monotonic.now += 1.5
    assert anyio.run(directory.principal_for, secret) is None  # asked again: revoked


def test_forget_drops_the_cached_answer_at_once(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    directory = KeyDirectory(
        database=database, gates=DatabaseGates(connections=1, single_writer=False)
    )
    assert anyio.run(directory.principal_for, secret) is not None
    _revoke(database, "job", clock)
    directory.forget()
    assert anyio.run(directory.principal_for, secret) is None


def test_an_unknown_key_has_no_principal(database: Database) -> None:
    directory = KeyDirectory(
        database=database, gates=DatabaseGates(connections=1, single_writer=False)
    )
    assert anyio.run(directory.principal_for, "pw_made-up") is None
