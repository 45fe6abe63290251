"""Scenario a: evidence posted in batches through SIGKILLs of the server, exactly once.

Several clients post every item in batches, each batch under its own
``Idempotency-Key``; on any failure (no answer, 409 in progress, 429, 5xx) they retry
the same bytes with the same key until the batch is answered. Meanwhile the server is
SIGKILLed at random moments (after a random share of the batches, plus a random delay
so that the kill lands inside a request) and started again on its port. Each client
replays every batch once the moment it has its answer, and every batch is replayed once
more at the end (after the kills).

Counted: items missing from the database (lost), items or ledger entries there twice
(doubled), answers to a batch that differ from the first answer its client saw
(compared byte for byte), batches whose answer says an item was "already known"
(the batch ran twice: a retry was not answered with the first execution's answer), and
``pledgewatch ledger verify`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

from bench.faults_common import (
    API,
    Report,
    RestartableServer,
    evidence_item,
    ledger_verified,
    prepare,
    say,
    scratch_database,
)

# Keys held "in progress" by a killed process are taken over by a retry after this long
# (the service's default is 120 s, which would only make the run wait).
STALE_SECONDS = 10
RETRYABLE = frozenset({409, 429, 503})
# A batch not answered after this many tries is given up on (and counted).
MAX_ATTEMPTS = 100


@dataclass
class Batch:
    key: str
    body: bytes
    urls: list[str]
    first: bytes | None = None
    first_status: int | None = None
    attempts: int = 0


@dataclass
class Tally:
    """What the clients saw, over every batch."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    retries: int = 0
    replays: int = 0
    differing: list[str] = field(default_factory=list)
    differing_statuses: Counter[int] = field(default_factory=Counter)
    rerun_batches: set[str] = field(default_factory=set)
    refused_items: int = 0
    settled: int = 0
    given_up: int = 0


def make_batches(run: str, items: int, size: int, pledge_ids: tuple[str, ...]) -> list[Batch]:
    batches = []
    for start in range(0, items, size):
        numbers = range(start, min(start + size, items))
        body = [evidence_item(run, number, pledge_ids) for number in numbers]
        batches.append(
            Batch(
                key=f"faults-{run}-{start // size}",
                body=json.dumps({"items": body}).encode(),
                urls=[item["url"] for item in body],
            )
        )
    return batches


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "0.2")), 0.05), 5.0)
    except ValueError:
        return 0.5


async def post_until_answered(
    client: httpx.AsyncClient, batch: Batch, tally: Tally, *, replay: bool
) -> None:
    """Post ``batch`` until it is answered; compare the answer with its first one."""
    backoff = 0.1
    for _ in range(MAX_ATTEMPTS):
        batch.attempts += 1
        try:
            response = await client.post(
                f"{API}/evidence/batch", content=batch.body, headers={"Idempotency-Key": batch.key}
            )
        except httpx.TransportError:
            tally.transport_errors += 1
            tally.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            continue
        tally.statuses[response.status_code] += 1
        if response.status_code in RETRYABLE or response.status_code >= 500:
            if batch.first is not None and response.status_code == 409:
                # Answered already, yet "in progress": not the first answer replayed.
                tally.differing.append(f"{batch.key}: 409 after a {batch.first_status}")
                tally.differing_statuses[409] += 1
            tally.retries += 1
            await asyncio.sleep(_retry_after(response))
            continue
        _settle(batch, response, tally, replay=replay)
        return
    tally.given_up += 1


def _settle(batch: Batch, response: httpx.Response, tally: Tally, *, replay: bool) -> None:
    if batch.first is None:
        batch.first, batch.first_status = response.content, response.status_code
        tally.settled += 1
        if response.status_code == 200:
            if _calls_known(response):
                tally.rerun_batches.add(batch.key)
            results = response.json()["results"]
            tally.refused_items += sum(result["status"] == 422 for result in results)
        else:
            tally.refused_items += len(batch.urls)
        return
    if replay:
        tally.replays += 1
    if response.status_code != batch.first_status or response.content != batch.first:
        tally.differing.append(f"{batch.key}: {response.status_code} {response.content[:120]!r}")
        tally.differing_statuses[response.status_code] += 1
        if response.status_code == 200 and _calls_known(response):
            tally.rerun_batches.add(batch.key)


