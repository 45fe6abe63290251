"""Calls and reads shared by the rule and proposal tests (real app, real databases)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.db import Database
from app.domain.proposals.rules import EvaluationReport, run_evaluation
from tests.factories import Keys, evidence_body, pledge_body

API = "/api/v1"
STARTS = "supporting-evidence-starts-progress"
STALLS = "no-support-stalls"
DUE = "due-date-passed"
UNDERMINE = "independent-sources-undermine"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def evaluate(database: Database, clock: FrozenClock) -> EvaluationReport:
    return run_evaluation(database, clock.now())


def new_pledge(client: TestClient, keys: Keys, pledge_id: str, **overrides: Any) -> None:
    """A pledge made on 2023-11-15; no due date unless given."""
    body = pledge_body(id=pledge_id, **{"due_on": None, **overrides})
    response = client.post(f"{API}/pledges", json=body, headers=keys["analyst"])
    assert response.status_code == 201, response.text


_counter = iter(range(1, 1_000_000))


def add_evidence(
    client: TestClient,
    keys: Keys,
    pledge_id: str,
    *,
    stance: str = "supports",
    published_at: str = "2024-12-20T09:00:00Z",
    role: str = "analyst",
    **overrides: Any,
) -> int:
    """Post one new item linked to ``pledge_id``; an analyst's link starts accepted."""
    n = next(_counter)
    response = client.post(
        f"{API}/pledges/{pledge_id}/evidence",
        json=evidence_body(n, stance=stance, published_at=published_at, **overrides),
        headers=keys[role],
    )
    assert response.status_code == 201, response.text
    evidence_id: int = response.json()["id"]
    return evidence_id


def review(client: TestClient, keys: Keys, evidence_id: int, pledge_id: str, verdict: str) -> None:
    response = client.post(
        f"{API}/evidence/{evidence_id}/review",
        json={"pledge_id": pledge_id, "review": verdict},
        headers=keys["analyst"],
    )
    assert response.status_code == 200, response.text


def set_status(
    client: TestClient, keys: Keys, pledge_id: str, status: str, **extra: Any
) -> dict[str, Any]:
    response = client.post(
        f"{API}/pledges/{pledge_id}/status",
        json={"status": status, "reason": f"Analyst: {status}.", **extra},
        headers=keys["analyst"],
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def pledge(client: TestClient, pledge_id: str) -> dict[str, Any]:
    response = client.get(f"{API}/pledges/{pledge_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history(client: TestClient, pledge_id: str) -> list[dict[str, Any]]:
    response = client.get(f"{API}/pledges/{pledge_id}/history", params={"limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def proposals(client: TestClient, keys: Keys, **params: Any) -> list[dict[str, Any]]:
    """Every proposal matching ``params``, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"{API}/proposals", params=query, headers=keys["analyst"])
        assert response.status_code == 200, response.text
        page = response.json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def decide(
    client: TestClient, keys: Keys, proposal_id: int, verb: str, role: str = "analyst", **body: Any
) -> httpx.Response:
    response: httpx.Response = client.post(
        f"{API}/proposals/{proposal_id}/{verb}", json=body or None, headers=keys[role]
    )
    return response
