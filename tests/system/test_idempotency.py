"""Idempotency-Key on POST: replay, mismatch, scope per API key, in progress, expiry, and
the key settled in the request's own transaction before its answer leaves."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.clock import FrozenClock
from app.db import Database
from app.domain.evidence import service as evidence_service
from app.domain.idempotency import service as idempotency_service
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.idempotency.service import owner_of
from app.domain.keys.models import ApiKey
from app.domain.keys.service import hash_key
from app.errors import DatabaseBusy
from app.gates import DatabaseGates
from tests.factories import (
    PLEDGE_ID,
    Keys,
    evidence_body,
    make_pledge,
    pledge_body,
    problem,
)

P1 = PLEDGE_ID

REPLAYED = "idempotent-replayed"


def with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def post_evidence(
    client: TestClient, headers: dict[str, str], n: int = 1, **overrides: Any
) -> Response:
    response: Response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_body(n, stance="supports", **overrides),
        headers=headers,
    )
    return response


def assert_replay_of(replay: Response, first: Response) -> None:
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    assert replay.headers[REPLAYED] == "true"
    assert replay.headers["content-type"] == first.headers["content-type"]
    assert REPLAYED not in first.headers


def history(client: TestClient, pledge_id: str = P1) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/pledges/{pledge_id}/history")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def records(database: Database) -> list[IdempotencyRecord]:
    with database.transaction(write=False) as session:
        rows = list(session.scalars(select(IdempotencyRecord)))
        for row in rows:
            session.expunge(row)
        return rows


def scope_of(role: str) -> str:
    """How keys are scoped: per principal (the tests' keys are named after their role)."""
    return owner_of(f"key:{role}")


# --- replay -----------------------------------------------------------------------------------


def test_same_key_and_body_replays_a_created_pledge(client: TestClient, keys: Keys) -> None:
    headers = with_key(keys["analyst"], "create-pledge-1")
    first = client.post("/api/v1/pledges", json=pledge_body(), headers=headers)
    assert first.status_code == 201, first.text
    replay = client.post("/api/v1/pledges", json=pledge_body(), headers=headers)
    assert_replay_of(replay, first)
    assert replay.headers["location"] == first.headers["location"]
    # Run again for real it would have been a 409: the id exists.
    again = client.post("/api/v1/pledges", json=pledge_body(), headers=keys["analyst"])
    assert again.status_code == 409
    listed = client.get("/api/v1/pledges").json()["items"]
    assert [p["id"] for p in listed] == [P1]


def test_replayed_evidence_post_is_not_run_again(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "evidence-1")
    first = post_evidence(client, headers)
    assert first.status_code == 201
    replay = post_evidence(client, headers)
    # Run again it would answer 200 (already known); the replay is the first 201.
    assert_replay_of(replay, first)
    assert replay.status_code == 201
    assert len(client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"]) == 1


def test_replayed_status_change_makes_no_second_change(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["analyst"], "status-1")
    body = {"status": "in_progress", "reason": "Talks resumed."}
    first = client.post(f"/api/v1/pledges/{P1}/status", json=body, headers=headers)
    assert first.status_code == 201, first.text
    version = client.get(f"/api/v1/pledges/{P1}").json()["version"]
    for _ in range(3):
        replay = client.post(f"/api/v1/pledges/{P1}/status", json=body, headers=headers)
        assert_replay_of(replay, first)
    changes = history(client)
    assert [c["to_status"] for c in changes] == ["not_yet_rated", "in_progress"]
    pledge = client.get(f"/api/v1/pledges/{P1}").json()
    assert pledge["version"] == version
    assert pledge["status"] == "in_progress"


def test_replayed_batch_is_the_first_answer(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    item = {**evidence_body(), "links": [{"pledge_id": P1, "stance": "supports"}]}
    headers = with_key(keys["collector"], "batch-1")
    first = client.post("/api/v1/evidence/batch", json={"items": [item]}, headers=headers)
    assert first.status_code == 200
    assert first.json()["results"][0]["status"] == 201
    replay = client.post("/api/v1/evidence/batch", json={"items": [item]}, headers=headers)
    assert_replay_of(replay, first)
    assert replay.json()["results"][0]["status"] == 201


def test_an_error_answer_is_replayed_too(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "bad-1")
    first = post_evidence(client, headers, published_at="2024-02-30")
    problem(first, 422, "published_at")
    replay = post_evidence(client, headers, published_at="2024-02-30")
    assert_replay_of(replay, first)


def test_without_a_key_nothing_is_replayed(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = post_evidence(client, keys["collector"])
    second = post_evidence(client, keys["collector"])
    assert (first.status_code, second.status_code) == (201, 200)
    assert REPLAYED not in second.headers
    assert records(client_database(client)) == []


def client_database(client: TestClient) -> Database:
    database: Database = client.app.state.database  # type: ignore[attr-defined]
    return database


def test_get_ignores_idempotency_key(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = client.get(f"/api/v1/pledges/{P1}", headers={"Idempotency-Key": "get-1"})
    second = client.get(f"/api/v1/pledges/{P1}", headers={"Idempotency-Key": "get-1"})
    assert first.status_code == second.status_code == 200
    assert REPLAYED not in second.headers


def test_the_record_keeps_the_first_response(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    first = post_evidence(client, with_key(keys["collector"], "kept-1"))
    (record,) = records(database)
    assert record.key == "kept-1"
    assert record.scope == scope_of("collector")
    assert record.state == "done"
    assert record.response_status == 201
    assert record.response_body == first.content
    assert record.created_at == clock.now()


# --- a different request with the same key ----------------------------------------------------


def test_same_key_with_another_body_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "reused-1")
    first = post_evidence(client, headers, 1)
    assert first.status_code == 201
    other = post_evidence(client, headers, 2)
    found = problem(other, 422, "Idempotency-Key")
    assert "different" in found["detail"]
    assert REPLAYED not in other.headers
    items = client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"]
    assert [item["title"] for item in items] == ["Evidence item 1"]
    # The first answer is still there for the first body.
    assert_replay_of(post_evidence(client, headers, 1), first)


def test_same_key_on_another_path_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    make_pledge(client, keys, "us-cn-second-pledge")
    headers = with_key(keys["collector"], "reused-2")
    body = evidence_body(stance="supports")
    first = client.post(f"/api/v1/pledges/{P1}/evidence", json=body, headers=headers)
    assert first.status_code == 201
    other = client.post("/api/v1/pledges/us-cn-second-pledge/evidence", json=body, headers=headers)
    problem(other, 422, "Idempotency-Key")
    assert client.get("/api/v1/pledges/us-cn-second-pledge/evidence").json()["items"] == []


def test_same_key_for_another_status_is_422_and_changes_nothing(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["analyst"], "status-2")
    first = client.post(
        f"/api/v1/pledges/{P1}/status",
        json={"status": "in_progress", "reason": "r"},
        headers=headers,
    )
    assert first.status_code == 201
    other = client.post(
        f"/api/v1/pledges/{P1}/status", json={"status": "stalled", "reason": "r"}, headers=headers
    )
    problem(other, 422, "Idempotency-Key")
    assert [c["to_status"] for c in history(client)] == ["not_yet_rated", "in_progress"]


# --- scope: per API key -----------------------------------------------------------------------


def test_keys_are_scoped_per_api_key(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = post_evidence(client, with_key(keys["collector"], "shared"), 1)
    # The same Idempotency-Key from another API key, with another body: independent, not 422.
    other = post_evidence(client, with_key(keys["analyst"], "shared"), 2)
    assert (first.status_code, other.status_code) == (201, 201)
    assert REPLAYED not in other.headers
    assert other.json()["id"] != first.json()["id"]
    # The same body from another key runs for real (the item is known: 200), no replay.
    third = post_evidence(client, with_key(keys["admin"], "shared"), 1)
    assert third.status_code == 200
    assert REPLAYED not in third.headers
    # Each key still replays its own first answer.
    assert_replay_of(post_evidence(client, with_key(keys["collector"], "shared"), 1), first)
    assert_replay_of(post_evidence(client, with_key(keys["analyst"], "shared"), 2), other)
    assert len({r.scope for r in records(client_database(client))}) == 3


def test_anonymous_and_keyed_requests_do_not_share_keys(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    refused = post_evidence(client, {"Idempotency-Key": "anon"})
    problem(refused, 401)
    accepted = post_evidence(client, with_key(keys["collector"], "anon"))
    assert accepted.status_code == 201
    assert REPLAYED not in accepted.headers


# --- in progress ------------------------------------------------------------------------------


def _mark_in_progress(database: Database, key: str, created_at: datetime) -> None:
    with database.transaction() as session:
        changed = session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(
                state="in_progress",
                response_status=None,
                response_body=None,
                response_headers=None,
                created_at=created_at,
            )
        ).rowcount  # type: ignore[attr-defined]
        assert changed == 1


def test_a_key_still_in_progress_is_409(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "slow-1")
    first = post_evidence(client, headers)
    assert first.status_code == 201
    _mark_in_progress(database, "slow-1", clock.now())
    busy = post_evidence(client, headers)
    found = problem(busy, 409)
    assert "progress" in found["title"].lower() or "running" in found["detail"]
    assert int(busy.headers["retry-after"]) >= 1
    assert REPLAYED not in busy.headers
    # Still one item and one link: the blocked retry did nothing.
    assert len(client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"]) == 1


def test_an_inserted_in_progress_record_blocks_its_key(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    raw = json.dumps(evidence_body(stance="supports")).encode()
    path = f"/api/v1/pledges/{P1}/evidence"
    digest = hashlib.sha256()
    for part in ("POST", path, ""):
        digest.update(part.encode() + b"\0")
    digest.update(raw)
    with database.transaction() as session:
        session.add(
            IdempotencyRecord(
                scope=scope_of("collector"),
                key="running-1",
                request_hash=digest.hexdigest(),
                state="in_progress",
                created_at=clock.now() - timedelta(seconds=5),
            )
        )
    headers = {**with_key(keys["collector"], "running-1"), "Content-Type": "application/json"}
    busy = client.post(path, content=raw, headers=headers)
    problem(busy, 409)
    assert client.get(f"{path}").json()["items"] == []
    # Another API key with the same Idempotency-Key is not blocked.
    other = {**with_key(keys["analyst"], "running-1"), "Content-Type": "application/json"}
    assert client.post(path, content=raw, headers=other).status_code == 201


def test_a_different_body_while_in_progress_is_422(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    with database.transaction() as session:
        session.add(
            IdempotencyRecord(
                scope=scope_of("collector"),
                key="running-2",
                request_hash="0" * 64,
                state="in_progress",
                created_at=clock.now(),
            )
        )
    response = post_evidence(client, with_key(keys["collector"], "running-2"))
    problem(response, 422, "Idempotency-Key")
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []


def test_once_done_the_blocked_key_replays(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "slow-2")
    first = post_evidence(client, headers)
    (record,) = records(database)
    _mark_in_progress(database, "slow-2", clock.now())
    assert post_evidence(client, headers).status_code == 409
    with database.transaction() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "slow-2")
            .values(
                state="done",
                response_status=record.response_status,
                response_body=record.response_body,
                response_headers=record.response_headers,
            )
        )
    assert_replay_of(post_evidence(client, headers), first)


def test_an_abandoned_in_progress_key_is_taken_over(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    """A first request whose process died leaves ``in_progress`` forever; a retry may run."""
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "dead-1")
    first = post_evidence(client, headers)
    assert first.status_code == 201
    _mark_in_progress(database, "dead-1", clock.now() - timedelta(minutes=10))
    retry = post_evidence(client, headers)
    assert retry.status_code == 200  # ran again: the item already existed
    assert REPLAYED not in retry.headers
    assert retry.json()["id"] == first.json()["id"]
    (record,) = records(database)
    assert record.state == "done"
    assert record.response_status == 200
    assert_replay_of(post_evidence(client, headers), retry)


# --- expiry -----------------------------------------------------------------------------------


def test_keys_are_kept_for_24_hours(client: TestClient, keys: Keys, clock: FrozenClock) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "day-1")
    first = post_evidence(client, headers, 1)
    clock.advance(timedelta(hours=23, minutes=59))
    assert_replay_of(post_evidence(client, headers, 1), first)
    problem(post_evidence(client, headers, 2), 422, "Idempotency-Key")


def test_a_key_older_than_24_hours_can_be_reused(
    client: TestClient, keys: Keys, clock: FrozenClock, database: Database
) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "day-2")
    first = post_evidence(client, headers, 1)
    assert first.status_code == 201
    clock.advance(timedelta(hours=24, seconds=1))
    reused = post_evidence(client, headers, 2)
    assert reused.status_code == 201, reused.text
    assert REPLAYED not in reused.headers
    assert reused.json()["id"] != first.json()["id"]
    assert_replay_of(post_evidence(client, headers, 2), reused)
    with database.transaction(write=False) as session:
        count = session.scalar(
            select(func.count())
            .select_from(IdempotencyRecord)
            .where(IdempotencyRecord.key == "day-2")
        )
    assert count == 1


def test_the_same_body_after_expiry_runs_again(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    headers = with_key(keys["collector"], "day-3")
    first = post_evidence(client, headers)
    assert first.status_code == 201
    clock.advance(timedelta(days=2))
    again = post_evidence(client, headers)
    assert again.status_code == 200  # executed: the item is known now
    assert REPLAYED not in again.headers


def test_an_inserted_old_record_is_expired(
    client: TestClient, keys: Keys, database: Database, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    with database.transaction() as session:
        session.add(
            IdempotencyRecord(
                scope=scope_of("collector"),
                key="old-1",
                request_hash="f" * 64,
                state="done",
                response_status=201,
                response_headers=[["content-type", "application/json"]],
                response_body=b'{"stale": true}',
                created_at=clock.now() - timedelta(hours=25),
            )
        )
        session.add(
            IdempotencyRecord(
                scope=scope_of("collector"),
                key="old-2",
                request_hash="f" * 64,
                state="in_progress",
                created_at=clock.now() - timedelta(days=3),
            )
        )
    for key in ("old-1", "old-2"):
        response = post_evidence(client, with_key(keys["collector"], key), int(key[-1]))
        assert response.status_code == 201, response.text
        assert REPLAYED not in response.headers
        assert "stale" not in response.json()
    assert len(client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"]) == 2


# --- the key itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "tab\tin"])
def test_a_malformed_key_is_422(client: TestClient, keys: Keys, key: str) -> None:
    make_pledge(client, keys)
    headers: dict[str, str | bytes] = {
        **keys["collector"],
        "Idempotency-Key": key.encode("latin-1"),
    }
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_body(stance="supports"),
        headers=headers,
    )
    problem(response, 422, "Idempotency-Key")
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []


def test_a_key_of_255_printable_characters_is_fine(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    key = ("abc-XYZ_0.9:/+=~" * 20)[:255]
    headers = with_key(keys["collector"], key)
    first = post_evidence(client, headers)
    assert first.status_code == 201, first.text
    assert_replay_of(post_evidence(client, headers), first)


# --- settled with the effect, before the answer leaves -----------------------------------------


def test_an_anonymous_post_with_a_key_is_401_and_keeps_nothing(
    client: TestClient, keys: Keys, database: Database
) -> None:
    make_pledge(client, keys)
    problem(post_evidence(client, {"Idempotency-Key": "anon-1"}), 401)
    unknown = {"Authorization": "Bearer pw_not-a-key", "Idempotency-Key": "anon-1"}
    problem(post_evidence(client, unknown), 401)
    assert records(database) == []
    # Nothing was claimed: the key is still free for the request made with a valid key.
    assert post_evidence(client, with_key(keys["collector"], "anon-1")).status_code == 201


def test_a_forbidden_answer_to_a_known_key_is_kept_and_replayed(
    client: TestClient, keys: Keys, database: Database
) -> None:
    """An authenticated 4xx changed nothing, and is kept like any answer (README: Retries)."""
    make_pledge(client, keys)
    headers = with_key(keys["viewer"], "viewer-1")
    first = post_evidence(client, headers)
    problem(first, 403)
    (record,) = records(database)
    assert (record.scope, record.state, record.response_status) == (scope_of("viewer"), "done", 403)
    assert_replay_of(post_evidence(client, headers), first)
    problem(post_evidence(client, headers, 2), 422, "Idempotency-Key")


def test_a_server_error_is_not_kept_and_its_retry_runs(
    client: TestClient, keys: Keys, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pledge(client, keys)
    original = evidence_service.add_evidence

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(evidence_service, "add_evidence", original)
        raise RuntimeError("the first attempt breaks")

    monkeypatch.setattr(evidence_service, "add_evidence", fail_once)
    headers = with_key(keys["collector"], "broken-1")
    assert post_evidence(client, headers).status_code == 500
    assert records(database) == []
    retry = post_evidence(client, headers)
    assert retry.status_code == 201, retry.text
    assert REPLAYED not in retry.headers


def test_an_answer_that_cannot_be_committed_is_a_503_and_changes_nothing(
    client: TestClient, keys: Keys, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 201 is never sent for an effect that did not commit with its key's answer."""
    make_pledge(client, keys)
    original = idempotency_service.settle

    def settle_then_fail(session: Session, *args: Any, **kwargs: Any) -> None:
        original(session, *args, **kwargs)
        session.execute(text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(idempotency_service, "settle", settle_then_fail)
    headers = with_key(keys["collector"], "unsaved-1")
    failed = post_evidence(client, headers)
    problem(failed, 503)
    assert int(failed.headers["retry-after"]) >= 1
    assert records(database) == []
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []
    monkeypatch.setattr(idempotency_service, "settle", original)
    retry = post_evidence(client, headers)
    assert retry.status_code == 201, retry.text
    assert_replay_of(post_evidence(client, headers), retry)


class CountingGates(DatabaseGates):
    """Gates that note how many write admissions are held at once (reads are left out: the
    app's own pollers read in the background)."""

    def __init__(self, inner: DatabaseGates) -> None:
        self._inner = inner
        self.held = 0
        self.most = 0

    @asynccontextmanager
    async def admit(self, *, write: bool, background: bool = False) -> AsyncIterator[None]:
        if not write:
            async with self._inner.admit(write=write, background=background):
                yield
            return
        async with self._inner.admit(write=write, background=background):
            self.held += 1
            self.most = max(self.most, self.held)
            try:
                yield
            finally:
                self.held -= 1


def test_the_admission_is_held_until_the_commit_and_no_second_is_taken(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pledge(client, keys)
    app_state = client.app.state  # type: ignore[attr-defined]
    gates = CountingGates(app_state.gates)
    monkeypatch.setattr(app_state, "gates", gates)
    held_at_settle: list[int] = []
    original = idempotency_service.settle

    def noting_settle(*args: Any, **kwargs: Any) -> None:
        held_at_settle.append(gates.held)
        original(*args, **kwargs)

    monkeypatch.setattr(idempotency_service, "settle", noting_settle)
    created = post_evidence(client, with_key(keys["collector"], "gated-1"))
    assert created.status_code == 201
    assert_replay_of(post_evidence(client, with_key(keys["collector"], "gated-1")), created)
    # A rolled-back 4xx is kept in a short transaction of its own, admitted after the first.
    problem(post_evidence(client, with_key(keys["viewer"], "gated-2")), 403)
    assert held_at_settle == [1, 1]
    assert gates.most == 1
    assert gates.held == 0


def test_a_retry_while_the_first_request_runs(
    client: TestClient, keys: Keys, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL answers 409 at once; SQLite's writers take turns, so the retry waits for
    the first request and replays it. Either way it never runs a second time."""
    make_pledge(client, keys)
    running, finish = threading.Event(), threading.Event()
    original = evidence_service.add_evidence

    def held_open(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(evidence_service, "add_evidence", original)
        running.set()
        assert finish.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(evidence_service, "add_evidence", held_open)
    headers = with_key(keys["collector"], "racing-1")
    with ThreadPoolExecutor(2) as pool:
        first_call = pool.submit(post_evidence, client, headers)
        assert running.wait(30)
        if backend == "postgresql":
            busy = post_evidence(client, headers)
            problem(busy, 409)
            assert busy.headers["retry-after"] == "1"
            finish.set()
            first = first_call.result()
            retry = post_evidence(client, headers)
        else:
            retry_call = pool.submit(post_evidence, client, headers)
            finish.set()
            first, retry = first_call.result(), retry_call.result()
    assert first.status_code == 201, first.text
    assert_replay_of(retry, first)
    assert len(client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"]) == 1


def test_a_retry_with_the_rotated_secret_of_the_same_key_replays(
    client: TestClient, keys: Keys, database: Database
) -> None:
    """Keys are kept per principal (the key's name), not per secret: rotation keeps them."""
    make_pledge(client, keys)
    first = post_evidence(client, with_key(keys["collector"], "rotated-1"))
    assert first.status_code == 201
    rotated = "pw_rotated-secret-of-the-collector"
    with database.transaction() as session:
        session.execute(
            update(ApiKey).where(ApiKey.name == "collector").values(key_hash=hash_key(rotated))
        )
    headers = with_key({"Authorization": f"Bearer {rotated}"}, "rotated-1")
    assert_replay_of(post_evidence(client, headers), first)


class RefusingGates(DatabaseGates):
    """Gates that refuse every write admission, as busy gates do under overload."""

    def __init__(self, inner: DatabaseGates) -> None:
        self._inner = inner

    @asynccontextmanager
    async def admit(self, *, write: bool, background: bool = False) -> AsyncIterator[None]:
        if write:
            raise DatabaseBusy("the database is busy", retry_after_seconds=2)
        async with self._inner.admit(write=write, background=background):
            yield


def test_a_refused_admission_answers_the_refusal_and_keeps_nothing(
    client: TestClient, keys: Keys, database: Database
) -> None:
    make_pledge(client, keys)
    app_state = client.app.state  # type: ignore[attr-defined]
    gates = app_state.gates
    app_state.gates = RefusingGates(gates)
    try:
        headers = with_key(keys["collector"], "refused-1")
        refused = post_evidence(client, headers)
    finally:
        app_state.gates = gates
    problem(refused, 503)
    assert refused.headers["retry-after"] == "2"
    assert records(database) == []
    assert post_evidence(client, headers).status_code == 201


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/keys", {"name": "ingest-job", "role": "collector"}),
        # An address needs no DNS: the webhook's target is checked to be public at creation.
        ("/api/v1/webhooks", {"url": "https://8.8.8.8/hooks/pledgewatch"}),
    ],
)
def test_an_answer_holding_a_secret_is_never_kept_and_its_retry_says_where_the_result_is(
    client: TestClient, keys: Keys, database: Database, path: str, body: dict[str, Any]
) -> None:
    listed_before = len(client.get(path, headers=keys["admin"]).json()["items"])
    headers = with_key(keys["admin"], "make-a-secret-once")
    first = client.post(path, json=body, headers=headers)
    assert first.status_code == 201, first.text
    shown = first.json()["secret"]

    stored = records(database)
    assert len(stored) == 1
    assert stored[0].response_status == 201
    assert stored[0].response_body == b""
    assert shown not in json.dumps(stored[0].response_headers)

    retry = client.post(path, json=body, headers=headers)
    assert problem(retry, 409)["type"].endswith("idempotency-answer-withheld")
    assert retry.headers["location"] == first.headers["location"]
    assert shown not in retry.text
    # One effect: the retry made no second key or subscription.
    assert len(client.get(path, headers=keys["admin"]).json()["items"]) == listed_before + 1
