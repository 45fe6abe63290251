"""Run every target of issue 5 and print one table (``python -m bench --help``).

Each target is a ratio of two figures measured side by side in this run on this
machine: absolute figures on a shared machine are noise, ratios much less so. The
servers run as users run them (``pledgewatch serve``, one worker, in their own
processes, scheduler off) and are driven over loopback by wrk from another process.

The exit status is 0 whenever the benchmark ran, whatever the ratios (``--strict``
makes a failed target exit 1): CI uses ``make bench-quick`` as a smoke check only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import coherence, fanout, ingest, load, peer
from bench.generate import SERVICE_START, Size, fingerprint, generate
from bench.load import Load, LoadResult
from bench.report import Row, at_least, at_most, not_measured, render, rps
from bench.server import Server, pledgewatch_server

API = "/api/v1"
RSS_LIMIT_MB = 250.0
COHERENCE_LIMIT_S = 1.0
# Target 9: from a change's commit to the last of the open /events streams receiving it.
FANOUT_LIMIT_S = 1.0
# Target 10's dashboards, behind one proxy (each sends a few requests a second in the run).
RATE_LIMIT_CLIENTS = 1000
# An as_of answer slower than this is not load-tested: one timed request stands for it.
SLOW_REQUEST_S = 2.0
# What ``--only`` may choose (scaling and peer need main's figures).
PARTS = frozenset({"main", "scaling", "peer", "postgres", "fanout"})


@dataclass(frozen=True, slots=True)
class Plan:
    """How big and how long: ``full`` is the issue's size, ``quick`` a tenth of its data."""

    name: str
    main: Size
    # Target 3's sizes, smallest first; the last one is ``main``.
    scaling: tuple[Size, ...]
    postgres: Size
    seconds: float
    warmup: float
    connections: int
    ingest_batches: int
    # The longest one /status?as_of= request is waited for.
    probe_timeout: float
    # Target 9: open /events streams, and status changes timed on all of them.
    fanout_streams: int = 1000
    fanout_changes: int = 10


PLANS = {
    "full": Plan(
        name="full",
        main=Size(1000, 1_000_000, 100_000),
        scaling=(
            Size(1000, 10_000, 1_000),
            Size(1000, 100_000, 10_000),
            Size(1000, 1_000_000, 100_000),
        ),
        postgres=Size(1000, 100_000, 10_000),
        seconds=10,
        warmup=2,
        connections=32,
        ingest_batches=10,
        probe_timeout=120,
    ),
    "quick": Plan(
        name="quick",
        main=Size(1000, 100_000, 10_000),
        scaling=(Size(1000, 1_000, 1_000), Size(1000, 100_000, 10_000)),
        postgres=Size(1000, 1_000, 1_000),
        seconds=2,
        warmup=1,
        connections=32,
        ingest_batches=1,
        probe_timeout=3,
        fanout_changes=3,
    ),
}


