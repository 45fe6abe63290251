"""Request bodies for tests: valid by default, overridable field by field."""

from __future__ import annotations

from typing import Any


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