def _calls_known(response: httpx.Response) -> bool:
    """The batch's answer calls one of its (new) items "already known": it ran again."""
    return any(result["status"] == 200 for result in response.json()["results"])


async def client_loop(
    base_url: str,
    api_key: str,
    queue: asyncio.Queue[Batch],
    tally: Tally,
    done: list[int],
    answered: asyncio.Event,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        while not queue.empty():
            batch = queue.get_nowait()
            await post_until_answered(client, batch, tally, replay=False)
            answered.set()
            # A client that retries the moment it has the answer must get that answer again.
            await post_until_answered(client, batch, tally, replay=True)
            done[0] += 1


async def killer(
    server: RestartableServer,
    kill_at: list[int],
    done: list[int],
    answered: asyncio.Event,
    rng: random.Random,
) -> list[float]:
    """SIGKILL the server once ``done`` passes each of ``kill_at``; start it again.

    Every other kill lands within 5 ms of an answer reaching a client: the moment when
    the answer is out but the service may not have settled its key yet. The others land
    at a random moment up to 300 ms later, most likely inside a batch's transaction.
    """
    downtimes = []
    for number, threshold in enumerate(kill_at):
        while done[0] < threshold:
            await asyncio.sleep(0.01)
        answered.clear()
        with contextlib.suppress(TimeoutError):  # the clients may have finished already
            await asyncio.wait_for(answered.wait(), timeout=2)
        await asyncio.sleep(rng.uniform(0, 0.005) if number % 2 == 0 else rng.uniform(0, 0.3))
        killed = time.monotonic()
        await asyncio.to_thread(server.sigkill)
        await asyncio.to_thread(server.start)
        downtimes.append(time.monotonic() - killed)
        say(f"SIGKILL after {done[0]} batches; serving again after {downtimes[-1]:.1f} s")
    return downtimes


def kill_points(batches: int, kills: int, rng: random.Random) -> list[int]:
    """One moment (a number of batches done) in each of ``kills`` equal stretches of the run,
    leaving out its first and last tenths."""
    start, end = batches // 10, max(batches * 9 // 10, batches // 10 + kills)
    stretch = (end - start) / max(kills, 1)
    return [int(start + stretch * number + rng.uniform(0, stretch)) for number in range(kills)]


async def drive(
    server: RestartableServer,
    api_key: str,
    batches: list[Batch],
    *,
    clients: int,
    kills: int,
    rng: random.Random,
) -> tuple[Tally, list[float]]:
    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    tally, done, answered = Tally(), [0], asyncio.Event()
    killing = asyncio.create_task(
        killer(server, kill_points(len(batches), kills, rng), done, answered, rng)
    )
    await asyncio.gather(
        *(
            client_loop(server.base_url, api_key, queue, tally, done, answered)
            for _ in range(clients)
        )
    )
    downtimes = await killing
    # Every batch once more, after every kill: still its first answer?
    for batch in batches:
        queue.put_nowait(batch)

    async def replay_all() -> None:
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, timeout=60
        ) as client:
            while not queue.empty():
                await post_until_answered(client, queue.get_nowait(), tally, replay=True)

    await asyncio.gather(*(replay_all() for _ in range(clients)))
    return tally, downtimes


