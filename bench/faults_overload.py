"""Scenario c: ten times the sustainable request rate, then back to normal.

The load is a crowd, as a server behind a reverse proxy sees one: the server trusts the
harness as its proxy (``PLEDGEWATCH_TRUSTED_PROXIES``), and each request comes from one
of ``CROWD_ADDRESSES`` clients (``X-Forwarded-For``), each write with one of
``CROWD_KEYS`` collector keys. No client then exceeds its own rate-limit budget, so what
sheds the excess is the server's admission to the database (``503``), which is what this
scenario measures; one client over its budget is shed with ``429`` (tests/http/). After
the load, recovery is timed for a client the load never used (a new address and key).

The mix: 20 % writes (``POST /evidence``, one new item each, with a collector key), 40 %
``GET /pledges/{id}``, 40 % ``GET /pledges?limit=20`` (anonymous). First the sustainable
rate is measured: the answers per second (2xx) that 8 connections get, each sending its
next request when it has the last answer. Then the same mix is offered open-loop at ten
times that rate (a request every 1/rate seconds whether or not earlier ones were
answered; up to 2,000 connections), each request waiting up to 10 s for its answer.

Counted: answers by status, requests without an answer in 10 s, 429/503 without
``Retry-After``; the server's resident memory (VmRSS every 0.2 s); ``/healthz`` and
``/readyz`` asked every half second on their own connections (each must answer 200 within
5 s: the process is up and the database reachable throughout); and, after the load, how
long until a read and a write succeed again and the latency they then have.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faults_common import (
    API,
    Report,
    Target,
    evidence_item,
    prepare,
    rss_mib,
    say,
    scratch_database,
    serving,
)
from bench.faults_http import Answer, ClientCapped, Pool, build_request

REQUEST_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
MEASURE_CONNECTIONS = 8
CONNECTION_CAP = 2000
RECOVERY_LIMIT_S = 10.0
# Share of the offered requests that may go unanswered (timed out, refused, reset).
UNANSWERED_LIMIT = 0.01
# The crowd: at ten times the sustainable rate (a few thousand requests a second), each of
# these addresses reads a few times a second, each key writes about ten times a second:
# well within the default budgets, so none is shed for its own sake.
CROWD_ADDRESSES = 1000
CROWD_KEYS = 50
# The harness's own address, the proxy the server trusts.
PROXY = "127.0.0.1"


class Mix:
    """The requests of the mix, in a fixed order (every fifth one a write)."""

    def __init__(
        self, target: Target, host: str, keys: tuple[str, ...], addresses: tuple[str, ...]
    ) -> None:
        self.target = target
        self.host = host
        self.keys = keys
        self.addresses = addresses
        self.count = 0
        self.run = f"overload-{time.time_ns()}"

    def next(self) -> bytes:
        self.count += 1
        pledge = self.target.pledge_ids[self.count % len(self.target.pledge_ids)]
        client = {"X-Forwarded-For": self.addresses[self.count % len(self.addresses)]}
        if self.count % 5 == 0:
            body = json.dumps(evidence_item(self.run, self.count, self.target.pledge_ids))
            key = self.keys[(self.count // 5) % len(self.keys)]
            return build_request(
                "POST",
                f"{API}/evidence",
                self.host,
                body=body.encode(),
                headers={**client, "Authorization": f"Bearer {key}"},
            )
        if self.count % 2:
            return build_request("GET", f"{API}/pledges/{pledge}", self.host, headers=client)
        return build_request("GET", f"{API}/pledges?limit=20", self.host, headers=client)


def crowd_addresses(count: int, *, first: int = 0) -> tuple[str, ...]:
    """``count`` client addresses (documentation ranges are not used: 10.0.0.0/8 is)."""
    return tuple(
        f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in range(first, first + count)
    )


def collector_keys(database_url: str, count: int) -> tuple[str, ...]:
    """``count`` new collector keys, as many automated jobs would have."""
    from app.clock import SystemClock
    from app.db import Database
    from app.domain.keys.service import create_key

    database = Database(database_url, pool_size=1)
    stamp = time.time_ns()
    try:
        with database.transaction() as session:
            now = SystemClock().now()
            return tuple(
                create_key(session, name=f"crowd-{stamp}-{n}", role="collector", now=now)
                for n in range(count)
            )
    finally:
        database.dispose()


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    without_retry_after: int = 0
    timed_out: int = 0
    failed: int = 0
    capped: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, answer: Answer) -> None:
        self.statuses[answer.status] += 1
        if answer.status in (429, 503) and not answer.retry_after:
            self.without_retry_after += 1
        if 200 <= answer.status < 300:
            self.seconds.append(answer.seconds)

    @property
    def good(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def unanswered(self) -> int:
        return self.timed_out + self.failed + self.capped

    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else float("nan")


async def _one(pool: Pool, raw: bytes, tally: Tally, timeout: float = REQUEST_TIMEOUT) -> None:
    try:
        tally.add(await pool.send(raw, timeout))
    except ClientCapped:
        tally.capped += 1
    except TimeoutError:
        tally.timed_out += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        tally.failed += 1


async def closed_loop(pool: Pool, mix: Mix, seconds: float, connections: int) -> Tally:
    """Each connection sends its next request when it has its answer."""
    tally = Tally()
    deadline = asyncio.get_running_loop().time() + seconds

    async def worker() -> None:
        while asyncio.get_running_loop().time() < deadline:
            await _one(pool, mix.next(), tally)

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally


async def open_loop(
    pool: Pool, mix: Mix, rate: float, seconds: float, timeout: float
) -> tuple[Tally, int]:
    """Offer ``rate`` requests a second for ``seconds``; returns (tally, requests offered)."""
    loop = asyncio.get_running_loop()
    tally, tasks, offered = Tally(), set(), 0
    total = int(rate * seconds)
    started = loop.time()
    while offered < total:
        # Due by now: a late tick (the loop busy) sends what it owes at once.
        due = min(int((loop.time() - started) * rate), total) - offered
        for _ in range(max(due, 0)):
            task = asyncio.create_task(_one(pool, mix.next(), tally, timeout))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        offered += max(due, 0)
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks)
    return tally, offered


@dataclass
class Watch:
    """Memory and health, sampled while the load runs."""

    pid: int
    rss: list[float] = field(default_factory=list)
    probes: dict[str, Counter[str]] = field(default_factory=dict)
    stop: bool = False

    async def sample_memory(self) -> None:
        while not self.stop:
            self.rss.append(rss_mib(self.pid))
            await asyncio.sleep(0.2)

    async def probe(self, host: str, port: int) -> None:
        while not self.stop:
            for path in ("/healthz", "/readyz"):
                pool = Pool(host, port, cap=1)
                try:
                    answer = await pool.send(build_request("GET", path, host), PROBE_TIMEOUT)
                    outcome = str(answer.status)
                except TimeoutError:
                    outcome = "no answer in 5 s"
                except (OSError, asyncio.IncompleteReadError, ValueError, ClientCapped):
                    outcome = "connection failed"
                finally:
                    pool.close()
                self.probes.setdefault(path, Counter())[outcome] += 1
            await asyncio.sleep(0.5)


async def _recovery(pool: Pool, mix: Mix) -> float | None:
    """Seconds until a read and a write (in turn) by ``mix``'s client both succeed; None
    after the limit."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_LIMIT_S:
        read, write = Tally(), Tally()
        mix.count = 1  # the next request of the mix is a read of the list
        await _one(pool, mix.next(), read)
        mix.count = 4  # the next request of the mix is a write
        await _one(pool, mix.next(), write)
        if read.good and write.good:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def _scenario(
    base_url: str,
    pid: int,
    target: Target,
    *,
    keys: tuple[str, ...],
    measure: float,
    load: float,
    factor: float,
    timeout: float,
) -> dict[str, Any]:
    host_port = base_url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    pool = Pool(host, int(port), cap=CONNECTION_CAP)
    crowd_keys, fresh_key = keys[:-1], keys[-1:]
    mix = Mix(target, host_port, crowd_keys, crowd_addresses(CROWD_ADDRESSES))
    newcomer = Mix(target, host_port, fresh_key, crowd_addresses(1, first=CROWD_ADDRESSES))
    await closed_loop(pool, mix, 1.0, MEASURE_CONNECTIONS)  # warm up
    sustained = await closed_loop(pool, mix, measure, MEASURE_CONNECTIONS)
    rate = sustained.good / measure
    say(f"sustainable: {rate:,.0f} answers/s (p50 {sustained.p50_ms():.1f} ms); x{factor:g} now")
    watch = Watch(pid)
    watch.rss.append(rss_mib(pid))
    baseline_rss = watch.rss[0]
    watchers = [
        asyncio.create_task(watch.sample_memory()),
        asyncio.create_task(watch.probe(host, int(port))),
    ]
    overload, offered = await open_loop(pool, mix, rate * factor, load, timeout)
    load_end = time.monotonic()
    recovered = await _recovery(pool, newcomer)
    after = await closed_loop(pool, mix, 2.0, MEASURE_CONNECTIONS)
    watch.stop = True
    await asyncio.gather(*watchers)
    pool.close()
    return {
        "sustained": sustained,
        "rate": rate,
        "overload": overload,
        "offered": offered,
        "recovered": recovered,
        "drain_s": time.monotonic() - load_end,
        "after": after,
        "baseline_rss": baseline_rss,
        "peak_rss": max(watch.rss),
        "final_rss": rss_mib(pid),
        "probes": watch.probes,
    }


