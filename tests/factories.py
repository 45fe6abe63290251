"""Request bodies for tests: valid by default, overridable field by field."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient


def pledge_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "us-cn-test-pledge",
        "title": "A test pledge",
        "text": "The parties will do a thing.",
        "kind": "commitment",
        "made_by": ["US", "CN"],
        "made_to": ["US", "CN"],
        "made_on": "2023-11-15",
        "topics": ["narcotics"],
        "verification_criteria": "Readouts of the thing being done.",
        "due_on": "2024-11-15",
    }
    body.update(overrides)
    return body


def evidence_body(n: int = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": f"Evidence item {n}",
        "url": f"https://news.example.org/items/{n}",
        "summary": f"Something relevant happened ({n}).",
        "published_at": "2024-04-02T18:00:00Z",
        "source_name": "Example Wire",
        "source_type": "independent",
        "reliability": "high",
    }
    body.update(overrides)
    return body


# --- Shared assertions and calls for API tests ---------------------------------------------

Keys = dict[str, dict[str, str]]
PROBLEM = "application/problem+json"
PLEDGE_ID = "us-cn-test-pledge"


def make_pledge(client: TestClient, keys: Keys, pledge_id: str = PLEDGE_ID) -> None:
    """Create the default test pledge (as an analyst) under ``pledge_id``."""
    response = client.post(
        "/api/v1/pledges", json=pledge_body(id=pledge_id), headers=keys["analyst"]
    )
    assert response.status_code == 201, response.text


def problem(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """Assert an RFC 9457 answer with ``status`` whose errors name each of ``fields``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["type"].startswith("https://")
    named = problem_fields(body)
    for field in fields:
        assert field in named, body
    return body


def problem_fields(body: dict[str, Any]) -> list[str]:
    """The fields a problem's ``errors`` name, in order."""
    return [error["field"] for error in body.get("errors") or []]


def invalid_fields(response: httpx.Response) -> list[str]:
    """The fields a 422 answer names (asserting that it is a proper 422 problem)."""
    return problem_fields(problem(response, 422))


def read_json(client: TestClient, path: str, **params: Any) -> Any:
    """GET ``path`` and return its JSON, asserting a 200."""
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()