def stored_counts(database_url: str, urls: list[str]) -> tuple[int, int, int]:
    """(expected items missing, items stored more than once, surplus ledger entries)."""
    from app.db import Database
    from app.domain.evidence.models import Evidence
    from app.domain.ledger.models import LedgerEntry

    prefix = urls[0].rsplit("/", 1)[0] + "/"
    database = Database(database_url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            rows = session.execute(
                select(Evidence.id, Evidence.url).where(Evidence.url.startswith(prefix))
            ).all()
            subjects = {f"evidence:{row.id}" for row in rows}
            entries = Counter(
                session.scalars(
                    select(LedgerEntry.subject).where(LedgerEntry.kind == "evidence.added")
                )
            )
    finally:
        database.dispose()
    stored = Counter(row.url for row in rows)
    lost = len(set(urls) - set(stored))
    doubled = sum(count - 1 for count in stored.values() if count > 1)
    surplus = sum(entries[s] - 1 for s in subjects if entries[s] > 1)
    return lost, doubled, surplus


def run_kills(
    backend: str,
    work_dir: Path,
    *,
    items: int,
    batch_size: int,
    clients: int,
    kills: int,
    seed: int,
    postgres_url: str | None,
) -> Report:
    """Scenario a on ``backend``; the report's invariants: 0 lost, 0 doubled, 0 differing,
    0 batches run twice, ledger verify ok."""
    report = Report(
        f"a. {items:,} items in batches of {batch_size} through {kills} SIGKILLs ({backend})"
    )
    rng = random.Random(seed)  # noqa: S311 - which moment to kill, not a secret
    with scratch_database(backend, work_dir, "faults_kills", postgres_url) as url:
        target = prepare(url)
        run = f"{seed}-{time.strftime('%H%M%S')}"
        batches = make_batches(run, items, batch_size, target.pledge_ids)
        server = RestartableServer(
            url,
            work_dir / f"kills-{backend}.log",
            {"PLEDGEWATCH_IDEMPOTENCY_STALE_SECONDS": str(STALE_SECONDS)},
        )
        server.start()
        started = time.monotonic()
        try:
            tally, downtimes = asyncio.run(
                drive(server, target.api_key, batches, clients=clients, kills=kills, rng=rng)
            )
        finally:
            server.stop()
        elapsed = time.monotonic() - started
        urls = [url for batch in batches for url in batch.urls]
        lost, doubled, surplus = stored_counts(url, urls)
        verified, verdict = ledger_verified(url)
    _fill(report, tally, downtimes, elapsed, lost, doubled, surplus, verified, verdict)
    report.figures["server log lines at level error"] = len(server.error_lines())
    return report


def _fill(
    report: Report,
    tally: Tally,
    downtimes: list[float],
    elapsed: float,
    lost: int,
    doubled: int,
    surplus: int,
    verified: bool,
    verdict: str,
) -> None:
    figures = report.figures
    figures["seconds (posting, kills, restarts, replays)"] = round(elapsed, 1)
    figures["kills; seconds each until serving again"] = f"{len(downtimes)}; " + ", ".join(
        f"{d:.1f}" for d in downtimes
    )
    figures["answers by status"] = dict(sorted(tally.statuses.items()))
    figures["requests without an answer (connection lost)"] = tally.transport_errors
    figures["retries"] = tally.retries
    figures["replays of answered batches"] = tally.replays
    figures["lost items"] = lost
    figures["doubled items"] = doubled
    figures["doubled ledger entries"] = surplus
    batches = {entry.split(":", 1)[0] for entry in tally.differing}
    figures["answers differing from the first (batches)"] = (
        f"{len(tally.differing)} ({len(batches)})"
    )
    figures["differing answers by status"] = dict(sorted(tally.differing_statuses.items()))
    figures["batches run twice (answered 'already known')"] = len(tally.rerun_batches)
    figures["items refused"] = tally.refused_items
    figures[f"batches unanswered after {MAX_ATTEMPTS} tries"] = tally.given_up
    figures["ledger verify"] = verdict
    if tally.differing:
        figures["first differing answers"] = "; ".join(sorted(set(tally.differing))[:3])
    report.check(lost == 0, "items lost")
    report.check(doubled == 0 and surplus == 0, "items doubled")
    report.check(not tally.differing, "retries answered unlike their first answer")
    report.check(not tally.rerun_batches, "batches ran twice")
    report.check(tally.refused_items == 0, "items refused")
    report.check(tally.given_up == 0, "batches never answered")
    report.check(verified, "ledger verify not ok")
    report.check(
        not any(status >= 500 and status != 503 for status in tally.statuses), "5xx other than 503"
    )
