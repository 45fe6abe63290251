"""The ledger on both databases: every write is chained, and tampering is found and named."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.ledger.canonical import GENESIS
from app.domain.ledger.service import read_head, record, verify
from app.domain.status.revision import claim_revision
from app.domain.webhooks.models import Webhook
from app.pagination import encode_cursor
from tests.domain.proposals.support import (
    DUE,
    add_evidence,
    decide,
    evaluate,
    new_pledge,
    proposals,
    review,
    set_status,
)
from tests.domain.sources.test_router import source_body
from tests.factories import Keys, invalid_fields, read_json

API = "/api/v1"
P = "ledger-test-pledge"


def all_entries(client: TestClient) -> list[dict[str, Any]]:
    """Every entry, following the cursor in small pages (so paging is exercised too)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = read_json(client, f"{API}/ledger", **params)
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def kinds(client: TestClient, after: int = 0) -> list[tuple[str, str]]:
    return [(e["kind"], e["subject"]) for e in all_entries(client) if e["seq"] > after]


def verified(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = read_json(client, f"{API}/ledger/verify")
    return body


def verified_afresh(client: TestClient, clock: FrozenClock) -> dict[str, Any]:
    """A new verification, not the verdict kept for the head: a change made behind the API's
    back moves no head, so it is found once the kept verdict is too old to be given again."""
    settings: Settings = cast(FastAPI, client.app).state.settings
    clock.advance(timedelta(seconds=settings.ledger_verify_reuse_seconds + 1))
    return verified(client)


def head_seq(client: TestClient) -> int:
    return int(verified(client)["length"])


def _plain(value: Any) -> Any:
    # Written independently of app.domain.ledger.canonical: the hash is a public formula.
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


def test_the_chain_is_gap_free_and_its_hashes_follow_the_published_formula(
    client: TestClient, keys: Keys
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P)
    set_status(client, keys, P, "in_progress")

    entries = all_entries(client)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    previous = GENESIS
    for entry in entries:
        assert entry["prev_hash"] == previous
        canonical = json.dumps(
            {
                "seq": entry["seq"],
                "at": _plain(datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))),
                "kind": entry["kind"],
                "subject": entry["subject"],
                "payload_hash": entry["payload_hash"],
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        expected = hashlib.sha256((previous + canonical).encode()).hexdigest()
        assert entry["hash"] == expected
        previous = entry["hash"]
    body = verified(client)
    assert body == {
        "ok": True,
        "length": len(entries),
        "head": previous,
        "first_bad_seq": None,
        "first_bad_subject": None,
        "problems": [],
    }


def test_every_kind_of_write_appends_its_entry(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, due_on="2024-11-15")
    assert kinds(client) == [
        ("pledge.created", f"pledge:{P}"),
        ("status.changed", "status_change:1"),
    ]

    mark = head_seq(client)
    response = client.patch(
        f"{API}/pledges/{P}", json={"title": "Renamed"}, headers=keys["analyst"]
    )
    assert response.status_code == 200, response.text
    assert kinds(client, mark) == [("pledge.edited", f"pledge:{P}")]

    mark = head_seq(client)
    evidence_id = add_evidence(client, keys, P, role="collector")
    [link] = read_json(client, f"{API}/evidence/{evidence_id}")["links"]
    assert kinds(client, mark) == [
        ("evidence.added", f"evidence:{evidence_id}"),
        ("link.made", "link:1"),
    ]
    assert link["review"] == "unreviewed"

    mark = head_seq(client)
    review(client, keys, evidence_id, P, "accepted")
    assert kinds(client, mark) == [("link.reviewed", "link:1")]

    mark = head_seq(client)
    set_status(client, keys, P, "in_progress")
    assert kinds(client, mark) == [("status.changed", "status_change:2")]

    mark = head_seq(client)
    evaluate(database, clock)
    [proposal] = proposals(client, keys, state="open")
    assert proposal["rule"] == DUE
    assert kinds(client, mark) == [("proposal.created", f"proposal:{proposal['id']}")]

    mark = head_seq(client)
    assert decide(client, keys, proposal["id"], "confirm").status_code == 200
    assert kinds(client, mark) == [
        ("status.changed", "status_change:3"),
        ("proposal.confirmed", f"proposal:{proposal['id']}"),
    ]

    mark = head_seq(client)
    admin = keys["admin"]
    body = source_body(pledges=[P])
    assert client.post(f"{API}/sources", json=body, headers=admin).status_code == 201
    assert (
        client.patch(f"{API}/sources/example-wire", json={"name": "W"}, headers=admin).status_code
        == 200
    )
    assert client.delete(f"{API}/sources/example-wire", headers=admin).status_code == 204
    assert kinds(client, mark) == [
        ("source.created", "source:example-wire"),
        ("source.edited", "source:example-wire"),
        ("source.deleted", "source:example-wire"),
    ]
    assert verified(client)["ok"] is True


def test_a_dismissal_and_a_batch_are_recorded_and_rule_changes_are_chained(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P, due_on="2024-11-15")
    new_pledge(client, keys, "second-pledge")
    evaluate(database, clock)
    [proposal] = proposals(client, keys, state="open")
    mark = head_seq(client)
    assert decide(client, keys, proposal["id"], "dismiss").status_code == 200
    assert kinds(client, mark) == [("proposal.dismissed", f"proposal:{proposal['id']}")]

    mark = head_seq(client)
    items = [
        {
            "title": f"Batch item {n}",
            "url": f"https://wire.example.org/batch/{n}",
            "summary": "Something happened.",
            "published_at": "2024-12-20T09:00:00Z",
            "source_name": "Wire",
            "source_type": "independent",
            "reliability": "high",
            "links": [{"pledge_id": "second-pledge", "stance": "supports"}],
        }
        for n in range(3)
    ]
    response = client.post(f"{API}/evidence/batch", json={"items": items}, headers=keys["analyst"])
    assert response.status_code == 200, response.text
    added = kinds(client, mark)
    assert [kind for kind, _ in added] == ["evidence.added"] * 3 + ["link.made"] * 3

    # Accepted supporting evidence: the rule moves the pledge to in_progress, set-based.
    mark = head_seq(client)
    evaluate(database, clock)
    assert ("status.changed", "status_change:3") in kinds(client, mark)
    assert verified(client)["ok"] is True


def test_a_refused_write_appends_nothing(client: TestClient, keys: Keys) -> None:
    new_pledge(client, keys, P)
    before = verified(client)
    response = client.post(
        f"{API}/pledges/{P}/status",
        json={"status": "not_yet_rated", "reason": "No change."},
        headers=keys["analyst"],
    )
    assert response.status_code == 409
    assert verified(client) == before


def test_status_carries_the_head_in_its_body_and_headers_even_when_304(
    client: TestClient, keys: Keys
) -> None:
    new_pledge(client, keys, P)
    response = client.get(f"{API}/status")
    assert response.status_code == 200
    head = verified(client)
    assert response.json()["ledger"] == {"length": head["length"], "head": head["head"]}
    assert response.headers["x-pledgewatch-ledger-head"] == head["head"]
    assert response.headers["x-pledgewatch-ledger-length"] == str(head["length"])

    again = client.get(f"{API}/status", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["x-pledgewatch-ledger-head"] == head["head"]

    # Any append moves the ETag: the cached body never shows an old head.
    set_status(client, keys, P, "in_progress")
    moved = client.get(f"{API}/status", headers={"If-None-Match": response.headers["etag"]})
    assert moved.status_code == 200
    assert moved.json()["ledger"]["length"] == head["length"] + 1
    assert moved.json()["ledger"]["head"] == verified(client)["head"]


def test_ledger_pages_by_after_and_by_cursor(client: TestClient, keys: Keys) -> None:
    new_pledge(client, keys, P)
    for _ in range(3):
        add_evidence(client, keys, P)
    everything = all_entries(client)
    page = read_json(client, f"{API}/ledger", after=2, limit=3)
    assert [e["seq"] for e in page["items"]] == [3, 4, 5]
    following = read_json(client, f"{API}/ledger", cursor=page["next_cursor"], limit=100)
    assert [e["seq"] for e in following["items"]] == list(range(6, len(everything) + 1))
    assert following["next_cursor"] is None
    assert read_json(client, f"{API}/ledger", after=len(everything))["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "seven"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "not-ours"}, "cursor"),
        ({"after": "1", "cursor": "WzFd"}, "cursor"),
        # Past 64-bit integers, or past the largest seq taken: refused, never a database error.
        ({"after": str(2**63)}, "after"),
        ({"after": "9" * 5000}, "after"),
        ({"cursor": encode_cursor(2**63)}, "cursor"),
        ({"cursor": encode_cursor(2**70)}, "cursor"),
        ({"cursor": encode_cursor(2**62 + 1)}, "cursor"),
        ({"cursor": encode_cursor(-1)}, "cursor"),
        ({"cursor": encode_cursor(True)}, "cursor"),
        ({"cursor": encode_cursor("7")}, "cursor"),
    ],
)
def test_bad_ledger_queries_are_422_naming_the_field(
    client: TestClient, params: dict[str, str], field: str
) -> None:
    assert field in invalid_fields(client.get(f"{API}/ledger", params=params))


def test_the_largest_seq_accepted_is_an_empty_page(client: TestClient, keys: Keys) -> None:
    new_pledge(client, keys, P)
    for params in ({"after": 2**62}, {"cursor": encode_cursor(2**62)}):
        assert read_json(client, f"{API}/ledger", **params) == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("key", [str(2**31), str(2**64), "9" * 150, "-1", "\u0661"])
def test_an_entry_naming_an_impossible_id_is_a_malformed_subject_not_an_error(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock, key: str
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P)
    with database.transaction() as session:
        session.execute(
            text("UPDATE ledger_entry SET subject = :s WHERE subject = 'evidence:1'"),
            {"s": f"evidence:{key}"},
        )
    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert {"subject": f"evidence:{key}", "reason": "malformed subject"} in [
        {"subject": p["subject"], "reason": p["reason"]} for p in body["problems"]
    ]


# --- Tampering: each kind of row, changed or removed behind the API's back -----------------


def _world(client: TestClient, keys: Keys, database: Database, clock: FrozenClock) -> None:
    """One row of every kind the ledger covers."""
    new_pledge(client, keys, P, due_on="2024-11-15")
    evidence_id = add_evidence(client, keys, P, role="collector")
    review(client, keys, evidence_id, P, "accepted")
    set_status(client, keys, P, "in_progress")
    evaluate(database, clock)
    assert proposals(client, keys, state="open")
    response = client.post(f"{API}/sources", json=source_body(pledges=[P]), headers=keys["admin"])
    assert response.status_code == 201, response.text
    with database.transaction() as session:
        claim_revision(session)
        webhook = Webhook(
            url="https://hooks.example.org/in",
            events=["status.changed"],
            description=None,
            secret="s" * 32,
            created_at=clock.now(),
            created_by="key:admin",
            queued_through=0,
        )
        session.add(webhook)
        session.flush()
        record(session, "webhook.created", [webhook.id], now=clock.now())
    assert verified(client)["ok"] is True


def _latest_seq(database: Database, subject: str) -> int:
    with database.transaction(write=False) as session:
        return int(
            session.execute(
                text("SELECT max(seq) FROM ledger_entry WHERE subject = :s"), {"s": subject}
            ).scalar_one()
        )


TAMPERING: list[tuple[str, str, str]] = [
    ("UPDATE pledge SET title = 'Quietly renamed'", f"pledge:{P}", "differs"),
    (f"DELETE FROM pledge_topic WHERE pledge_id = '{P}'", f"pledge:{P}", "differs"),
    ("UPDATE evidence SET summary = 'Never happened.'", "evidence:1", "differs"),
    ("UPDATE evidence_link SET stance = 'undermines'", "link:1", "differs"),
    ("DELETE FROM evidence_link", "link:1", "gone"),
    (
        "UPDATE status_change SET reason = 'Backdated excuse' WHERE id = 2",
        "status_change:2",
        "differs",
    ),
    ("DELETE FROM status_change WHERE id = 2", "status_change:2", "gone"),
    ("UPDATE proposal SET proposed_status = 'kept'", "proposal:1", "differs"),
    ("UPDATE source SET url = 'https://evil.example.org/feed'", "source:example-wire", "differs"),
    ("DELETE FROM source", "source:example-wire", "gone"),
    ("UPDATE webhook SET url = 'https://evil.example.org/hook'", "webhook:1", "differs"),
]


@pytest.mark.parametrize(("statement", "subject", "reason"), TAMPERING)
def test_a_row_changed_or_deleted_in_the_database_is_named_with_its_entry(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    statement: str,
    subject: str,
    reason: str,
) -> None:
    _world(client, keys, database, clock)
    expected_seq = _latest_seq(database, subject)
    with database.transaction() as session:
        session.execute(text(statement))

    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert body["first_bad_seq"] == expected_seq
    assert body["first_bad_subject"] == subject
    assert reason in body["problems"][0]["reason"]


def test_a_row_inserted_behind_the_apis_back_is_reported(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _world(client, keys, database, clock)
    with database.transaction() as session:
        session.execute(
            text(
                "INSERT INTO status_change (pledge_id, from_status, to_status, effective_at, "
                "recorded_at, actor, reason, evidence_ids) VALUES (:p, 'in_progress', 'kept', "
                ":t, :t, 'key:analyst', 'Slipped in.', '[]')"
            ),
            {"p": P, "t": clock.now() - timedelta(days=1)},
        )
    with database.transaction(write=False) as session:
        slipped = session.execute(text("SELECT max(id) FROM status_change")).scalar_one()
    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert body["problems"] == [
        {
            "seq": None,
            "subject": f"status_change:{slipped}",
            "reason": "the row is not in the ledger",
        }
    ]


def _edit_entry(statement: str) -> Callable[[Database], None]:
    def run(database: Database) -> None:
        with database.transaction() as session:
            session.execute(text(statement))

    return run


@pytest.mark.parametrize(
    ("tamper", "first_bad_seq", "reason"),
    [
        (
            _edit_entry("UPDATE ledger_entry SET payload_hash = prev_hash WHERE seq = 4"),
            4,
            "hash does not match",
        ),
        (_edit_entry("UPDATE ledger_entry SET subject = 'pledge:x' WHERE seq = 3"), 3, "hash"),
        (_edit_entry("DELETE FROM ledger_entry WHERE seq = 6"), 6, "missing"),
        (_edit_entry("UPDATE ledger_entry SET prev_hash = hash WHERE seq = 5"), 5, "prev_hash"),
    ],
)
def test_an_entry_edited_or_removed_breaks_the_chain_there(
    client: TestClient,
    keys: Keys,
    database: Database,
    clock: FrozenClock,
    tamper: Callable[[Database], None],
    first_bad_seq: int,
    reason: str,
) -> None:
    _world(client, keys, database, clock)
    tamper(database)
    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert body["first_bad_seq"] == first_bad_seq
    assert reason in body["problems"][0]["reason"]


def test_entries_cut_off_the_tail_do_not_match_the_recorded_head(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    _world(client, keys, database, clock)
    length = head_seq(client)
    with database.transaction() as session:
        session.execute(text("DELETE FROM ledger_entry WHERE seq = :s"), {"s": length})
    body = verified_afresh(client, clock)
    assert body["ok"] is False
    assert body["first_bad_seq"] == length
    assert any("recorded head" in problem["reason"] for problem in body["problems"])


def test_operational_state_may_change_without_an_entry(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    # A source's polling state, a webhook's secret and a pledge's version (its ETag) are
    # operational: no reader takes them for facts, and they change without an entry.
    # (Derived state readers are shown is checked: see test_derived.py.)
    _world(client, keys, database, clock)
    with database.transaction() as session:
        session.execute(text("UPDATE source SET consecutive_failures = 4, etag = 'x'"))
        session.execute(text("UPDATE webhook SET secret = 'rotated-secret-value-123456'"))
        session.execute(text("UPDATE pledge SET version = version + 1000"))
    assert verified_afresh(client, clock)["ok"] is True


def test_the_service_verifies_inside_a_transaction(database: Database, clock: FrozenClock) -> None:
    with database.transaction() as session:
        assert read_head(session).length == 0
        verdict = verify(session)
    assert verdict.ok
    assert verdict.length == 0
    assert verdict.head == GENESIS
