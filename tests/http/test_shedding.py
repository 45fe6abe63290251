"""Load shedding: beyond the requests in flight a process takes, the next is refused at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.http.shedding import LoadShedMiddleware
from app.metrics import REQUESTS_SHED
from tests.factories import problem


@pytest.fixture
def held() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()


def _app(release: threading.Event, entered: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    def slow() -> dict[str, str]:
        entered.set()
        release.wait(timeout=30)
        return {"done": "yes"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(LoadShedMiddleware, max_in_flight=1, exempt=("/healthz",))
    return app


def test_a_request_beyond_the_bound_is_refused_at_once_and_probes_still_answer(
    held: threading.Event,
) -> None:
    entered = threading.Event()
    client = TestClient(_app(held, entered))
    shed_before = REQUESTS_SHED._value.get()
    first: dict[str, object] = {}
    worker = threading.Thread(target=lambda: first.update(answer=client.get("/slow")))
    worker.start()
    assert entered.wait(timeout=30)

    refused = client.get("/slow")
    body = problem(refused, 503)
    assert body["type"].endswith("/overloaded")
    assert refused.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200  # never shed
    assert REQUESTS_SHED._value.get() == shed_before + 1

    held.set()
    worker.join(timeout=30)
    assert first["answer"].status_code == 200  # type: ignore[attr-defined]
    assert client.get("/slow").status_code == 200  # the slot is free again
