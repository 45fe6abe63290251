"""GET /ledger/verify: a verdict kept per head, and requesters that wait holding nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import anyio.to_thread
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.ledger.service import Head
from app.domain.ledger.verifier import LedgerVerifier
from app.main import create_app
from tests.domain.ledger.test_verifier import WAIT, SteppedLedger
from tests.domain.proposals.support import new_pledge, set_status
from tests.factories import Keys

API = "/api/v1"
P = "verify-route-pledge"


def verifier_of(client: TestClient) -> LedgerVerifier:
    verifier: LedgerVerifier = cast(FastAPI, client.app).state.ledger_verifier
    return verifier


def test_a_verdict_names_its_head_and_is_answered_again_until_the_head_moves(
    client: TestClient, keys: Keys
) -> None:
    new_pledge(client, keys, P)
    status = client.get(f"{API}/status")
    first = client.get(f"{API}/ledger/verify")
    assert first.status_code == 200
    assert first.json()["ok"] is True
    assert first.headers["cache-control"] == "no-cache"
    for name in ("x-pledgewatch-ledger-length", "x-pledgewatch-ledger-head"):
        assert first.headers[name] == status.headers[name]
    assert first.json()["head"] == status.headers["x-pledgewatch-ledger-head"]

    again = client.get(f"{API}/ledger/verify")
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    unchanged = client.get(f"{API}/ledger/verify", headers={"If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304
    assert unchanged.headers["x-pledgewatch-ledger-head"] == first.json()["head"]
    assert verifier_of(client).outcomes == {"ok": 1}

    set_status(client, keys, P, "in_progress")
    moved = client.get(f"{API}/ledger/verify", headers={"If-None-Match": first.headers["etag"]})
    assert moved.status_code == 200
    assert moved.json()["length"] == first.json()["length"] + 1
    assert moved.headers["etag"] != first.headers["etag"]
    assert verifier_of(client).outcomes == {"ok": 2}


def test_requesters_waiting_for_a_run_hold_no_thread_and_no_database_slot(
    db_url: str, database: Database, keys: Keys, clock: FrozenClock
) -> None:
    # One connection slot per gate pair: a single waiter holding one would starve the reads.
    settings = Settings(
        database_url=db_url,
        log_json=False,
        log_level="WARNING",
        scheduler_enabled=False,
        db_pool_size=1,
    )
    app = create_app(settings, clock=clock, database=database)
    ledger = SteppedLedger(pages=1)
    with TestClient(app, raise_server_exceptions=False) as client:
        new_pledge(client, keys, P)
        shown = client.get(f"{API}/status").headers
        ledger.head = Head(
            int(shown["x-pledgewatch-ledger-length"]), shown["x-pledgewatch-ledger-head"]
        )
        assert client.portal is not None
        client.portal.call(app.state.ledger_verifier.close)
        app.state.ledger_verifier = LedgerVerifier(ledger.run, clock=clock, reuse_seconds=600)
        waiters = 12
        with ThreadPoolExecutor(waiters) as pool:
            answers = [pool.submit(client.get, f"{API}/ledger/verify") for _ in range(waiters)]
            deadline = time.monotonic() + WAIT
            while app.state.ledger_verifier.waiters < waiters and time.monotonic() < deadline:
                time.sleep(0.005)
            assert app.state.ledger_verifier.waiters == waiters

            def threads_in_use() -> float:
                return anyio.to_thread.current_default_thread_limiter().borrowed_tokens

            # The app's own background readers (the revision watch, the key directory)
            # borrow a thread for a moment now and then: on a busy machine a sample may
            # catch one. Twelve waiters holding threads would never let the count reach 0.
            deadline = time.monotonic() + WAIT
            while client.portal.call(threads_in_use) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert client.portal.call(threads_in_use) == 0
            assert client.get(f"{API}/pledges").status_code == 200
            assert client.get(f"{API}/status", params={"kind": "commitment"}).status_code == 200
            assert client.get(f"{API}/ledger").status_code == 200
            assert ledger.started == 1

            ledger.step()
            bodies = {answer.result().content for answer in answers}
        assert len(bodies) == 1
        assert all(answer.result().status_code == 200 for answer in answers)
    assert ledger.most_active == 1


def test_a_verify_request_is_not_a_database_write_and_needs_no_key(
    client: TestClient, keys: Keys
) -> None:
    new_pledge(client, keys, P)
    anonymous = client.get(f"{API}/ledger/verify")
    keyed = client.get(f"{API}/ledger/verify", headers=keys["viewer"])
    assert anonymous.status_code == keyed.status_code == 200
    assert anonymous.content == keyed.content
    bad_key = client.get(f"{API}/ledger/verify", headers={"Authorization": "Bearer nope"})
    assert bad_key.status_code == 401
