"""The key directory: answers from memory for a few seconds, then asks the database again."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.clock import FrozenClock
from app.db import Database
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.models import ApiKey
from app.domain.keys.service import Credential, create_key, hash_key
from app.gates import DatabaseGates
from tests.domain.keys.support import sql_statements, updates


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


def _directory(database: Database, clock: FrozenClock, monotonic: FakeMonotonic) -> KeyDirectory:
    return KeyDirectory(
        database=database,
        gates=DatabaseGates(connections=1, single_writer=False),
        clock=clock,
        ttl_seconds=2.0,
        flush_every_seconds=60.0,
        monotonic=monotonic,
    )


def test_expiry_is_checked_at_every_use_even_while_the_answer_is_cached(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        secret = create_key(
            session,
            name="job",
            role="collector",
            now=clock.now(),
            expires_at=clock.now() + timedelta(minutes=30),
        )
    monotonic = FakeMonotonic()
    directory = _directory(database, clock, monotonic)
    assert anyio.run(directory.principal_for, secret) is not None

    clock.advance(timedelta(minutes=30))  # the cached answer is still fresh (monotonic stands)
    with sql_statements(database) as statements:
        assert anyio.run(directory.principal_for, secret) is None
    assert statements == [], "answered from the cache, by its expires_at"


def test_a_lookup_overtaken_by_a_revocation_does_not_cache_its_stale_answer(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    monotonic = FakeMonotonic()
    directory = _directory(database, clock, monotonic)
    read_before_the_revocation = directory._look_up

    def look_up_then_get_overtaken(key_hash: str) -> Credential | None:
        # The lookup reads the row, then the revocation commits and forgets, all before the
        # lookup's answer comes back to be cached.
        answer = read_before_the_revocation(key_hash)
        _revoke(database, "job", clock)
        directory.forget(hash_key(secret))
        return answer

    monkeypatch.setattr(directory, "_look_up", look_up_then_get_overtaken)
    assert anyio.run(directory.principal_for, secret) is not None  # it began before
    monkeypatch.setattr(directory, "_look_up", read_before_the_revocation)
    assert anyio.run(directory.principal_for, secret) is None  # not the stale cached answer


def _last_used(database: Database) -> dict[str, datetime | None]:
    with database.transaction(write=False) as session:
        return {key.name: key.last_used_at for key in session.scalars(select(ApiKey))}


def test_last_use_is_written_at_most_once_a_minute_in_one_update_for_every_key(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        first = create_key(session, name="first", role="collector", now=clock.now())
        second = create_key(session, name="second", role="viewer", now=clock.now())
        create_key(session, name="idle", role="viewer", now=clock.now())
    monotonic = FakeMonotonic()
    directory = _directory(database, clock, monotonic)

    with sql_statements(database) as statements:
        for _ in range(50):
            clock.advance(timedelta(seconds=1))
            monotonic.now += 1.0
            assert anyio.run(directory.principal_for, first) is not None
        assert anyio.run(directory.principal_for, second) is not None
        assert anyio.run(directory.flush_due) is False  # 50 s since the directory began
        assert updates(statements) == 0
        last_use = clock.now()

        monotonic.now += 10.0
        assert anyio.run(directory.flush_due) is True
        assert anyio.run(directory.flush_due) is False  # nothing new to write
    assert updates(statements) == 1
    assert _last_used(database) == {"first": last_use, "second": last_use, "idle": None}

    with sql_statements(database) as statements:
        clock.advance(timedelta(seconds=5))
        assert anyio.run(directory.principal_for, second) is not None
        monotonic.now += 59.0
        assert anyio.run(directory.flush_due) is False  # a minute has not passed
        monotonic.now += 1.0
        assert anyio.run(directory.flush_due) is True
    assert updates(statements) == 1
    assert _last_used(database)["second"] == clock.now()
    assert _last_used(database)["first"] == last_use


def test_stopping_writes_the_uses_not_yet_written(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    directory = _directory(database, clock, FakeMonotonic())

    async def serve_once_then_stop() -> None:
        await directory.start()
        assert await directory.principal_for(secret) is not None
        await directory.stop()

    anyio.run(serve_once_then_stop)
    assert _last_used(database) == {"job": clock.now()}


def test_a_failed_write_keeps_the_uses_for_the_next_one(
    database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    monotonic = FakeMonotonic()
    directory = _directory(database, clock, monotonic)
    assert anyio.run(directory.principal_for, secret) is not None
    write = directory._write_uses

    def unreachable(_uses: dict[int, datetime]) -> None:
        raise OperationalError("UPDATE api_key", {}, Exception("the database went away"))

    monkeypatch.setattr(directory, "_write_uses", unreachable)
    with pytest.raises(OperationalError):
        anyio.run(directory.flush)
    monkeypatch.setattr(directory, "_write_uses", write)
    anyio.run(directory.flush)
    assert _last_used(database) == {"job": clock.now()}