def run_overload(
    backend: str,
    work_dir: Path,
    *,
    measure_seconds: float,
    load_seconds: float,
    factor: float,
    rss_limit_mb: float,
    postgres_url: str | None,
    request_timeout: float = REQUEST_TIMEOUT,
    machine_to_itself: bool = True,
) -> Report:
    """Scenario c on ``backend``; invariants: no 5xx but 503, shed answers with Retry-After,
    at most 1 % unanswered, health probes 200 in time, RSS under the limit, recovery.

    Whether the excess is refused before clients give up depends on the server having
    its cores: with ``machine_to_itself`` false (the suite's tiny run, beside other
    tests), the unanswered share is reported but not judged; ``make faults`` judges it.
    """
    report = Report(f"c. {factor:g}x the sustainable rate for {load_seconds:g} s ({backend})")
    with scratch_database(backend, work_dir, "faults_overload", postgres_url) as url:
        target = prepare(url)
        keys = collector_keys(url, CROWD_KEYS + 1)
        with serving(
            url,
            work_dir / f"overload-{backend}.log",
            env={"PLEDGEWATCH_TRUSTED_PROXIES": PROXY},
        ) as server:
            found = asyncio.run(
                _scenario(
                    server.base_url,
                    server.pid,
                    target,
                    keys=keys,
                    measure=measure_seconds,
                    load=load_seconds,
                    factor=factor,
                    timeout=request_timeout,
                )
            )
            errors = len(server.error_lines())
    found["timeout"] = request_timeout
    found["machine_to_itself"] = machine_to_itself
    _fill(report, found, rss_limit_mb, errors)
    return report


