"""The benchmark's other parts: the peer's SQL, the ingest rows, the load script, the table."""

from __future__ import annotations

import http.server
import shutil
import sqlite3
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.evidence.models import Evidence
from app.domain.keys.service import create_key
from app.domain.status.schemas import StatusQuery
from app.domain.status.service import dashboard
from app.main import create_app
from bench import ingest, load, peer, report
from bench.generate import Size, generate
from bench.load import Load, LoadResult


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "small.db"
    generate(
        f"sqlite:///{path}", Size(pledges=30, evidence=600, status_changes=90), seed=8, workers=0
    )
    return path


def test_the_peers_query_gives_the_rows_status_gives(small_file: Path) -> None:
    with sqlite3.connect(small_file) as connection:
        connection.row_factory = sqlite3.Row
        theirs = [dict(row) for row in connection.execute(peer.CURRENT_STATUS_SQL)]
    database = Database(f"sqlite:///{small_file}", pool_size=1)
    try:
        with database.transaction(write=False) as session:
            ours = dashboard(session, StatusQuery(), now=datetime.now(UTC)).pledges
    finally:
        database.dispose()

    assert [row["id"] for row in theirs] == [row.id for row in ours]
    for mine, row in zip(ours, theirs, strict=True):
        assert (row["status"], row["verification"], row["evidence_count"]) == (
            mine.status,
            mine.verification,
            mine.evidence_count,
        )
        assert bool(row["overdue"]) is mine.overdue
        assert row["due_on"] == (mine.due_on.isoformat() if mine.due_on else None)
        assert row["status_since"] == mine.status_since.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert peer.query_path(small_file).startswith("/small.json?sql=select")


def test_the_ceilings_rows_are_the_rows_the_api_stores(small_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ingest.db"
    shutil.copyfile(small_file, copy)
    url = f"sqlite:///{copy}"
    database = Database(url, pool_size=2)
    now = datetime.now(UTC).replace(microsecond=0)
    with database.transaction() as session:
        key = create_key(session, name="bench-ingest", role="analyst", now=now)
    pledge_ids = [f"bench-pledge-{n:05d}" for n in range(30)]
    items = ingest.batches(1, pledge_ids, now=now)[0][:50]
    rows = ingest.storage_rows(items, actor="key:bench-ingest", now=now)

    ceiling = ingest.core_ceiling(url, [rows])
    with database.transaction(write=False) as session:
        left = session.scalar(
            select(Evidence.id).where(Evidence.content_hash == rows[0]["content_hash"])
        )
    assert ceiling.items == 50
    assert left is None  # the ceiling's rows are removed again

    settings = Settings(
        database_url=url, log_json=False, log_level="WARNING", scheduler_enabled=False
    )
    with TestClient(create_app(settings, clock=FrozenClock(now), database=database)) as client:
        answer = client.post(
            "/api/v1/evidence/batch",
            json={"items": items},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200, answer.text
    assert {result["status"] for result in answer.json()["results"]} == {201}
    with database.transaction(write=False) as session:
        stored = {
            row.content_hash: row
            for row in session.scalars(
                select(Evidence).where(Evidence.content_hash.in_([r["content_hash"] for r in rows]))
            )
        }
    database.dispose()
    assert len(stored) == len(rows)
    for row in rows:
        kept = stored[row["content_hash"]]
        for name, value in row.items():
            assert getattr(kept, name) == value, name


def test_as_of_loads_ask_for_a_new_instant_every_time() -> None:
    first = datetime(2015, 1, 1, tzinfo=UTC)
    script = Load(
        "http://127.0.0.1:1/api/v1/status", distinct_as_of=(first, first + timedelta(days=4000))
    ).script()

    assert 'local path = "/api/v1/status?as_of="' in script
    span = int(timedelta(days=4000).total_seconds())
    step = int(script.split("counter * ")[1].split(")")[0])
    instants = {(step * counter) % span for counter in range(1, 100_001)}
    assert len(instants) == 100_000
    headers = Load("http://x/y?z=1", headers=(("If-None-Match", '"r1"'),)).script()
    assert 'wrk.headers["If-None-Match"] = "\\"r1\\""' in headers


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by make bench-tools")
def test_a_load_of_many_clients_names_each_in_turn_as_a_proxy_would() -> None:
    seen: list[tuple[str | None, str | None]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.headers["X-Forwarded-For"], self.headers["If-None-Match"]))
            self.send_response(304)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            target = Load(
                f"http://127.0.0.1:{server.server_address[1]}/api/v1/status",
                headers=(("If-None-Match", '"r1"'),),
                clients=3,
            )
            result = load.run(target, seconds=1, connections=1)
        finally:
            server.shutdown()
    assert result.requests >= 3
    assert {address for address, _ in seen} == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert {etag for _, etag in seen} == {'"r1"'}
    with pytest.raises(ValueError, match="one request function"):
        Load("http://x/", clients=2, distinct_as_of=(datetime.now(UTC), datetime.now(UTC))).script()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by make bench-tools")
def test_wrk_results_are_read(tmp_path: Path) -> None:
    from bench.server import free_port, running

    port = free_port()
    with running(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        f"http://127.0.0.1:{port}",
        "/",
        tmp_path / "http.log",
        {},
    ) as server:
        result = load.run(Load(server.base_url + "/"), seconds=1, connections=2)
    assert result.requests > 0
    assert result.rps > 0
    assert 0 < result.p50_ms <= result.p99_ms


def test_the_table_says_pass_fail_and_not_run() -> None:
    rows = [
        report.at_least("1 a", "90 req/s", "100 req/s", 90, 100, 0.8),
        report.at_least("2 b", "50 req/s", "100 req/s", 50, 100, 0.9),
        report.at_most("3 c", "30 ms", "10 ms", 30, 10, 2),
        report.not_measured("8 d", ">= 0.8", "no PostgreSQL"),
    ]

    table = report.render(rows, "title")

    assert [row.passed for row in rows] == [True, False, False, None]
    lines = table.splitlines()
    assert lines[0] == "title"
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[4:8]]
    assert cells[0] == ["1 a", "90 req/s", "100 req/s", "0.90", ">= 0.8", "pass"]
    assert [row[-1] for row in cells] == ["pass", "FAIL", "FAIL", "not run"]
    assert lines[-1] == "- 8 d: no PostgreSQL"


def test_runs_made_at_once_add_up() -> None:
    both = LoadResult.combine(
        [LoadResult(100, 2.0, 10, 0, 1.0, 2.0, 3.0), LoadResult(300, 2.0, 30, 0, 2.0, 4.0, 6.0)]
    )
    assert both.rps == 200
    assert both.p50_ms == 2.0
