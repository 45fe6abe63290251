"""/readyz tells whether the database answers, even when every pooled connection is busy.

Under load each pooled connection may be held by a request; a readiness probe that waited
for one would time out (and report the database unreachable) exactly when the service
is merely busy. It connects on its own instead.
"""

from __future__ import annotations

from contextlib import ExitStack

from fastapi.testclient import TestClient

from app.db import Database


def test_readyz_answers_while_the_pool_is_exhausted(client: TestClient, database: Database) -> None:
    engine = database.engine
    capacity = engine.pool.size() + engine.pool._max_overflow  # type: ignore[attr-defined]
    with ExitStack() as held:
        for _ in range(capacity):
            held.enter_context(engine.connect())
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
