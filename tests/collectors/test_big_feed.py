"""A 100,000-row feed polled by `pledgewatch serve` (scheduler and API in one process) while
API writes go on: no write fails, the leader keeps its lock, the run commits chunk by chunk
and stops at the cap per run, saying how many items it left for the next."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app.clock import FrozenClock, SystemClock
from app.db import Database
from app.domain.evidence.models import Evidence
from app.domain.keys.service import create_key
from app.domain.sources.schemas import SourceCreate
from app.domain.sources.service import create_source
from app.seed.loader import seed
from tests.collectors.feed_server import Answer, FeedServer, feed_server
from tests.e2e.conftest import running_server
from tests.factories import pledge_body

pytestmark = pytest.mark.slow

ROWS = 100_000
CAP = 20_000
CHUNK = 500
SOURCE = "big-series"
# A safety net for a stuck run, not a measure of speed.
GIVE_UP_SECONDS = 900


def big_csv() -> bytes:
    """100,000 observations, one a day from 1900 on, each value its own: 1.6 MB."""
    first = date(1900, 1, 1)
    rows = [f"{first + timedelta(days=n)},{n}" for n in range(ROWS)]
    return ("date,value\n" + "\n".join(rows) + "\n").encode()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


def _prepare(database: Database, clock: FrozenClock, url: str) -> dict[str, dict[str, str]]:
    now = SystemClock().now()
    with database.transaction() as session:
        seed(session, clock)
        create_source(
            session,
            SourceCreate.model_validate(
                {
                    "id": SOURCE,
                    "name": "A long statistical series",
                    "kind": "csv",
                    "url": url,
                    "pledges": ["us-cn-leader-calls-more-often"],
                    "source_type": "dataset",
                    "trusted": True,
                    "mapping": {"date": "date", "value": "value"},
                }
            ),
            now=now,
        )
        return {
            role: {"Authorization": f"Bearer {create_key(session, name=role, role=role, now=now)}"}
            for role in ("analyst", "admin")
        }


def _latest_run(base: str, admin: dict[str, str]) -> dict[str, Any] | None:
    response = httpx.get(f"{base}/api/v1/sources/{SOURCE}/runs", headers=admin, timeout=60)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items[0] if items else None


def _is_leader(base: str) -> bool:
    text = httpx.get(f"{base}/metrics", timeout=60).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pledgewatch_scheduler_leader":
                return sample.value == 1
    return False


def test_a_big_poll_never_blocks_api_writes_nor_the_leader(
    db_url: str,
    database: Database,
    clock: FrozenClock,
    server: FeedServer,
    tmp_path: Path,
) -> None:
    body = big_csv()
    assert 1_500_000 < len(body) < 5 * 1024 * 1024, "under the fetcher's size cap"
    server.answers["/series.csv"] = Answer(body=body, content_type="text/csv")
    keys = _prepare(database, clock, server.url("/series.csv"))
    log = tmp_path / "server.log"
    settings = {
        "PLEDGEWATCH_SCHEDULER_ENABLED": "true",
        "PLEDGEWATCH_ALLOW_PRIVATE_SOURCE_HOSTS": "true",
        # A short lease: three renewals missed for a few seconds would lose it.
        "PLEDGEWATCH_SCHEDULER_LEASE_SECONDS": "3",
        "PLEDGEWATCH_COLLECT_MAX_ITEMS_PER_RUN": str(CAP),
        "PLEDGEWATCH_COLLECT_CHUNK_ITEMS": str(CHUNK),
        "PLEDGEWATCH_LOG_LEVEL": "INFO",
    }
    statuses: list[int] = []
    progress: set[int] = set()
    interleaved = 0
    with running_server(db_url, log, settings) as base:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        run = _latest_run(base, keys["admin"])
        while run is None or run["outcome"] == "running":
            assert time.monotonic() < deadline, "the run never ended: " + log.read_text()[-3000:]
            written = httpx.post(
                f"{base}/api/v1/pledges",
                json=pledge_body(id=f"us-cn-written-during-poll-{len(statuses)}"),
                headers=keys["analyst"],
                timeout=120,
            )
            statuses.append(written.status_code)
            after = _latest_run(base, keys["admin"])
            if after is not None and after["outcome"] == "running":
                progress.add(after["items_ingested"])
                # Started after some chunk had committed, answered before the run ended:
                # this write went in between the run's transactions.
                if run is not None and 0 < run["items_ingested"] < CAP:
                    interleaved += 1
            run = after
        leading = _is_leader(base)

    output = log.read_text()
    # The leader kept its lock all along, and nothing waited on a locked database.
    for trouble in ("leader lock lost", "renewal failed", "database is locked"):
        assert trouble not in output, output[-5000:]
    assert output.count("leader: running the jobs") == 1, output[-5000:]
    assert leading
    assert set(statuses) == {201}, f"{statuses.count(201)} of {len(statuses)} writes succeeded"
    assert run["outcome"] == "partial", run
    assert (run["items_seen"], run["items_ingested"], run["items_left"]) == (ROWS, CAP, ROWS - CAP)
    assert (run["evidence_added"], run["links_added"]) == (CAP, CAP)
    assert run["error"] is None
    with database.transaction(write=False) as session:
        assert (session.scalar(select(func.count()).select_from(Evidence)) or 0) >= CAP
    # Seen committing chunk by chunk, with API writes in between.
    assert len({value for value in progress if 0 < value < CAP}) >= 2, sorted(progress)
    assert all(value % CHUNK == 0 for value in progress), sorted(progress)
    assert interleaved >= 1
