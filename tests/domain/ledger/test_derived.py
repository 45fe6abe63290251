"""Derived state forged in the database: verification recomputes it and names the pledge.

A pledge row keeps its current status, verification and counters, and the dated
summaries (source tallies, monthly totals, grade dates) keep what ``/status?as_of=``
answers from. None of it is a ledger entry, so an ``UPDATE`` of it breaks no hash;
each is recomputed from the history and the links instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import bindparam, text

from app.clock import FrozenClock
from app.db import Database, UTCDateTime
from app.domain.ledger import derived
from app.domain.ledger.service import verify
from tests.domain.ledger.test_ledger import P, _world, verified, verified_afresh
from tests.domain.proposals.support import add_evidence, new_pledge, review, set_status
from tests.factories import Keys

SUBJECT = f"pledge:{P}"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)

# The world's pledge: in_progress since the clock's now, one accepted supporting link from
# an independent, highly reliable source published 2024-12-20 (graded corroborated).
FORGERIES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "UPDATE pledge SET status = 'kept', verification = 'verified'",
        {},
        [
            "status is 'kept' but its history says 'in_progress'",
            "verification is 'verified' but its accepted evidence grades 'corroborated'",
        ],
    ),
    (
        "UPDATE pledge SET status_since = :t",
        {"t": LONG_AGO},
        ["status_since is 2020-01-01T00:00:00+00:00 but its history says 2025-01-15T12:00"],
    ),
    (
        "UPDATE pledge SET verification = 'verified'",
        {},
        ["verification is 'verified' but its accepted evidence grades 'corroborated'"],
    ),
    ("UPDATE pledge SET evidence_count = 99", {}, ["evidence_count is 99 but its links make 1"]),
    ("UPDATE pledge SET unreviewed_count = 3", {}, ["unreviewed_count is 3 but its links make 0"]),
    (
        "UPDATE pledge SET last_evidence_at = NULL",
        {},
        ["last_evidence_at is None but its links make 2024-12-20T09:00:00+00:00"],
    ),
    (
        "UPDATE source_tally SET links = 5",
        {},
        [
            "source_tally ('supports', 'independent', 'high', 'Example Wire') says links=5, "
            "targets_met=0, first_at=2024-12-20T09:00:00+00:00, first_met_at=None but its "
            "accepted links make links=1"
        ],
    ),
    (
        "DELETE FROM source_tally",
        {},
        ["source_tally ('supports', 'independent', 'high', 'Example Wire') is missing"],
    ),
    (
        "INSERT INTO source_tally (pledge_id, stance, source_type, reliability, source_name, "
        "links, targets_met, first_at) VALUES (:p, 'supports', 'independent', 'high', "
        "'Forged Wire', 2, 0, :t)",
        {"p": P, "t": LONG_AGO},
        [
            "source_tally ('supports', 'independent', 'high', 'Forged Wire') says links=2, "
            "targets_met=0, first_at=2020-01-01T00:00:00+00:00, first_met_at=None but no "
            "accepted link makes it"
        ],
    ),
    (
        "UPDATE evidence_month SET through = 7",
        {},
        ["evidence_month 202412 says links=1, through=7"],
    ),
    ("DELETE FROM evidence_month", {}, ["evidence_month 202412 is missing"]),
    (
        "UPDATE grade_dates SET verified_at = corroborated_at",
        {},
        ["grade_dates ('supports') says claimed_at=None, corroborated_at=2024-12-20T09:00:00"],
    ),
    ("DELETE FROM grade_dates", {}, ["grade_dates ('supports') is missing"]),
]


@pytest.mark.parametrize(("statement", "params", "reasons"), FORGERIES)
def test_forged_derived_state_is_named_with_its_pledge(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    statement: str,
    params: dict[str, Any],
    reasons: list[str],
) -> None:
    _world(client, keys, database, clock)
    forged = text(statement)
    if "t" in params:
        forged = forged.bindparams(bindparam("t", type_=UTCDateTime()))
    with database.transaction() as session:
        session.execute(forged, params)

    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert body["first_bad_subject"] == SUBJECT
    assert body["first_bad_seq"] is None
    found = [(p["seq"], p["subject"], p["reason"]) for p in body["problems"]]
    for reason in reasons:
        assert any(
            seq is None and subject == SUBJECT and text_.startswith(reason)
            for seq, subject, text_ in found
        ), (reason, found)


def test_a_forged_status_is_what_readers_see_until_verification_names_it(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _world(client, keys, database, clock)
    with database.transaction() as session:
        session.execute(text("UPDATE pledge SET status = 'kept', verification = 'verified'"))
    shown = client.get(f"/api/v1/pledges/{P}").json()
    assert (shown["status"], shown["verification"]) == ("kept", "verified")

    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert {
        "seq": None,
        "subject": SUBJECT,
        "reason": "status is 'kept' but its history says 'in_progress'",
    } in body["problems"]


def test_derived_state_made_by_the_services_verifies(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    """Reviews both ways, several months and sources, a backdated change: no false alarm."""
    new_pledge(client, keys, P)
    new_pledge(client, keys, "other-pledge")
    add_evidence(
        client,
        keys,
        P,
        published_at="2024-03-05T10:00:00Z",
        source_type="pledger_official",
        source_name="Ministry",
    )
    add_evidence(client, keys, P, role="collector", published_at="2024-06-01T00:00Z")
    rejected = add_evidence(client, keys, P, role="collector", published_at="2024-06-02T00:00Z")
    review(client, keys, rejected, P, "accepted")
    review(client, keys, rejected, P, "rejected")
    add_evidence(client, keys, P, stance="undermines", published_at="2024-07-31T23:59:59Z")
    add_evidence(client, keys, "other-pledge", source_name="Other Wire")
    set_status(client, keys, P, "stalled", effective_at="2024-08-01T00:00:00Z")
    set_status(client, keys, P, "in_progress")

    body = verified(client)
    assert body["ok"] is True, body["problems"]
    pledge = client.get(f"/api/v1/pledges/{P}").json()
    assert pledge["evidence_count"] == 2
    assert pledge["unreviewed_evidence_count"] == 1


class Stop(Exception):
    pass


def test_derived_state_is_checked_a_page_at_a_time_and_can_be_stopped_between_pages(
    client: TestClient, keys: Keys, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        new_pledge(client, keys, f"pledge-{n}")

    def checkpoints(stop_at: int | None = None) -> int:
        calls = 0

        def checkpoint() -> None:
            nonlocal calls
            calls += 1
            if calls == stop_at:
                raise Stop

        with database.transaction(write=False) as session:
            assert verify(session, checkpoint=checkpoint).ok
        return calls

    few = checkpoints()
    monkeypatch.setattr(derived, "PAGE", 1)
    many = checkpoints()
    # A page per pledge: three pages (and the empty one that ends) instead of one (and it).
    assert many - few == 2
    with pytest.raises(Stop):
        checkpoints(stop_at=many)


def test_a_pledge_with_no_history_left_is_named(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    with database.transaction() as session:
        session.execute(text("DELETE FROM status_change"))
    body = verified_afresh(client, clock)
    assert {
        "seq": None,
        "subject": SUBJECT,
        "reason": "status is 'not_yet_rated' but it has no status history",
    } in body["problems"]
    assert any(p["subject"] == "status_change:1" for p in body["problems"])


def test_time_passing_alone_changes_no_derived_state(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    # overdue is worked out on each read from the kept state: it needs no row to change.
    new_pledge(client, keys, P)
    clock.advance(timedelta(days=400))
    assert client.get(f"/api/v1/pledges/{P}").json()["overdue"] is True
    assert verified(client)["ok"] is True
