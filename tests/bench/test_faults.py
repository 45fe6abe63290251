"""The fault harness (bench/faults*.py), each scenario at a tiny size on each database.

First the harness itself is checked (it ran to the end, the kills happened, its counts
add up); then the service's invariants, which the harness exists to measure: no item lost
or doubled through SIGKILLs, every retry answered like its first answer, only 503s with
Retry-After while PostgreSQL is down, overload shed rather than queued.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench.faults_common import Report, ScenarioSkipped
from bench.faults_kills import run_kills
from bench.faults_outage import run_outage
from bench.faults_overload import run_overload
from tests.conftest import _postgres_admin_url

# About a minute in all, one process after another (each scenario loads the machine).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fault-harness")]


def _judge(scenario: str, report: Report) -> None:
    print(report.render())
    assert report.ok, f"{scenario}:\n{report.render()}"


@pytest.fixture
def postgres_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL server the harness makes its scratch databases on (skips without one)."""
    if backend == "sqlite":
        return None
    request.getfixturevalue("postgres_template_url")
    return make_url(_postgres_admin_url()).set(database="postgres").render_as_string(False)


def test_kills(backend: str, postgres_url: str | None, tmp_path: Path) -> None:
    report = run_kills(
        backend,
        tmp_path,
        items=300,
        batch_size=20,
        clients=2,
        kills=1,
        seed=1,
        postgres_url=postgres_url,
    )
    figures = report.figures
    assert figures["kills; seconds each until serving again"].startswith("1; ")
    # Every batch was answered, replayed at once and replayed again at the end.
    assert sum(figures["answers by status"].values()) >= 3 * 15
    assert figures["ledger verify"].startswith("ledger")
    _judge("kills", report)


@pytest.mark.parametrize("method", ["restart", "cut"])
def test_outage(method: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    request.getfixturevalue("postgres_template_url")  # skips without PostgreSQL
    admin = make_url(_postgres_admin_url()).set(database="postgres").render_as_string(False)
    try:
        report = run_outage(tmp_path, outage_seconds=2, method=method, postgres_url=admin)
    except ScenarioSkipped as why:
        pytest.skip(str(why))
    figures = report.figures
    assert figures["readyz answers while down, by status (0: none)"]
    assert sum(figures["read answers while down, by status (0: none)"].values()) > 0
    _judge("outage", report)


def test_overload(backend: str, postgres_url: str | None, tmp_path: Path) -> None:
    report = run_overload(
        backend,
        tmp_path,
        measure_seconds=1,
        load_seconds=2,
        factor=10,
        rss_limit_mb=300,
        postgres_url=postgres_url,
        # Beside another test worker, the server does not have its two cores: whether it
        # sheds before clients give up is judged by make faults, on an idle machine.
        machine_to_itself=False,
    )
    figures = report.figures
    rate = figures["sustainable rate (2xx answers/s, 8 connections)"]
    assert rate > 0
    assert figures["requests offered"] >= 0.9 * 10 * rate * 2  # ten times it, for 2 s
    assert "200" in figures["/healthz during and after the load"]
    _judge("overload", report)
