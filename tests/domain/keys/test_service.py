"""Keys' lifecycle rules: lifetimes, revocation, rotation, expiry and the record of last use."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Database
from app.domain.keys.models import ApiKey
from app.domain.keys.service import (
    Principal,
    authenticate,
    create_key,
    expiry,
    get_key,
    list_keys,
    parse_lifetime,
    record_uses,
    revoke_key,
    rotate_key,
)
from app.errors import Conflict, InvalidInput, NotFound
from tests.domain.keys.support import sql_statements, updates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        ("8w", timedelta(weeks=8)),
        (" 90D ", timedelta(days=90)),
        ("3660d", timedelta(days=3660)),
    ],
)
def test_a_lifetime_is_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("90", "not a duration"),
        ("d", "not a duration"),
        ("", "not a duration"),
        ("1.5h", "not a duration"),
        ("-5d", "not a duration"),
        ("90 days", "not a duration"),
        ("3y", "not a duration"),
        ("0d", "longer than zero"),
        ("3661d", "at most 10 years"),
        ("9999999w", "at most 10 years"),
    ],
)
def test_a_nonsense_lifetime_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_lifetime(text)


def test_expiry_takes_one_of_a_lifetime_or_a_moment_in_the_future(clock: FrozenClock) -> None:
    now = clock.now()
    assert expiry(now) is None
    assert expiry(now, expires_in=timedelta(days=1)) == now + timedelta(days=1)
    assert expiry(now, expires_at=now + timedelta(hours=1)) == now + timedelta(hours=1)
    with pytest.raises(InvalidInput, match="not both"):
        expiry(now, expires_in=timedelta(days=1), expires_at=now + timedelta(days=1))
    with pytest.raises(InvalidInput, match="in the future"):
        expiry(now, expires_at=now)
    with pytest.raises(InvalidInput, match="10 years"):
        expiry(now, expires_at=now + timedelta(days=4000))


def test_an_expired_key_no_longer_authenticates(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        secret = create_key(
            session,
            name="job",
            role="collector",
            now=clock.now(),
            expires_at=clock.now() + timedelta(hours=1),
        )
    with database.transaction(write=False) as session:
        assert authenticate(session, secret, now=clock.now()) == Principal("job", "collector")
        later = clock.now() + timedelta(hours=1)
        assert authenticate(session, secret, now=later) is None


def test_a_revoked_key_stays_revoked_and_revoking_again_changes_nothing(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        secret = create_key(session, name="job", role="collector", now=clock.now())
    revoked_at = clock.now()
    with database.transaction() as session:
        assert revoke_key(session, "job", now=revoked_at).revoked_at == revoked_at
    clock.advance(timedelta(days=1))
    with database.transaction() as session:
        assert revoke_key(session, "job", now=clock.now()).revoked_at == revoked_at
    with database.transaction(write=False) as session:
        assert authenticate(session, secret, now=clock.now()) is None
        with pytest.raises(NotFound):
            revoke_key(session, "nobody", now=clock.now())


def test_a_key_may_not_revoke_itself_but_another_may(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        create_key(session, name="root", role="admin", now=clock.now())
        create_key(session, name="ops", role="admin", now=clock.now())
    with database.transaction() as session, pytest.raises(Conflict, match="cannot revoke itself"):
        revoke_key(session, "root", now=clock.now(), requested_by="root")
    with database.transaction() as session:
        revoke_key(session, "root", now=clock.now(), requested_by="ops")
    with database.transaction(write=False) as session:
        assert get_key(session, "root").revoked_at == clock.now()


def test_rotation_gives_a_new_secret_under_the_same_name_and_role(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        old = create_key(session, name="job", role="analyst", now=clock.now())
    clock.advance(timedelta(days=3))
    with database.transaction() as session:
        issued = rotate_key(session, "job", now=clock.now())
    assert issued.secret != old
    with database.transaction(write=False) as session:
        assert authenticate(session, old, now=clock.now()) is None
        assert authenticate(session, issued.secret, now=clock.now()) == Principal("job", "analyst")
        key = get_key(session, "job")
        assert (key.rotated_at, key.expires_at) == (clock.now(), None)
        assert key.key_hash != issued.replaced_hash


def test_a_rotated_key_keeps_its_lifetime_unless_given_another(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        create_key(
            session,
            name="job",
            role="collector",
            now=clock.now(),
            expires_at=clock.now() + timedelta(days=90),
        )
    clock.advance(timedelta(days=80))
    with database.transaction() as session:
        kept = rotate_key(session, "job", now=clock.now()).key.expires_at
    assert kept == clock.now() + timedelta(days=90)
    clock.advance(timedelta(days=10))
    with database.transaction() as session:
        kept_again = rotate_key(session, "job", now=clock.now()).key.expires_at
        assert kept_again == clock.now() + timedelta(days=90)
        chosen = clock.now() + timedelta(hours=12)
        assert rotate_key(session, "job", now=clock.now(), expires_at=chosen).key.expires_at == (
            chosen
        )


def test_a_revoked_key_cannot_be_rotated_back_to_life(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        create_key(session, name="job", role="collector", now=clock.now())
        revoke_key(session, "job", now=clock.now())
    with database.transaction() as session, pytest.raises(Conflict, match="revoked"):
        rotate_key(session, "job", now=clock.now())


def test_keys_are_listed_by_name_a_page_at_a_time(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        for name in ("c", "a", "e", "b", "d"):
            create_key(session, name=name, role="viewer", now=clock.now())
    seen: list[str] = []
    cursor: str | None = None
    with database.transaction(write=False) as session:
        while True:
            page, cursor = list_keys(session, limit=2, cursor=cursor)
            seen.extend(key.name for key in page)
            if cursor is None:
                break
        everything, last = list_keys(session)
    assert seen == ["a", "b", "c", "d", "e"]
    assert ([key.name for key in everything], last) == (seen, None)


def test_uses_are_recorded_in_one_statement_and_never_move_back(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        for name in ("a", "b", "c"):
            create_key(session, name=name, role="viewer", now=clock.now())
    with database.transaction(write=False) as session:
        ids = {key.name: key.id for key in list_keys(session)[0]}
    early, late = clock.now() + timedelta(minutes=1), clock.now() + timedelta(minutes=5)

    with sql_statements(database) as statements, database.transaction() as session:
        record_uses(session, {ids["a"]: late, ids["b"]: early})
    assert updates(statements) == 1

    # Another process's older news arrives later: it does not win.
    with database.transaction() as session:
        record_uses(session, {ids["a"]: early, ids["b"]: late})
        record_uses(session, {})
    with database.transaction(write=False) as session:
        found = {key.name: key.last_used_at for key in session.scalars(select(ApiKey))}
    assert found == {"a": late, "b": late, "c": None}
