"""Target 4: bulk ingest through ``POST /evidence/batch`` against the storage ceiling.

The ceiling is SQLAlchemy Core ``executemany`` inserting the very rows the service
would store for the same items (identity computed, same columns) into the same
evidence table, one transaction per batch, in the same run. Those rows are then
deleted again (untimed) and the items are posted through the API, one batch after
another over one keep-alive connection, as an ingest job would.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Table, delete

from app.db import build_engine
from app.domain.evidence.identity import content_hash, url_key
from app.domain.evidence.models import Evidence
from bench.generate import SOURCES, STANCES

BATCH = 1000


@dataclass(frozen=True, slots=True)
class IngestResult:
    items: int
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def batches(count: int, pledge_ids: list[str], *, now: datetime, seed: int = 4) -> list[list[Any]]:
    """``count`` batches of ``BATCH`` new items, each linked to one to three pledges."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    made: list[list[Any]] = []
    run = now.strftime("%Y%m%d%H%M%S%f")
    for batch in range(count):
        items = []
        for number in range(BATCH):
            name, source_type, reliability = SOURCES[rng.randrange(len(SOURCES))]
            published = now - timedelta(days=rng.randrange(1, 365), seconds=rng.randrange(86400))
            wanted = rng.choice((1, 2, 3))
            linked: list[str] = []
            while len(linked) < min(wanted, len(pledge_ids)):
                pledge_id = pledge_ids[rng.randrange(len(pledge_ids))]
                if pledge_id not in linked:
                    linked.append(pledge_id)
            items.append(
                {
                    "title": f"Ingested item {run}-{batch}-{number} from {name}",
                    "url": f"https://ingest.example.org/{run}/{batch}/{number}",
                    "summary": f"A new item for the ingest benchmark ({batch}, {number}).",
                    "published_at": published.replace(microsecond=0)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "source_name": name,
                    "source_type": source_type,
                    "reliability": reliability,
                    "links": [
                        {"pledge_id": pledge_id, "stance": STANCES[rng.randrange(len(STANCES))]}
                        for pledge_id in linked
                    ],
                }
            )
        made.append(items)
    return made


def storage_rows(items: list[Any], *, actor: str, now: datetime) -> list[dict[str, Any]]:
    """The evidence rows the service stores for ``items`` (as its ingest builds them)."""
    rows = []
    for item in items:
        published = datetime.fromisoformat(item["published_at"].replace("Z", "+00:00"))
        rows.append(
            {
                "title": item["title"],
                "url": item["url"],
                "url_key": url_key(item["url"]),
                "summary": item["summary"],
                "published_at": published,
                "source_name": item["source_name"],
                "source_type": item["source_type"],
                "reliability": item["reliability"],
                "content_hash": content_hash(item["title"], item["summary"], published),
                "collected_by": actor,
                "recorded_at": now,
                "fetched_at": None,
                "observed_value": None,
                "target_met": None,
            }
        )
    return rows


def core_ceiling(database_url: str, row_batches: list[list[dict[str, Any]]]) -> IngestResult:
    """Insert each batch with Core ``executemany`` in its own transaction; then remove them."""
    table: Table = Evidence.__table__  # type: ignore[assignment]
    engine = build_engine(database_url, pool_size=1)
    try:
        elapsed = 0.0
        for rows in row_batches:
            started = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(table.insert(), rows)
            elapsed += time.perf_counter() - started
        with engine.begin() as connection:
            for rows in row_batches:
                connection.execute(
                    delete(table).where(table.c.content_hash.in_([r["content_hash"] for r in rows]))
                )
    finally:
        engine.dispose()
    return IngestResult(items=sum(len(rows) for rows in row_batches), seconds=elapsed)


class IngestError(RuntimeError):
    """The API refused or failed a batch: the figure would mean nothing."""


def through_api(base_url: str, api_key: str, item_batches: list[list[Any]]) -> IngestResult:
    """Post each batch in turn over one connection; every item must come back ``201``."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as client:
        started = time.perf_counter()
        for items in item_batches:
            response = client.post("/api/v1/evidence/batch", json={"items": items})
            if response.status_code != 200:
                raise IngestError(f"batch refused: {response.status_code} {response.text[:500]}")
            statuses = {result["status"] for result in response.json()["results"]}
            if statuses != {201}:
                raise IngestError(f"not every item was new: statuses {sorted(statuses)}")
        elapsed = time.perf_counter() - started
    return IngestResult(items=sum(len(items) for items in item_batches), seconds=elapsed)


def utc_now() -> datetime:
    return datetime.now(UTC)
