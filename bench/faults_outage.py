"""Scenario b: PostgreSQL goes down under load and comes back; our server is not restarted.

Readers, a writer and a health prober run against one server while PostgreSQL is
stopped (``pg_ctl stop -m fast`` on a private server made for the run, or a proxy to
the shared server cut) for a few seconds and started again. Every answer is counted by
its status; meanwhile only ``503`` with ``Retry-After`` may answer a request that needs
the database, every request must be answered (no connection refused, reset or timed
out), ``/readyz`` must say 503 while the database is down and ``/healthz`` 200. Timed:
from PostgreSQL accepting connections again to the first good read, write and
``/readyz``. The writer retries each item with its key until it is stored: every item
must then be there exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.faults_common import (
    API,
    Report,
    ScenarioSkipped,
    Target,
    evidence_item,
    prepare,
    say,
    serving,
)

RECOVERY_LIMIT_S = 30.0
# As in scenario a: a key a failed request left "in progress" is taken over after this long.
STALE_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Answer:
    at: float
    kind: str  # read, write, readyz, healthz
    status: int  # 0: no answer (connection refused, reset, timed out)
    retry_after: bool


@dataclass
class Timeline:
    going_down: float = float("inf")
    down: float = float("inf")
    coming_up: float = float("inf")
    up: float = float("inf")
    answers: list[Answer] = field(default_factory=list)
    writes: int = 0
    stop: bool = False

    def note(self, kind: str, response: httpx.Response | None) -> None:
        status = 0 if response is None else response.status_code
        retry = response is not None and "retry-after" in response.headers
        self.answers.append(Answer(time.monotonic(), kind, status, retry))

    def first_good_after(self, kind: str, moment: float) -> float | None:
        for answer in self.answers:
            if answer.kind == kind and answer.at >= moment and 200 <= answer.status < 300:
                return answer.at
        return None


@contextmanager
def outage_database(
    method: str, postgres_url: str | None
) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """(the app's database URL, take the database down, bring it back)."""
    from bench.run import postgres_problem, scratch_postgres

    if method == "restart":
        from bench.faults_postgres import private_postgres

        with private_postgres() as server:
            # The whole server goes away afterwards: nothing to drop.
            admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text('CREATE DATABASE "pledgewatch_outage"'))
            admin.dispose()
            yield server.url("pledgewatch_outage"), server.stop, server.start
        return
    from bench.faults_proxy import cuttable_proxy

    problem = postgres_problem(postgres_url)
    if problem is not None:
        raise ScenarioSkipped(problem)
    assert postgres_url is not None
    with scratch_postgres(postgres_url, "pledgewatch_outage") as direct:
        target = make_url(direct)
        with cuttable_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            yield proxied.render_as_string(hide_password=False), proxy.cut, proxy.restore


async def _reader(client: httpx.AsyncClient, target: Target, timeline: Timeline) -> None:
    turn = 0
    while not timeline.stop:
        turn += 1
        pledge = target.pledge_ids[turn % len(target.pledge_ids)]
        path = f"{API}/pledges/{pledge}" if turn % 2 else f"{API}/pledges?limit=20"
        try:
            timeline.note("read", await client.get(path))
        except httpx.TransportError:
            timeline.note("read", None)
        await asyncio.sleep(0.02)


async def _writer(client: httpx.AsyncClient, target: Target, timeline: Timeline) -> None:
    """One new item at a time, each retried under its key until it is stored."""
    run = f"outage-{time.time_ns()}"
    headers = {"Authorization": f"Bearer {target.api_key}"}
    while not timeline.stop:
        body = evidence_item(run, timeline.writes, target.pledge_ids)
        key = f"{run}-{timeline.writes}"
        while True:
            try:
                response = await client.post(
                    f"{API}/evidence", json=body, headers={**headers, "Idempotency-Key": key}
                )
            except httpx.TransportError:
                timeline.note("write", None)
                await asyncio.sleep(0.2)
                continue
            timeline.note("write", response)
            if response.status_code < 300:
                break
            await asyncio.sleep(0.2)
        timeline.writes += 1
        await asyncio.sleep(0.05)


async def _prober(client: httpx.AsyncClient, timeline: Timeline) -> None:
    while not timeline.stop:
        for kind in ("readyz", "healthz"):
            try:
                timeline.note(kind, await client.get(f"/{kind}"))
            except httpx.TransportError:
                timeline.note(kind, None)
        await asyncio.sleep(0.25)