def _fill(report: Report, found: dict[str, Any], rss_limit_mb: float, errors: int) -> None:
    figures = report.figures
    sustained: Tally = found["sustained"]
    overload: Tally = found["overload"]
    after: Tally = found["after"]
    offered: int = found["offered"]
    figures["sustainable rate (2xx answers/s, 8 connections)"] = round(found["rate"], 1)
    figures["p50 at the sustainable rate (ms)"] = round(sustained.p50_ms(), 1)
    figures["requests offered"] = offered
    figures["answers by status"] = dict(sorted(overload.statuses.items()))
    shed = overload.statuses[429] + overload.statuses[503]
    figures["shed (429 + 503)"] = f"{shed} ({shed / max(offered, 1):.0%})"
    figures["429/503 without Retry-After"] = overload.without_retry_after
    figures[f"no answer in {found['timeout']:g} s / connection failed / not sent (at cap)"] = (
        f"{overload.timed_out} / {overload.failed} / {overload.capped}"
    )
    figures["p50 of the 2xx answers under load (ms)"] = round(overload.p50_ms(), 1)
    figures["server RSS before / peak / after (MiB)"] = (
        f"{found['baseline_rss']:.0f} / {found['peak_rss']:.0f} / {found['final_rss']:.0f}"
    )
    for path, outcomes in found["probes"].items():
        figures[f"{path} during and after the load"] = dict(sorted(outcomes.items()))
    recovered = found["recovered"]
    figures["seconds until a read and a write succeed after the load"] = (
        "not within 10 s" if recovered is None else round(recovered, 2)
    )
    figures["p50 after the load (ms)"] = round(after.p50_ms(), 1)
    figures["server log lines at level error"] = errors
    unanswered = overload.unanswered
    report.check(
        not any(status >= 500 and status != 503 for status in overload.statuses),
        "5xx other than 503",
    )
    report.check(overload.without_retry_after == 0, "429/503 without Retry-After")
    if found["machine_to_itself"]:
        report.check(
            unanswered <= UNANSWERED_LIMIT * offered,
            f"{unanswered} of {offered} requests not answered (queued, not shed)",
        )
    for path, outcomes in found["probes"].items():
        report.check(set(outcomes) == {"200"}, f"{path} not 200 within 5 s throughout")
    report.check(found["peak_rss"] <= rss_limit_mb, f"RSS over {rss_limit_mb:g} MiB")
    report.check(recovered is not None and recovered <= RECOVERY_LIMIT_S, "no recovery within 10 s")
