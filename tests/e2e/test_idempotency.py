"""Idempotency-Key against a real server: immediate retries and retries across a SIGKILL.

A retry must be answered like its first answer, byte for byte, the moment the first answer
has arrived; and a server killed at any point must leave each keyed batch either settled
with its answer (replayed on retry) or not run at all (run afresh, once).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.idempotency.models import IdempotencyRecord
from bench.server import Server, pledgewatch_server
from tests.factories import PLEDGE_ID, Keys, evidence_body, pledge_body

REPLAYED = "idempotent-replayed"
# Headers a replay must repeat exactly (the others are per answer: date, request id).
ANSWER_HEADERS = ("content-type", "location", "etag")


def same_answer(replay: httpx.Response, first: httpx.Response) -> list[str]:
    """How ``replay`` differs from a byte-for-byte replay of ``first`` (empty: it does not)."""
    differences = []
    if replay.status_code != first.status_code:
        differences.append(f"status {replay.status_code} != {first.status_code}: {replay.text}")
    if replay.content != first.content:
        differences.append(f"body {replay.content[:200]!r} != {first.content[:200]!r}")
    for name in ANSWER_HEADERS:
        if replay.headers.get(name) != first.headers.get(name):
            differences.append(f"{name} {replay.headers.get(name)} != {first.headers.get(name)}")
    if replay.headers.get(REPLAYED) != "true":
        differences.append("not marked Idempotent-Replayed")
    return differences


def linked(n: int) -> dict[str, Any]:
    return {**evidence_body(n), "links": [{"pledge_id": PLEDGE_ID, "stance": "supports"}]}


# --- (a) a retry sent the instant the first answer arrives -----------------------------------


async def _post_then_retry(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[str]:
    path = f"/api/v1/pledges/{PLEDGE_ID}/evidence"
    body = {**evidence_body(n), "stance": "supports"}
    keyed = {**headers, "Idempotency-Key": f"immediate-{n}"}
    first = await client.post(path, json=body, headers=keyed)
    retry = await client.post(path, json=body, headers=keyed)
    if first.status_code != 201:
        return [f"first answer {first.status_code}: {first.text}"]
    return [f"item {n}: {difference}" for difference in same_answer(retry, first)]


async def _clients_retrying_at_once(base: str, headers: dict[str, str], clients: int) -> list[str]:
    rounds = 6
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one_client(c: int) -> list[str]:
            found = []
            for r in range(rounds):
                found += await _post_then_retry(client, headers, c * rounds + r)
            return found

        found = await asyncio.gather(*(one_client(c) for c in range(clients)))
    return [difference for per_client in found for difference in per_client]


def test_a_retry_the_moment_the_first_answer_arrives_is_its_replay(
    live_server: str, keys: Keys, database: Database
) -> None:
    created = httpx.post(
        f"{live_server}/api/v1/pledges", json=pledge_body(), headers=keys["analyst"]
    )
    assert created.status_code == 201, created.text

    differences = asyncio.run(_clients_retrying_at_once(live_server, keys["collector"], 24))

    assert differences == [], f"{len(differences)} retries differ: {differences[:5]}"
    with database.transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Evidence)) == 24 * 6
        states = set(session.scalars(select(IdempotencyRecord.state)))
    assert states == {"done"}


# --- (b) retries across a SIGKILL ---------------------------------------------------------------

BATCHES = 10
ITEMS_PER_BATCH = 30


@dataclass
class Batch:
    key: str
    body: dict[str, Any]
    first: httpx.Response | None = None


def batches_of(round_number: int) -> list[Batch]:
    start = round_number * BATCHES * ITEMS_PER_BATCH
    return [
        Batch(
            key=f"killed-{round_number}-{b}",
            body={
                "items": [linked(start + b * ITEMS_PER_BATCH + i) for i in range(ITEMS_PER_BATCH)]
            },
        )
        for b in range(BATCHES)
    ]


@dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL: the moment ``answers`` answers are in, or (0) ``delay`` after posting."""

    answers: int
    delay: float = 0.0


async def _post_until_killed(
    server: Server, batches: list[Batch], headers: dict[str, str], kill: KillPoint
) -> None:
    """Post every batch at once and SIGKILL the server while some are in flight."""
    answered = 0
    limits = httpx.Limits(max_connections=len(batches))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:

        async def post(batch: Batch) -> None:
            nonlocal answered
            try:
                response = await client.post(
                    "/api/v1/evidence/batch",
                    json=batch.body,
                    headers={**headers, "Idempotency-Key": batch.key},
                )
            except httpx.TransportError:
                return  # killed before it answered: the retry decides what happened
            batch.first = response
            answered += 1
            if answered == kill.answers:
                server.process.kill()

        async def kill_later() -> None:
            if kill.answers == 0:
                await asyncio.sleep(kill.delay)
                server.process.kill()

        await asyncio.gather(kill_later(), *(post(batch) for batch in batches))


def _retry(base: str, batch: Batch, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{base}/api/v1/evidence/batch",
        json=batch.body,
        headers={**headers, "Idempotency-Key": batch.key},
        timeout=60,
    )


def _check_retries(base: str, batches: list[Batch], headers: dict[str, str]) -> list[str]:
    """Every retry answers like the first answer, or (no first answer) runs once afresh."""
    differences = []
    for batch in batches:
        retry = _retry(base, batch, headers)
        if batch.first is not None:
            assert batch.first.status_code == 200, batch.first.text
            differences += [f"{batch.key}: {d}" for d in same_answer(retry, batch.first)]
            continue
        assert retry.status_code == 200, retry.text
        # Its items are in no other batch: whether it is a replay (the first committed) or a
        # first run (it did not), every item was created by it, once.
        assert {result["status"] for result in retry.json()["results"]} == {201}, retry.text
        # From now on the retry's answer is the one that is kept.
        differences += [
            f"{batch.key}: {d}" for d in same_answer(_retry(base, batch, headers), retry)
        ]
    return differences


def ledger_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "ledger", "verify"],
        env={**os.environ, "PLEDGEWATCH_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_batch_retried_after_a_sigkill_is_its_first_answer_or_runs_once(
    db_url: str, keys: Keys, database: Database, tmp_path: Path
) -> None:
    chance = random.Random()
    rounds = 3
    for round_number in range(rounds):
        batches = batches_of(round_number)
        log = tmp_path / f"server-{round_number}.log"
        with pledgewatch_server(db_url, log) as server:
            if round_number == 0:
                created = httpx.post(
                    f"{server.base_url}/api/v1/pledges", json=pledge_body(), headers=keys["analyst"]
                )
                assert created.status_code == 201, created.text
            kill = KillPoint(chance.randint(0, BATCHES // 2), delay=chance.uniform(0.02, 0.3))
            asyncio.run(_post_until_killed(server, batches, keys["collector"], kill))
            assert server.process.wait(timeout=10) == -signal.SIGKILL
        with pledgewatch_server(db_url, tmp_path / f"restarted-{round_number}.log") as server:
            differences = _check_retries(server.base_url, batches, keys["collector"])
        assert differences == [], f"round {round_number}, killed at {kill}: {differences[:5]}"

    total = rounds * BATCHES * ITEMS_PER_BATCH
    with database.transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Evidence)) == total
        assert session.scalar(select(func.count()).select_from(EvidenceLink)) == total
    verified = ledger_verify(db_url)
    assert verified.returncode == 0, verified.stderr
    assert "ledger ok" in verified.stderr
