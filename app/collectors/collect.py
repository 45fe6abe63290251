"""One poll of one source: fetch, parse, match, ingest, and record the run.

A bad feed fails its own run, recorded with the error in words; nothing here
raises into the scheduler or the API.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from app.clock import Clock
from app.collectors.feeds import FeedError, FeedItem, read_feed
from app.collectors.fetch import FetchError, FetchResult
from app.collectors.match import matches
from app.config import Settings
from app.db import Database
from app.domain.evidence.identity import url_key
from app.domain.evidence.schemas import EvidenceFields, LinkIn
from app.domain.evidence.service import Draft, ingest
from app.domain.pledges.models import Pledge
from app.domain.sources.models import Source, SourceRun
from app.domain.sources.service import start_run
from app.metrics import EVIDENCE_COLLECTED, SOURCE_RUNS

if TYPE_CHECKING:
    from app.collectors.fetch import SafeFetcher

log = logging.getLogger("pledgewatch.collect")


def own_addresses(settings: Settings) -> frozenset[str]:
    """The host:port the private-address guard lets through: in demo mode only, the app's own,
    which serves the bundled sample feed."""
    return frozenset({settings.self_address}) if settings.demo_mode else frozenset()


@dataclass
class CollectContext:
    """What a poll needs, built once per process (in the app's lifespan or the scheduler)."""

    database: Database
    fetcher: SafeFetcher
    clock: Clock


@dataclass
class RunResult:
    outcome: str
    http_status: int | None = None
    items_seen: int = 0
    evidence_added: int = 0
    links_added: int = 0
    error: str | None = None
    # Conditional-GET state to keep for the next poll (only after a successful fetch).
    etag: str | None = None
    last_modified: str | None = None


def collect_source(
    context: CollectContext, source_id: str, run_id: int | None = None
) -> RunResult | None:
    """Poll ``source_id`` once and record the run.

    ``run_id`` continues a run already recorded (``POST /sources/{id}/run``);
    without it a run is recorded here. None when the source is gone, or disabled
    and not asked for explicitly.
    """
    database, clock = context.database, context.clock
    started = time.perf_counter()
    with database.transaction() as session:
        source = session.get(Source, source_id)
        if source is None or (run_id is None and not source.enabled):
            return None
        if run_id is None:
            run_id = start_run(session, source_id, now=clock.now()).id
        url, etag, last_modified = source.url, source.etag, source.last_modified

    try:
        fetched = context.fetcher.fetch(url, etag=etag, last_modified=last_modified)
    except FetchError as error:
        result = RunResult(outcome="failed", http_status=error.status_code, error=str(error))
    else:
        result = _ingest_fetched(context, source_id, fetched)

    _finish(database, clock, source_id, run_id, result)
    SOURCE_RUNS.labels(result.outcome).inc()
    EVIDENCE_COLLECTED.inc(result.evidence_added)
    log.info(
        "source run",
        extra={
            "source_id": source_id,
            "run_id": run_id,
            "outcome": result.outcome,
            "http_status": result.http_status,
            "items_seen": result.items_seen,
            "evidence_added": result.evidence_added,
            "links_added": result.links_added,
            "error": result.error,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return result


def _ingest_fetched(context: CollectContext, source_id: str, fetched: FetchResult) -> RunResult:
    if fetched.not_modified:
        return RunResult(
            outcome="not_modified",
            http_status=fetched.status_code,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
        )
    try:
        with context.database.transaction() as session:
            source = session.get_one(Source, source_id)
            feed = read_feed(source.kind, fetched.body, source.mapping, now=fetched.fetched_at)
            pledges = list(session.scalars(select(Pledge.id).where(Pledge.id.in_(source.pledges))))
            drafts = [
                _draft(item, source, pledges, fetched.fetched_at)
                for item in feed.items
                if matches(
                    f"{item.title}\n{item.summary}",
                    any_=source.match_any,
                    all_=source.match_all,
                    none=source.match_none,
                )
            ]
            outcomes = (
                ingest(
                    session,
                    drafts,
                    actor=f"source:{source_id}",
                    accepted=source.trusted,
                    now=context.clock.now(),
                )
                if drafts and pledges
                else []
            )
    except FeedError as error:
        return RunResult(outcome="failed", http_status=fetched.status_code, error=str(error))
    except Exception as error:  # a bug fails this run, never the scheduler
        log.exception("source run crashed", extra={"source_id": source_id})
        return RunResult(
            outcome="failed",
            http_status=fetched.status_code,
            error=f"internal error: {type(error).__name__}",
        )
    return RunResult(
        outcome="ok",
        http_status=fetched.status_code,
        items_seen=feed.seen,
        evidence_added=sum(1 for outcome in outcomes if outcome.created),
        links_added=sum(outcome.new_links for outcome in outcomes),
        etag=fetched.etag,
        last_modified=fetched.last_modified,
    )


def _clean(text: str, limit: int) -> str:
    # Feeds carry what they like: NUL cannot be stored, and limits keep one item bounded.
    return text.replace("\x00", "").strip()[:limit]


def _draft(item: FeedItem, source: Source, pledges: list[str], fetched_at: datetime) -> Draft:
    content_hash = item.content_hash
    if source.kind == "csv":
        # A row's text is only a date and a number: the same pair in another series is
        # another observation, so the series' address is part of what makes it unique.
        content_hash = hashlib.sha256(f"{source.url}\n{content_hash}".encode()).hexdigest()
    url = item.url if item.url and item.url.startswith(("http://", "https://")) else None
    if url is not None and (len(url) > 2048 or any(ch.isspace() for ch in url)):
        url = None
    fields = EvidenceFields.model_validate(
        {
            "title": _clean(item.title, 1000) or "(untitled)",
            "url": url,
            "summary": _clean(item.summary, 20_000),
            "published_at": min(item.published_at, fetched_at),
            "source_name": _clean(source.name, 200),
            "source_type": source.source_type,
            "reliability": source.reliability,
            "content_hash": content_hash,
            "fetched_at": fetched_at,
        }
    )
    return Draft(
        fields=fields,
        links=[LinkIn.model_validate({"pledge_id": p, "stance": source.stance}) for p in pledges],
        url_key=url_key(url),
        content_hash=content_hash,
        observed_value=item.observed_value,
        target_met=item.target_met,
    )


def _finish(
    database: Database, clock: Clock, source_id: str, run_id: int, result: RunResult
) -> None:
    now = clock.now()
    with database.transaction() as session:
        run = session.get(SourceRun, run_id)
        if run is not None:
            run.finished_at = now
            run.outcome = result.outcome
            run.http_status = result.http_status
            run.items_seen = result.items_seen
            run.evidence_added = result.evidence_added
            run.links_added = result.links_added
            run.error = result.error
        source = session.get(Source, source_id)
        if source is None:
            return
        source.last_run_at = now
        if result.outcome == "failed":
            source.consecutive_failures += 1
        else:
            source.consecutive_failures = 0
            source.last_success_at = now
            source.etag = result.etag
            source.last_modified = result.last_modified
