"""The proposals API: list, confirm and dismiss, as an analyst, on both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.clock import FrozenClock
from app.db import Database
from tests.domain.proposals.support import (
    API,
    DUE,
    UNDERMINE,
    add_evidence,
    decide,
    evaluate,
    history,
    new_pledge,
    pledge,
    proposals,
    set_status,
    when,
)
from tests.factories import Keys, invalid_fields, problem

P = "proposal-test-pledge"


def _proposal_events(rule: str, event: str) -> float:
    value = REGISTRY.get_sample_value("pledgewatch_proposals_total", {"rule": rule, "event": event})
    return value or 0.0


def _proposed(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> dict[str, Any]:
    """A pledge past its due date with undermining evidence, and its open due-date proposal."""
    new_pledge(client, keys, P, due_on="2024-11-15")
    evaluate(database, clock)
    [proposal] = proposals(client, keys, state="open")
    return proposal


def test_confirm_records_the_change_as_the_analyst_and_closes_the_proposal(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    first = add_evidence(client, keys, P, stance="undermines", source_name="Wire A")
    second = add_evidence(client, keys, P, stance="undermines", source_name="Wire B")
    evaluate(database, clock)
    [proposal] = proposals(client, keys, state="open")
    assert proposal["rule"] == UNDERMINE
    clock.advance(timedelta(hours=2))
    counted = _proposal_events(UNDERMINE, "confirmed")

    response = decide(client, keys, proposal["id"], "confirm", note="Agreed.")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "confirmed"
    assert body["decided_by"] == "key:analyst"
    assert when(body["decided_at"]) == clock.now()
    assert body["note"] == "Agreed."
    assert _proposal_events(UNDERMINE, "confirmed") == counted + 1
    assert response.headers["location"] == f"{API}/pledges/{P}/history"
    last = history(client, P)[-1]
    assert body["status_change_id"] == last["id"]
    assert last["actor"] == "key:analyst"
    assert (last["from_status"], last["to_status"]) == ("not_yet_rated", "broken")
    assert last["reason"] == proposal["reason"]
    assert last["evidence_ids"] == [first, second]
    assert when(last["effective_at"]) == clock.now()
    after = pledge(client, P)
    assert after["status"] == "broken"
    assert after["verification"] == "verified"  # two independent high-reliability sources
    assert proposals(client, keys, state="open") == []
    assert proposals(client, keys, state="confirmed")[0]["id"] == proposal["id"]


def test_dismiss_closes_the_proposal_and_changes_nothing(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    proposal = _proposed(client, keys, database, clock)
    before = pledge(client, P)

    response = decide(client, keys, proposal["id"], "dismiss", note="Extended by agreement.")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "dismissed"
    assert body["decided_by"] == "key:analyst"
    assert body["note"] == "Extended by agreement."
    assert body["status_change_id"] is None
    assert pledge(client, P)["version"] == before["version"]
    assert len(history(client, P)) == 1
    # The dismissal sticks: the same grounds do not bring the proposal back.
    clock.advance(timedelta(days=3))
    assert evaluate(database, clock).proposals == {}
    assert proposals(client, keys, state="open") == []


def test_a_dismissed_proposal_comes_back_only_on_new_grounds(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    new_pledge(client, keys, P)
    add_evidence(client, keys, P, stance="undermines", source_name="Wire A")
    add_evidence(client, keys, P, stance="undermines", source_name="Wire B")
    evaluate(database, clock)
    [proposal] = proposals(client, keys, state="open")
    assert decide(client, keys, proposal["id"], "dismiss").status_code == 200
    assert evaluate(database, clock).proposals == {}

    clock.advance(timedelta(hours=1))
    third = add_evidence(client, keys, P, stance="undermines", source_name="Wire C")
    assert evaluate(database, clock).proposals == {UNDERMINE: 1}
    [again] = proposals(client, keys, state="open")
    assert third in again["evidence_ids"]


def test_deciding_twice_is_a_conflict(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    proposal = _proposed(client, keys, database, clock)
    assert decide(client, keys, proposal["id"], "confirm").status_code == 200
    problem(decide(client, keys, proposal["id"], "confirm"), 409)
    problem(decide(client, keys, proposal["id"], "dismiss"), 409)

    new_pledge(client, keys, "other", due_on="2024-11-15")
    evaluate(database, clock)
    [other] = proposals(client, keys, state="open")
    assert decide(client, keys, other["id"], "dismiss").status_code == 200
    problem(decide(client, keys, other["id"], "dismiss"), 409)
    problem(decide(client, keys, other["id"], "confirm"), 409)
    assert pledge(client, "other")["status"] == "not_yet_rated"


def test_confirming_when_the_pledge_already_has_a_verdict_is_a_conflict(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    proposal = _proposed(client, keys, database, clock)
    set_status(client, keys, P, "kept")
    body = problem(decide(client, keys, proposal["id"], "confirm"), 409)
    assert "reopen" in body["detail"]
    # Nothing was recorded, and the proposal is still open to be dismissed.
    assert [h["to_status"] for h in history(client, P)] == ["not_yet_rated", "kept"]
    assert proposals(client, keys, state="open")[0]["id"] == proposal["id"]


@pytest.mark.parametrize("role", ["viewer", "collector"])
def test_proposals_need_an_analyst(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock, role: str
) -> None:
    proposal = _proposed(client, keys, database, clock)
    headers = keys[role]
    problem(client.get(f"{API}/proposals", headers=headers), 403)
    problem(client.get(f"{API}/proposals/{proposal['id']}", headers=headers), 403)
    problem(decide(client, keys, proposal["id"], "confirm", role=role), 403)
    problem(decide(client, keys, proposal["id"], "dismiss", role=role), 403)
    response = client.get(f"{API}/proposals")
    problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert proposals(client, keys, state="open")[0]["state"] == "open"


def test_admins_may_decide(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    proposal = _proposed(client, keys, database, clock)
    response = decide(client, keys, proposal["id"], "dismiss", role="admin")
    assert response.status_code == 200, response.text
    assert response.json()["decided_by"] == "key:admin"


def test_list_filters_and_pages(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    for n in range(5):
        new_pledge(client, keys, f"due-{n}", due_on="2024-11-15")
    evaluate(database, clock)
    response = client.get(f"{API}/proposals", params={"limit": 2}, headers=keys["analyst"])
    assert response.status_code == 200, response.text
    page = response.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]

    every = proposals(client, keys, limit=2)
    assert [p["pledge_id"] for p in every] == [f"due-{n}" for n in range(5)]
    assert len({p["id"] for p in every}) == 5
    assert all(p["rule"] == DUE for p in every)

    decide(client, keys, every[0]["id"], "dismiss")
    decide(client, keys, every[1]["id"], "confirm")
    assert [p["pledge_id"] for p in proposals(client, keys, state="open")] == [
        "due-2",
        "due-3",
        "due-4",
    ]
    assert [p["pledge_id"] for p in proposals(client, keys, state="dismissed")] == ["due-0"]
    assert [p["pledge_id"] for p in proposals(client, keys, pledge_id="due-1")] == ["due-1"]

    one = client.get(f"{API}/proposals/{every[1]['id']}", headers=keys["analyst"])
    assert one.status_code == 200
    assert one.json()["state"] == "confirmed"


def test_bad_requests_are_problems(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    proposal = _proposed(client, keys, database, clock)
    analyst = keys["analyst"]
    problem(client.get(f"{API}/proposals/999999", headers=analyst), 404)
    problem(decide(client, keys, 999999, "confirm"), 404)
    problem(decide(client, keys, 999999, "dismiss"), 404)
    assert "state" in invalid_fields(
        client.get(f"{API}/proposals", params={"state": "pending"}, headers=analyst)
    )
    assert "cursor" in invalid_fields(
        client.get(f"{API}/proposals", params={"cursor": "bm9wZQ"}, headers=analyst)
    )
    assert "limit" in invalid_fields(
        client.get(f"{API}/proposals", params={"limit": 501}, headers=analyst)
    )
    assert "note" in invalid_fields(decide(client, keys, proposal["id"], "dismiss", note=5))
    assert "decided_by" in invalid_fields(
        decide(client, keys, proposal["id"], "dismiss", decided_by="someone")
    )
    assert "note" in invalid_fields(decide(client, keys, proposal["id"], "confirm", note="\x00"))
    # None of that decided anything.
    assert proposals(client, keys, state="open")[0]["id"] == proposal["id"]