async def _through_outage(
    base_url: str,
    target: Target,
    down: Callable[[], None],
    up: Callable[[], None],
    outage_seconds: float,
) -> Timeline:
    timeline = Timeline()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        tasks = [
            asyncio.create_task(_reader(client, target, timeline)),
            asyncio.create_task(_reader(client, target, timeline)),
            asyncio.create_task(_writer(client, target, timeline)),
            asyncio.create_task(_prober(client, timeline)),
        ]
        await asyncio.sleep(2)
        timeline.going_down = time.monotonic()
        await asyncio.to_thread(down)
        timeline.down = time.monotonic()
        say(f"PostgreSQL down ({timeline.down - timeline.going_down:.1f} s to stop)")
        await asyncio.sleep(outage_seconds)
        timeline.coming_up = time.monotonic()
        await asyncio.to_thread(up)
        timeline.up = time.monotonic()
        say(f"PostgreSQL up again ({timeline.up - timeline.coming_up:.1f} s to start)")
        deadline = timeline.up + RECOVERY_LIMIT_S
        while time.monotonic() < deadline and not all(
            timeline.first_good_after(kind, timeline.up) for kind in ("read", "write", "readyz")
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        timeline.stop = True
        await asyncio.gather(*tasks)
    return timeline


def run_outage(
    work_dir: Path, *, outage_seconds: float, method: str, postgres_url: str | None
) -> Report:
    """Scenario b; invariants: only 503 with Retry-After, every request answered, /readyz
    truthful, recovery within 30 s without a restart of ours, every write stored once."""
    how = "pg_ctl stop -m fast, then start" if method == "restart" else "proxy cut, then restored"
    report = Report(f"b. PostgreSQL down {outage_seconds:g} s under load ({how})")
    with outage_database(method, postgres_url) as (url, down, up):
        target = prepare(url)
        stale = {"PLEDGEWATCH_IDEMPOTENCY_STALE_SECONDS": str(STALE_SECONDS)}
        with serving(url, work_dir / "outage.log", stale) as server:
            pid = server.pid
            timeline = asyncio.run(
                _through_outage(server.base_url, target, down, up, outage_seconds)
            )
            same_process = server.process is not None and server.process.poll() is None
            same_process = same_process and server.pid == pid and server.starts == 1
            errors = len(server.error_lines())
        stored, distinct = _stored_writes(url)
    _fill(report, timeline, same_process, stored, distinct, errors)
    return report


def _stored_writes(url: str) -> tuple[int, int]:
    from app.db import Database
    from app.domain.evidence.models import Evidence

    database = Database(url, pool_size=1)
    try:
        with database.transaction(write=False) as session:
            where = Evidence.url.startswith("https://faults.example.org/outage-")
            stored = session.scalar(select(func.count()).select_from(Evidence).where(where))
            distinct = session.scalar(select(func.count(func.distinct(Evidence.url))).where(where))
    finally:
        database.dispose()
    return int(stored or 0), int(distinct or 0)


def _fill(
    report: Report, timeline: Timeline, same_process: bool, stored: int, distinct: int, errors: int
) -> None:
    figures = report.figures
    window = [a for a in timeline.answers if timeline.going_down <= a.at < timeline.up]
    down = [a for a in timeline.answers if timeline.down <= a.at < timeline.coming_up]
    for kind in ("read", "write", "readyz", "healthz"):
        counts = Counter(a.status for a in window if a.kind == kind)
        figures[f"{kind} answers while down, by status (0: none)"] = dict(sorted(counts.items()))
    bad = [
        a for a in timeline.answers if a.status >= 500 and a.status != 503 and a.kind != "readyz"
    ]
    unanswered = [a for a in timeline.answers if a.status == 0]
    bare_503 = [a for a in timeline.answers if a.status == 503 and a.kind in ("read", "write")]
    bare_503 = [a for a in bare_503 if not a.retry_after]
    figures["5xx other than 503 (whole run)"] = len(bad)
    figures["503 without Retry-After"] = len(bare_503)
    figures["requests not answered (whole run)"] = len(unanswered)
    firsts = {kind: timeline.first_good_after(kind, timeline.up) for kind in ("read", "write")}
    firsts["readyz"] = timeline.first_good_after("readyz", timeline.up)
    for kind, moment in firsts.items():
        shown = "never" if moment is None else f"{moment - timeline.up:.2f} s"
        figures[f"first good {kind} after PostgreSQL is back"] = shown
    figures["server restarted by us"] = "no" if same_process else "YES"
    figures["writes stored / distinct / acknowledged"] = (
        f"{stored} / {distinct} / {timeline.writes}"
    )
    figures["server log lines at level error"] = errors
    report.check(not bad, "5xx other than 503")
    report.check(not bare_503, "503 without Retry-After")
    report.check(not unanswered, "requests not answered")
    report.check(
        all(a.status == 503 for a in down if a.kind == "readyz")
        and any(a.kind == "readyz" for a in down),
        "/readyz not 503 while the database was down",
    )
    report.check(
        all(a.status == 200 for a in timeline.answers if a.kind == "healthz"), "/healthz not 200"
    )
    report.check(all(moment is not None for moment in firsts.values()), "no recovery in 30 s")
    report.check(same_process, "the server had to be restarted")
    report.check(stored == distinct == timeline.writes, "writes lost or doubled")