@dataclass
class Figures:
    """Everything measured, kept for the JSON results file and docs/PERFORMANCE.md."""

    plan: str
    started: str
    machine: dict[str, str] = field(default_factory=dict)
    loads: dict[str, dict[str, float]] = field(default_factory=dict)
    scaling: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict)

    def keep(self, name: str, result: LoadResult) -> LoadResult:
        self.loads[name] = {
            "rps": round(result.rps, 1),
            "requests": result.requests,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
        }
        return result


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One run of the benchmark: its data, its servers and its figures."""

    def __init__(
        self,
        plan: Plan,
        *,
        data_dir: Path,
        datasette_venv: Path,
        postgres_url: str | None,
    ) -> None:
        self.plan = plan
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.datasette_venv = datasette_venv
        self.postgres_url = postgres_url
        self.figures = Figures(plan=plan.name, started=datetime.now(UTC).isoformat())
        self.rows: dict[str, Row] = {}
        self.peak_rss_mb = 0.0
        # Measured on the main server, reused by targets 3 and 5.
        self.main_status_rps = 0.0
        self.main_as_of_latency = LoadResult(0, 0.0, 0, 0, 0.0, 0.0, 0.0)
        self.main_as_of = LoadResult(0, 0.0, 0, 0, 0.0, 0.0, 0.0)
        # as_of answers too slow to load-test, by database size: seconds for one.
        self.slow_as_of: dict[str, float] = {}

    # --- data --------------------------------------------------------------------------------

    def pristine(self, size: Size) -> Path:
        """The generated database of ``size``, made once and kept (keyed by the generator)."""
        path = self.data_dir / f"{size.label}-{fingerprint()}.db"
        if not path.exists():
            say(f"generating {size.label} (kept in {path.parent} for later runs)")
            partial = path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            report = generate(f"sqlite:///{partial}", size)
            partial.rename(path)
            say(f"generated {size.label} in {report.seconds:.0f} s: {report.ledger_length} entries")
        return path

    def work_copy(self, size: Size) -> Path:
        """A fresh copy of the generated database that this run may write to."""
        source = self.pristine(size)
        target = self.data_dir / f"work-{size.label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(source, target)
        return target

    # --- measuring ---------------------------------------------------------------------------

    def measure(self, name: str, target: Load, *, connections: int | None = None) -> LoadResult:
        result = load.run(
            target, seconds=self.plan.seconds, connections=connections or self.plan.connections
        )
        say(f"{name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms")
        return self.figures.keep(name, result)

    def pair(
        self, names: tuple[str, str], loads: tuple[Load, Load]
    ) -> tuple[LoadResult, LoadResult]:
        """Two loads measured in turns (A B A B), so that drift on the machine hits both."""
        half = max(self.plan.seconds / 2, 1)
        runs: dict[int, list[LoadResult]] = {0: [], 1: []}
        for _ in range(2):
            for index in (0, 1):
                runs[index].append(
                    load.run(loads[index], seconds=half, connections=self.plan.connections)
                )
        results = []
        for index in (0, 1):
            merged = _sequential(runs[index])
            say(f"{names[index]}: {merged.rps:,.0f} req/s, p50 {merged.p50_ms:.2f} ms")
            results.append(self.figures.keep(names[index], merged))
        return results[0], results[1]

    def note_rss(self, server: Server) -> None:
        """Keep the server's peak resident memory so far (target 7 is the highest of all)."""
        peak = server.peak_rss_mib()
        self.peak_rss_mb = max(self.peak_rss_mb, peak)
        peaks: dict[str, float] = self.figures.other.setdefault("peak_rss_mb", {})
        name = server.log_path.stem
        peaks[name] = round(max(peaks.get(name, 0.0), peak), 1)

    def warm(self, *loads: Load) -> None:
        for target in loads:
            load.run(target, seconds=self.plan.warmup, connections=self.plan.connections)

    def as_of(
        self, label: str, server: Server, *, load_test: bool
    ) -> tuple[LoadResult, LoadResult]:
        """``/status?as_of=`` with a new instant on every request: (p50 over one connection,
        requests/s over many). An answer slower than ``SLOW_REQUEST_S`` is not load-tested:
        one timed request stands for both figures (the server is still busy with it)."""
        end = datetime.now(UTC) - timedelta(days=2)
        probe_at = (SERVICE_START + (end - SERVICE_START) / 3).strftime("%Y-%m-%dT%H:%M:%SZ")
        started = time.perf_counter()
        try:
            response = httpx.get(
                f"{server.base_url}{API}/status",
                params={"as_of": probe_at},
                timeout=self.plan.probe_timeout,
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            response = None
        probe = time.perf_counter() - started
        if response is None:
            # Still computing that answer, and nothing would stop it: measure nothing more here.
            self.note_rss(server)
            server.kill()
        if response is None or probe > SLOW_REQUEST_S:
            done = "" if response is not None else " (gave up waiting)"
            say(f"as_of ({label}): one request took {probe:.1f} s{done}; not load-tested")
            self.slow_as_of[label] = probe
            # Gave up: at most one answer in that long (a bound, not a measurement).
            result = LoadResult(
                1,
                probe,
                0,
                0,
                probe * 1000,
                probe * 1000,
                probe * 1000,
            )
            self.figures.keep(f"as_of probe ({label})", result)
            return result, result
        target = Load(f"{server.base_url}{API}/status", distinct_as_of=(SERVICE_START, end))
        latency = self.measure(f"as_of, 1 connection ({label})", target, connections=1)
        if not load_test:
            return latency, latency
        # One worker answers one as_of at a time: more connections than keep it busy only
        # queue (and would time out), so no more than about five seconds' worth.
        connections = max(1, min(self.plan.connections, int(5 / max(latency.p50_ms / 1000, 1e-3))))
        return latency, self.measure(f"as_of ({label})", target, connections=connections)

    # --- the targets ---------------------------------------------------------------------------

    def run(self, parts: frozenset[str] = PARTS) -> list[Row]:
        """Measure ``parts`` (all by default) and return the table's rows."""
        self.figures.machine = machine()
        main_file = self.work_copy(self.plan.main)
        api_key = create_key(main_file)
        if "main" in parts:
            self.main_server(main_file, api_key)
            self.rate_limit_cost(main_file)
            if "scaling" in parts:
                self.scaling()
            if "peer" in parts:
                self.datasette(main_file)
        if "postgres" in parts:
            self.postgres()
        if "fanout" in parts:
            self.fanout(main_file, api_key)
        self.rows["7"] = at_most(
            "7 peak RSS of a server",
            f"{self.peak_rss_mb:.0f} MB",
            f"{RSS_LIMIT_MB:.0f} MB",
            self.peak_rss_mb,
            RSS_LIMIT_MB,
            1.0,
        )
        if self.slow_as_of:
            slow = "; ".join(
                f"{label}: one request took {seconds:.1f} s, not load-tested"
                for label, seconds in self.slow_as_of.items()
            )
            for key in ("3b", "5b"):
                if key in self.rows:
                    self.rows[key] = replace(self.rows[key], note=f"as_of {slow}")
        order = ["1", "2", "3a", "3b", "4", "5a", "5b", "6", "7", "8a", "8b", "8c", "9", "10"]
        return [self.rows[key] for key in order if key in self.rows]

    def main_server(self, database_file: Path, api_key: str) -> None:
        """Targets 1, 2, 4, 6 and the main figures of 3 and 5, on one server process."""
        with pledgewatch_server(
            f"sqlite:///{database_file}", self.logs / "server-main.log"
        ) as server:
            base = server.base_url
            body, etag, gzip_etag = prime(base)
            status = Load(f"{base}{API}/status")
            reference = Load(f"{base}/bench/reference/status")
            not_modified = Load(f"{base}{API}/status", headers=(("If-None-Match", etag),))
            empty = Load(f"{base}/bench/reference/empty")
            zipped = Load(f"{base}{API}/status", headers=(("Accept-Encoding", "gzip"),))
            self.warm(status, reference, not_modified, empty, zipped)
            status_r, reference_r = self.pair(("status", "reference"), (status, reference))
            self.rows["1"] = at_least(
                "1 /status vs precomputed bytes",
                rps(status_r.rps),
                rps(reference_r.rps),
                status_r.rps,
                reference_r.rps,
                0.8,
            )
            not_modified_r, empty_r = self.pair(("304", "204"), (not_modified, empty))
            self.rows["2"] = at_least(
                "2 /status 304 vs empty 204",
                rps(not_modified_r.rps),
                rps(empty_r.rps),
                not_modified_r.rps,
                empty_r.rps,
                0.9,
            )
            zipped_r, reference_again = self.pair(
                ("gzip", "reference (gzip pair)"), (zipped, reference)
            )
            self.rows["6"] = at_least(
                "6 /status gzip vs precomputed bytes",
                rps(zipped_r.rps),
                rps(reference_again.rps),
                zipped_r.rps,
                reference_again.rps,
                0.8,
            )
            self.figures.other["status_body_bytes"] = len(body)
            self.figures.other["gzip_etag"] = gzip_etag
            self.main_status_rps = status_r.rps
            self.ingest(server, database_file, api_key)
            self.main_as_of_latency, self.main_as_of = self.as_of(
                self.plan.main.label, server, load_test=True
            )
            self.note_rss(server)
        self.note_rss(server)

    def rate_limit_cost(self, database_file: Path) -> None:
        """Target 10: a dashboard's 304 with rate limits on (the default budgets) and off, on
        two new servers of the same database, measured in turns. The driver plays a reverse
        proxy (trusted by the limited server) in front of ``RATE_LIMIT_CLIENTS`` clients, so
        each client's window holds what a client's would, not a whole run's requests."""
        url = f"sqlite:///{database_file}"
        with (
            pledgewatch_server(
                url,
                self.logs / "server-limited.log",
                rate_limits="default",
                extra_env={"PLEDGEWATCH_TRUSTED_PROXIES": "127.0.0.1"},
            ) as limited,
            pledgewatch_server(url, self.logs / "server-unlimited.log", rate_limits="off") as off,
        ):
            loads = []
            for server in (limited, off):
                _, etag, _ = prime(server.base_url)
                loads.append(
                    Load(
                        f"{server.base_url}{API}/status",
                        headers=(("If-None-Match", etag),),
                        clients=RATE_LIMIT_CLIENTS,
                    )
                )
            self.warm(*loads)
            on_r, off_r = self.pair(
                ("304, rate limits on", "304, rate limits off"), (loads[0], loads[1])
            )
            for server in (limited, off):
                self.note_rss(server)
        self.rows["10"] = at_least(
            f"10 /status 304, {RATE_LIMIT_CLIENTS:,} clients: rate limits on vs off",
            rps(on_r.rps),
            rps(off_r.rps),
            on_r.rps,
            off_r.rps,
            0.85,
        )

    def ingest(self, server: Server, database_file: Path, api_key: str) -> None:
        """Target 4: the same rows through Core executemany, then through the API."""
        pledge_ids = [
            row["id"] for row in httpx.get(f"{server.base_url}{API}/status").json()["pledges"]
        ]
        now = datetime.now(UTC)
        item_batches = ingest.batches(self.plan.ingest_batches, pledge_ids, now=now)
        rows = [
            ingest.storage_rows(items, actor="key:bench-ingest", now=now) for items in item_batches
        ]
        core = ingest.core_ceiling(f"sqlite:///{database_file}", rows)
        api = ingest.through_api(server.base_url, api_key, item_batches)
        say(
            f"ingest: API {api.items_per_second:,.0f} items/s, "
            f"Core {core.items_per_second:,.0f} items/s"
        )
        self.figures.other["ingest"] = {"api": asdict(api), "core": asdict(core)}
        self.rows["4"] = at_least(
            "4 batch ingest vs Core executemany",
            f"{api.items_per_second:,.0f} items/s",
            f"{core.items_per_second:,.0f} items/s",
            api.items_per_second,
            core.items_per_second,
            0.1,
        )

    def scaling(self) -> None:
        """Target 3: /status and as_of on each size (the main size was measured already)."""
        figures = []
        for size in self.plan.scaling:
            if size == self.plan.main:
                status_rps, as_of_p50 = self.main_status_rps, self.main_as_of_latency.p50_ms
            else:
                database_file = self.work_copy(size)
                with pledgewatch_server(
                    f"sqlite:///{database_file}", self.logs / f"server-{size.label}.log"
                ) as server:
                    prime(server.base_url)
                    status = Load(f"{server.base_url}{API}/status")
                    self.warm(status)
                    status_rps = self.measure(f"status ({size.label})", status).rps
                    as_of_p50 = self.as_of(size.label, server, load_test=False)[0].p50_ms
                    self.note_rss(server)
            figures.append(
                {
                    "evidence": size.evidence,
                    "status_changes": size.status_changes,
                    "status_rps": round(status_rps, 1),
                    "as_of_p50_ms": round(as_of_p50, 2),
                }
            )
        self.figures.scaling = figures
        smallest, largest = figures[0], figures[-1]
        self.rows["3a"] = at_least(
            f"3 /status at {largest['evidence']:,} vs {smallest['evidence']:,} items",
            rps(largest["status_rps"]),
            rps(smallest["status_rps"]),
            largest["status_rps"],
            smallest["status_rps"],
            0.9,
        )
        self.rows["3b"] = at_most(
            f"3 as_of p50 at {largest['status_changes']:,} "
            f"vs {smallest['status_changes']:,} changes",
            f"{largest['as_of_p50_ms']:.1f} ms",
            f"{smallest['as_of_p50_ms']:.1f} ms",
            largest["as_of_p50_ms"],
            smallest["as_of_p50_ms"],
            2.0,
        )

    def datasette(self, database_file: Path) -> None:
        """Target 5: Datasette answering the current-status query on the same file."""
        if not peer.datasette_command(self.datasette_venv).exists():
            why = f"no Datasette in {self.datasette_venv} (make bench-venv)"
            self.rows["5a"] = not_measured("5 /status vs Datasette", ">= 20", why)
            self.rows["5b"] = not_measured("5 as_of vs Datasette", ">= 1", why)
            return
        # Datasette opens the file immutable, WAL ignored: fold in what the API wrote.
        with closing(sqlite3.connect(database_file)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with peer.datasette(
            database_file, self.logs / "datasette.log", self.datasette_venv
        ) as server:
            url = server.base_url + peer.query_path(database_file)
            check_same_rows(url, database_file)
            target = Load(url)
            self.warm(target)
            datasette = self.measure("datasette", target)
        self.rows["5a"] = at_least(
            "5 /status vs Datasette",
            rps(self.main_status_rps),
            rps(datasette.rps),
            self.main_status_rps,
            datasette.rps,
            20,
        )
        self.rows["5b"] = at_least(
            "5 as_of (new date each) vs Datasette",
            rps(self.main_as_of.rps),
            rps(datasette.rps),
            self.main_as_of.rps,
            datasette.rps,
            1,
        )

    def fanout(self, database_file: Path, api_key: str) -> None:
        """Target 9: one status change, ``fanout_streams`` open /events streams."""
        streams = self.plan.fanout_streams
        # The server inherits this process's limit of open files: a socket per stream.
        fanout.raise_open_files_limit(streams)
        with pledgewatch_server(
            f"sqlite:///{database_file}",
            self.logs / "server-fanout.log",
            extra_env={"PLEDGEWATCH_SSE_MAX_CLIENTS": str(streams + 100)},
        ) as server:
            pledge_id = httpx.get(f"{server.base_url}{API}/status", timeout=120).json()["pledges"][
                0
            ]["id"]
            result = fanout.measure(
                server.base_url,
                analyst_key=api_key,
                pledge_id=pledge_id,
                streams=streams,
                changes=self.plan.fanout_changes,
            )
            self.note_rss(server)
        say(
            f"fan-out to {streams:,} streams: median {result.median_ms:.0f} ms, "
            f"p99 {result.p99_ms:.0f} ms, last stream {max(result.last_stream_ms):.0f} ms"
        )
        self.figures.other["fanout"] = asdict(result)
        self.rows["9"] = at_most(
            f"9 /events fan-out p99, {streams:,} streams",
            f"{result.p99_ms:,.0f} ms (median {result.median_ms:,.0f})",
            f"{FANOUT_LIMIT_S:.0f} s",
            result.p99_ms / 1000,
            FANOUT_LIMIT_S,
            1.0,
        )

    def postgres(self) -> None:
        """Target 8: two API processes on one PostgreSQL database, half the connections each."""
        names = ("8 PG x2: /status vs bytes", "8 PG x2: 304 vs 204", "8 PG: coherence")
        thresholds = (">= 0.8", ">= 0.9", "<= 1")
        problem = postgres_problem(self.postgres_url)
        if problem is not None:
            for key, name, threshold in zip(("8a", "8b", "8c"), names, thresholds, strict=True):
                self.rows[key] = not_measured(name, threshold, problem)
            return
        assert self.postgres_url is not None
        with scratch_postgres(self.postgres_url, "pledgewatch_bench") as url:
            engine = create_engine(url)
            with engine.connect() as connection:
                version = connection.execute(text("SHOW server_version")).scalar()
                self.figures.machine["postgresql"] = str(version)
            engine.dispose()
            say(f"generating {self.plan.postgres.label} on PostgreSQL")
            generate(url, self.plan.postgres)
            api_key = create_key_url(url)
            with (
                pledgewatch_server(url, self.logs / "server-pg-a.log") as first,
                pledgewatch_server(url, self.logs / "server-pg-b.log") as second,
            ):
                servers = (first, second)
                etags = [prime(server.base_url)[1] for server in servers]
                half = max(self.plan.connections // 2, 1)

                def both(path: str, *, header: bool = False) -> list[Load]:
                    return [
                        Load(
                            server.base_url + path,
                            headers=(("If-None-Match", etag),) if header else (),
                        )
                        for server, etag in zip(servers, etags, strict=True)
                    ]

                def measure_both(name: str, loads: list[Load]) -> LoadResult:
                    result = LoadResult.combine(
                        load_checked(
                            load.run_many(loads, seconds=self.plan.seconds, connections=half)
                        )
                    )
                    say(f"{name}: {result.rps:,.0f} req/s")
                    return self.figures.keep(name, result)

                for loads in (both(f"{API}/status"), both("/bench/reference/status")):
                    load.run_many(loads, seconds=self.plan.warmup, connections=half)
                status_r = measure_both("pg status", both(f"{API}/status"))
                reference_r = measure_both("pg reference", both("/bench/reference/status"))
                not_modified_r = measure_both("pg 304", both(f"{API}/status", header=True))
                empty_r = measure_both("pg 204", both("/bench/reference/empty"))
                delays = []
                with (
                    httpx.Client(base_url=first.base_url, timeout=30) as writer,
                    httpx.Client(base_url=second.base_url, timeout=30) as reader,
                ):
                    pledge_id = reader.get(f"{API}/status").json()["pledges"][0]["id"]
                    for turn in range(5):
                        source, sink = (writer, reader) if turn % 2 == 0 else (reader, writer)
                        delays.append(
                            coherence.change_and_watch(source, sink, pledge_id, analyst_key=api_key)
                        )
                for server in servers:
                    self.note_rss(server)
        worst = max(delays)
        self.figures.other["coherence_delays_s"] = [round(d, 4) for d in delays]
        self.rows["8a"] = at_least(
            names[0], rps(status_r.rps), rps(reference_r.rps), status_r.rps, reference_r.rps, 0.8
        )
        self.rows["8b"] = at_least(
            names[1],
            rps(not_modified_r.rps),
            rps(empty_r.rps),
            not_modified_r.rps,
            empty_r.rps,
            0.9,
        )
        self.rows["8c"] = at_most(
            names[2],
            f"{worst * 1000:.0f} ms (worst of 5)",
            f"{COHERENCE_LIMIT_S:.0f} s",
            worst,
            COHERENCE_LIMIT_S,
            1.0,
        )


def load_checked(results: list[LoadResult]) -> list[LoadResult]:
    for result in results:
        if result.errors or not result.requests:
            raise load.LoadError(f"the load run had errors: {result}")
    return results


def _sequential(results: list[LoadResult]) -> LoadResult:
    """Runs made one after another, counted as one."""
    requests = sum(r.requests for r in results)
    weights = [r.requests / requests if requests else 0 for r in results]
    return LoadResult(
        requests=requests,
        seconds=sum(r.seconds for r in results),
        bytes=sum(r.bytes for r in results),
        errors=sum(r.errors for r in results),
        p50_ms=sum(r.p50_ms * w for r, w in zip(results, weights, strict=True)),
        p90_ms=max(r.p90_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
    )


def prime(base_url: str) -> tuple[bytes, str, str]:
    """Check the server, copy its /status body into the reference; (body, ETag, gzip ETag)."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        plain = client.get(f"{API}/status", headers={"Accept-Encoding": "identity"})
        plain.raise_for_status()
        body = plain.content
        if not plain.json()["pledges"]:
            raise RuntimeError("the benchmark database has no pledges")
        client.put("/bench/reference/status", content=body).raise_for_status()
        copied = client.get("/bench/reference/status", headers={"Accept-Encoding": "identity"})
        if copied.content != body:
            raise RuntimeError("the reference does not answer the bytes of /status")
        zipped = client.get(f"{API}/status", headers={"Accept-Encoding": "gzip"})
        if zipped.headers.get("content-encoding") != "gzip":
            raise RuntimeError("/status did not answer gzip to a client that accepts it")
        if (
            client.get(
                f"{API}/status",
                headers={"If-None-Match": plain.headers["etag"], "Accept-Encoding": "identity"},
            ).status_code
            != 304
        ):
            raise RuntimeError("/status did not answer 304 to its own ETag")
        return body, plain.headers["etag"], zipped.headers["etag"]


def check_same_rows(datasette_url: str, database_file: Path) -> None:
    """Datasette's rows must be /status's rows (the same pledges, statuses, counts, flags)."""
    theirs = httpx.get(datasette_url, timeout=120).json()
    from app.db import Database
    from app.domain.status.schemas import StatusQuery
    from app.domain.status.service import dashboard

    database = Database(f"sqlite:///{database_file}", pool_size=1)
    try:
        with database.transaction(write=False) as session:
            ours = dashboard(session, StatusQuery(), now=datetime.now(UTC)).pledges
    finally:
        database.dispose()
    keys = ("id", "status", "verification", "evidence_count", "overdue")
    mine = [
        tuple(
            bool(v) if k == "overdue" else v for k, v in row.model_dump(include=set(keys)).items()
        )
        for row in ours
    ]
    peer_rows = [tuple(bool(row[k]) if k == "overdue" else row[k] for k in keys) for row in theirs]
    if sorted(mine) != sorted(peer_rows):
        raise RuntimeError("Datasette's query does not give the rows /status gives")


def create_key(database_file: Path) -> str:
    return create_key_url(f"sqlite:///{database_file}")


def create_key_url(url: str) -> str:
    """An analyst key for the ingest and coherence writes (made as ``pledgewatch keys`` does)."""
    from app.db import Database
    from app.domain.keys.service import create_key as make

    database = Database(url, pool_size=1)
    try:
        with database.transaction() as session:
            return make(
                session, name=f"bench-{time.time_ns()}", role="analyst", now=datetime.now(UTC)
            )
    finally:
        database.dispose()


def postgres_problem(url: str | None) -> str | None:
    """Why target 8 cannot run (no URL, or the server does not answer), or None."""
    if not url:
        return "no PostgreSQL URL given"
    engine = create_engine(
        make_url(url).set(database="postgres"), connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # any driver error: report it in the table, run the rest
        return f"PostgreSQL unreachable ({type(error).__name__})"
    finally:
        engine.dispose()
    return None


@contextmanager
def scratch_postgres(admin_url: str, name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database ``name`` on the server of ``admin_url`` (dropped first
    if left over), dropped after. The test suite makes its scratch databases with it too."""
    base = make_url(admin_url)
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import platform

    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    with suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    wrk = subprocess.run(  # noqa: S603 - wrk's own version line
        [load.wrk_path(), "--version"], check=False, capture_output=True, text=True
    ).stdout
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk.split("[")[0].strip(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("plan", choices=sorted(PLANS), nargs="?", default="quick")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(
            os.environ.get("PLEDGEWATCH_BENCH_DIR", Path.home() / ".cache" / "pledgewatch-bench")
        ),
        help="where generated databases are kept between runs, and the logs",
    )
    parser.add_argument("--datasette-venv", type=Path, default=peer.DEFAULT_VENV)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PLEDGEWATCH_BENCH_POSTGRES_URL",
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        ),
        help="a PostgreSQL server the benchmark may create a database on ('' to skip target 8)",
    )
    parser.add_argument(
        "--results", type=Path, help="where to write the figures (JSON; default: in --data-dir)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    parser.add_argument(
        "--only",
        type=lambda text: frozenset(text.split(",")),
        default=PARTS,
        help=f"measure only these parts (comma-separated: {', '.join(sorted(PARTS))})",
    )
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    plan = PLANS[args.plan]
    started = time.perf_counter()
    bench = Bench(
        plan,
        data_dir=args.data_dir,
        datasette_venv=args.datasette_venv,
        postgres_url=args.postgres_url or None,
    )
    unknown = args.only - PARTS
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    rows = bench.run(args.only)
    elapsed = time.perf_counter() - started
    title = (
        f"Pledgewatch benchmark ({plan.name}: {plan.main.pledges:,} pledges, "
        f"{plan.main.evidence:,} evidence items, {plan.main.status_changes:,} status changes; "
        f"{elapsed:.0f} s)"
    )
    print(render(rows, title))
    scaling = ", ".join(
        f"{s['evidence']:,} items/{s['status_changes']:,} changes: {s['status_rps']:,.0f} req/s, "
        f"as_of p50 {s['as_of_p50_ms']:.1f} ms"
        for s in bench.figures.scaling
    )
    print(f"\nbehind target 3: {scaling}")
    results = args.results or args.data_dir / f"results-{plan.name}.json"
    results.write_text(
        json.dumps(
            {
                **asdict(bench.figures),
                "rows": [row.as_dict() for row in rows],
                "seconds": elapsed,
            },
            indent=2,
        )
    )
    print(f"figures: {results}")
    failed = [row for row in rows if row.passed is False]
    return 1 if args.strict and failed else 0
