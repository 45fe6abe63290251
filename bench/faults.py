"""Overload and faults, measured (``python -m bench.faults --help``; ``make faults``).

a. kills:    evidence posted in batches through SIGKILLs of the server (SQLite, PostgreSQL)
b. outage:   PostgreSQL stopped and started again under load (PostgreSQL only)
c. overload: ten times the sustainable request rate (SQLite, PostgreSQL)

Each scenario prints its figures and the invariants it checked; the exit status is 1
when any invariant is broken, 0 otherwise (a scenario that cannot run here, e.g. with no
PostgreSQL, is reported as not run). docs/RELIABILITY.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.faults_common import Report, ScenarioSkipped, say

SCENARIOS = ("kills", "outage", "overload")
BACKENDS = ("sqlite", "postgresql")


def _csv(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [part for part in chosen if part not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}")
        return chosen

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario", type=_csv(SCENARIOS), default=SCENARIOS, help="kills,outage,overload"
    )
    p.add_argument("--database", type=_csv(BACKENDS), default=BACKENDS, help="sqlite,postgresql")
    p.add_argument("--items", type=int, default=20_000, help="a: evidence items to post")
    p.add_argument("--batch", type=int, default=100, help="a: items per batch")
    p.add_argument("--clients", type=int, default=4, help="a: concurrent clients")
    p.add_argument("--kills", type=int, default=3, help="a: SIGKILLs of the server")
    p.add_argument("--seed", type=int, default=10, help="a: where the kills land")
    p.add_argument("--outage-seconds", type=float, default=5.0, help="b: PostgreSQL down this long")
    p.add_argument(
        "--outage",
        choices=("restart", "cut"),
        default="restart",
        help="b: stop and start a private PostgreSQL (initdb in a temp dir), "
        "or cut a proxy to the shared one",
    )
    p.add_argument("--load-seconds", type=float, default=10.0, help="c: seconds of 10x load")
    p.add_argument("--measure-seconds", type=float, default=5.0, help="c: seconds to find the rate")
    p.add_argument("--factor", type=float, default=10.0, help="c: times the sustainable rate")
    p.add_argument("--rss-limit-mb", type=float, default=300.0, help="c: the server's memory bound")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PLEDGEWATCH_BENCH_POSTGRES_URL",
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        ),
        help="a PostgreSQL server the harness may create scratch databases on",
    )
    p.add_argument("--work-dir", type=Path, help="databases and server logs (default: a temp dir)")
    p.add_argument("--results", type=Path, help="also write the figures here (JSON)")
    return p


def machine(postgres_url: str | None) -> dict[str, str]:
    """What the figures were measured on."""
    import platform
    import sqlite3

    from bench.run import postgres_problem

    facts = {"cores": str(os.cpu_count()), "python": platform.python_version()}
    facts["sqlite"] = sqlite3.sqlite_version
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            facts["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    if postgres_url and postgres_problem(postgres_url) is None:
        from sqlalchemy import create_engine, text

        engine = create_engine(postgres_url)
        with engine.connect() as connection:
            facts["postgresql"] = str(connection.execute(text("SHOW server_version")).scalar())
        engine.dispose()
    facts["load average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return facts


def run(args: argparse.Namespace, work_dir: Path) -> list[Report]:
    from bench.faults_kills import run_kills
    from bench.faults_outage import run_outage
    from bench.faults_overload import run_overload

    reports: list[Report] = []
    for scenario in args.scenario:
        for backend in args.database:
            if scenario == "outage" and backend != "postgresql":
                continue
            say(f"{scenario} on {backend}")
            try:
                if scenario == "kills":
                    report = run_kills(
                        backend,
                        work_dir,
                        items=args.items,
                        batch_size=args.batch,
                        clients=args.clients,
                        kills=args.kills,
                        seed=args.seed,
                        postgres_url=args.postgres_url,
                    )
                elif scenario == "outage":
                    report = run_outage(
                        work_dir,
                        outage_seconds=args.outage_seconds,
                        method=args.outage,
                        postgres_url=args.postgres_url,
                    )
                else:
                    report = run_overload(
                        backend,
                        work_dir,
                        measure_seconds=args.measure_seconds,
                        load_seconds=args.load_seconds,
                        factor=args.factor,
                        rss_limit_mb=args.rss_limit_mb,
                        postgres_url=args.postgres_url,
                    )
            except ScenarioSkipped as why:
                report = Report(f"{scenario} ({backend})", skipped=str(why))
            print(report.render() + "\n", flush=True)
            reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()
    facts = machine(args.postgres_url)
    print("machine: " + "; ".join(f"{name} {value}" for name, value in facts.items()) + "\n")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        reports = run(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="pledgewatch-faults-") as folder:
            reports = run(args, Path(folder))
    broken = [report for report in reports if not report.ok]
    print(
        f"{len(reports)} scenario runs in {time.monotonic() - started:.0f} s: "
        + ("every invariant held" if not broken else f"{len(broken)} with broken invariants")
    )
    if args.results is not None:
        runs = [report.as_dict() for report in reports]
        args.results.write_text(json.dumps({"machine": facts, "runs": runs}, indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
