"""One poll of one source: fetch, parse, match, ingest in chunks, and record the run.

This module orchestrates; the sources service records (the run begun, each chunk's
progress, how it ended, the source's polling state) and the evidence service ingests,
each in a short transaction opened here. A bad feed fails its own run, recorded with
the error in words; nothing here raises into the scheduler or the API. A big feed
holds nothing others need while it is fetched and parsed, and ingests in short
transactions that take their turn with the API's writes, at most so many items a
run (the next run goes on).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from app.clock import Clock
from app.collectors.admission import Admission, no_admission
from app.collectors.feeds import FeedError, FeedItem, read_feed
from app.collectors.match import matches
from app.config import Settings
from app.db import Database
from app.domain.evidence.identity import url_key
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.evidence.schemas import EvidenceFields, LinkIn
from app.domain.evidence.service import Draft, ingest
from app.domain.pledges.models import Pledge
from app.domain.sources.service import (
    FeedSettings,
    Poll,
    RunReport,
    begin_poll,
    finish_run,
    record_progress,
)
from app.metrics import EVIDENCE_COLLECTED, SOURCE_RUNS
from app.net import FetchError, FetchResult, SafeFetcher

log = logging.getLogger("pledgewatch.collect")

# Items whose done-ness one read looks up (a query of their hashes and URLs, then links).
_LOOKUP_BLOCK = 500


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
    # Where each transaction of a poll waits for its turn: the app's gates in `serve`.
    admission: Admission = no_admission
    # A run ingests at most max_items items (the rest next run), chunk_items per transaction.
    max_items: int = 10_000
    chunk_items: int = 500


@dataclass
class RunResult(RunReport):
    """What one poll did: its run's report, and in how many transactions it ingested."""

    chunks: int = 0


@dataclass(frozen=True)
class _Identity:
    """How ingest recognises an item it already has: its URL first, then its content."""

    content_hash: str
    url: str | None
    url_key: str | None


def collect_source(
    context: CollectContext,
    source_id: str,
    run_id: int | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult | None:
    """Poll ``source_id`` once and record the run.

    ``run_id`` continues a run already recorded (``POST /sources/{id}/run``);
    without it a run is recorded here. None when the source is gone, or disabled
    and not asked for explicitly. The feed is fetched and parsed outside any
    transaction, then ingested in chunks of ``context.chunk_items``, each in a
    short transaction of its own, at most ``context.max_items`` per run: the run
    says ``partial`` and how many items it left, and the next run goes on with them
    (items already ingested are recognised and skipped). ``should_stop`` is asked
    between chunks (the scheduler stopping, or no longer leading).
    """
    started = time.perf_counter()
    poll = _begin(context, source_id, run_id)
    if poll is None:
        return None
    config, run_id = poll.source, poll.run_id
    try:
        fetched = context.fetcher.fetch(
            config.url, etag=config.etag, last_modified=config.last_modified
        )
    except FetchError as error:
        result = RunResult(outcome="failed", http_status=error.status_code, error=str(error))
    else:
        result = _ingest_fetched(context, config, run_id, fetched, should_stop or _never)

    _finish(context, source_id, run_id, result)
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
            "items_ingested": result.items_ingested,
            "items_left": result.items_left,
            "chunks": result.chunks,
            "evidence_added": result.evidence_added,
            "links_added": result.links_added,
            "error": result.error,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return result


def _never() -> bool:
    return False


def _begin(context: CollectContext, source_id: str, run_id: int | None) -> Poll | None:
    writes = run_id is None  # only a new run is written; a run already recorded is read
    with context.admission(write=writes), context.database.transaction(write=writes) as session:
        return begin_poll(session, source_id, run_id=run_id, now=context.clock.now())


def _ingest_fetched(
    context: CollectContext,
    config: FeedSettings,
    run_id: int,
    fetched: FetchResult,
    should_stop: Callable[[], bool],
) -> RunResult:
    if fetched.not_modified:
        return RunResult(
            outcome="not_modified",
            http_status=fetched.status_code,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
        )
    try:
        # Outside any transaction: parsing a big feed holds nothing another writer needs.
        feed = read_feed(config.kind, fetched.body, config.mapping, now=fetched.fetched_at)
    except FeedError as error:
        return RunResult(outcome="failed", http_status=fetched.status_code, error=str(error))
    result = RunResult(
        outcome="ok",
        http_status=fetched.status_code,
        items_seen=feed.seen,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
    )
    try:
        _ingest_in_chunks(
            context, config, run_id, feed.items, fetched.fetched_at, result, should_stop
        )
    except Exception as error:  # a bug or the database fails this run, never the scheduler
        log.exception("source run crashed", extra={"run_id": run_id})
        result.outcome = "failed"
        result.error = f"internal error: {type(error).__name__}"
    return result


def _ingest_in_chunks(
    context: CollectContext,
    config: FeedSettings,
    run_id: int,
    items: list[FeedItem],
    fetched_at: datetime,
    result: RunResult,
    should_stop: Callable[[], bool],
) -> None:
    """Ingest the items not yet ingested, a chunk per transaction, up to the run's cap."""
    with context.admission(write=False), context.database.transaction(write=False) as session:
        pledges = list(session.scalars(select(Pledge.id).where(Pledge.id.in_(config.pledges))))
    if not pledges:
        return
    matching = [
        item
        for item in items
        if matches(
            f"{item.title}\n{item.summary}",
            any_=list(config.match_any),
            all_=list(config.match_all),
            none=list(config.match_none),
        )
    ]
    identities = [_identity(item, config) for item in matching]
    pending = _not_yet_ingested(context, identities, pledges)
    # Whatever ends the run (the cap, a stop, a failure), what is left is what no chunk took.
    result.items_left = len(pending)
    chosen = pending[: context.max_items]
    for start in range(0, len(chosen), context.chunk_items):
        if should_stop():
            break
        drafts = [
            _draft(matching[i], identities[i], config, pledges, fetched_at)
            for i in chosen[start : start + context.chunk_items]
        ]
        _ingest_chunk(context, config, run_id, drafts, result)
    if result.items_left:
        result.outcome = "partial"


def _ingest_chunk(
    context: CollectContext,
    config: FeedSettings,
    run_id: int,
    drafts: list[Draft],
    result: RunResult,
) -> None:
    """One transaction: the chunk's items, and the run's progress with them."""
    with context.admission(write=True), context.database.transaction() as session:
        outcomes = ingest(
            session,
            drafts,
            actor=f"source:{config.id}",
            accepted=config.trusted,
            now=context.clock.now(),
        )
        added = sum(1 for outcome in outcomes if outcome.created)
        linked = sum(outcome.new_links for outcome in outcomes)
        record_progress(
            session, run_id, items=len(drafts), evidence_added=added, links_added=linked
        )
    # Counted once committed: the run's record never claims what was rolled back.
    result.items_ingested += len(drafts)
    result.items_left -= len(drafts)
    result.evidence_added += added
    result.links_added += linked
    result.chunks += 1


def _not_yet_ingested(
    context: CollectContext, identities: list[_Identity], pledges: list[str]
) -> list[int]:
    """The positions of the items still to ingest, in feed order, each item once.

    An item is done when the evidence it would be (by URL, else by content) exists and
    is linked to every one of the pledges. Looked up a block at a time, each in a short
    read: a feed read again costs one pass, whatever part of it is done.
    """
    pending: list[int] = []
    seen: set[str] = set()
    for start in range(0, len(identities), _LOOKUP_BLOCK):
        block: list[int] = []
        for index in range(start, min(start + _LOOKUP_BLOCK, len(identities))):
            keys = _keys(identities[index])
            if seen.isdisjoint(keys):  # a repeat within the feed goes with its first
                block.append(index)
            seen.update(keys)
        done = _done(context, [identities[i] for i in block], pledges)
        pending.extend(index for index, finished in zip(block, done, strict=True) if not finished)
    return pending


def _keys(identity: _Identity) -> list[str]:
    keys = [f"h:{identity.content_hash}"]
    if identity.url_key is not None:
        keys.append(f"u:{identity.url_key}")
    return keys


def _done(context: CollectContext, identities: list[_Identity], pledges: list[str]) -> list[bool]:
    hashes = [identity.content_hash for identity in identities]
    urls = [identity.url_key for identity in identities if identity.url_key is not None]
    with context.admission(write=False), context.database.transaction(write=False) as session:
        found = session.execute(
            select(Evidence.id, Evidence.url_key, Evidence.content_hash).where(
                or_(Evidence.content_hash.in_(hashes), Evidence.url_key.in_(urls))
            )
        ).all()
        by_url = {row.url_key: row.id for row in found if row.url_key is not None}
        by_hash = {row.content_hash: row.id for row in found}
        linked: dict[int, set[str]] = defaultdict(set)
        if found:
            for link in session.execute(
                select(EvidenceLink.evidence_id, EvidenceLink.pledge_id).where(
                    EvidenceLink.evidence_id.in_([row.id for row in found]),
                    EvidenceLink.pledge_id.in_(pledges),
                )
            ):
                linked[link.evidence_id].add(link.pledge_id)
    wanted = set(pledges)
    verdicts = []
    for identity in identities:
        evidence_id = (by_url.get(identity.url_key) if identity.url_key else None) or by_hash.get(
            identity.content_hash
        )
        verdicts.append(evidence_id is not None and linked[evidence_id] >= wanted)
    return verdicts


def _clean(text: str, limit: int) -> str:
    # Feeds carry what they like: NUL cannot be stored, and limits keep one item bounded.
    return text.replace("\x00", "").strip()[:limit]


def _identity(item: FeedItem, config: FeedSettings) -> _Identity:
    content_hash = item.content_hash
    if config.kind == "csv":
        # A row's text is only a date and a number: the same pair in another series is
        # another observation, so the series' address is part of what makes it unique.
        content_hash = hashlib.sha256(f"{config.url}\n{content_hash}".encode()).hexdigest()
    url = item.url if item.url and item.url.startswith(("http://", "https://")) else None
    if url is not None and (len(url) > 2048 or any(ch.isspace() for ch in url)):
        url = None
    return _Identity(content_hash=content_hash, url=url, url_key=url_key(url))


def _draft(
    item: FeedItem,
    identity: _Identity,
    config: FeedSettings,
    pledges: list[str],
    fetched_at: datetime,
) -> Draft:
    fields = EvidenceFields.model_validate(
        {
            "title": _clean(item.title, 1000) or "(untitled)",
            "url": identity.url,
            "summary": _clean(item.summary, 20_000),
            "published_at": min(item.published_at, fetched_at),
            "source_name": _clean(config.name, 200),
            "source_type": config.source_type,
            "reliability": config.reliability,
            "content_hash": identity.content_hash,
            "fetched_at": fetched_at,
        }
    )
    return Draft(
        fields=fields,
        links=[LinkIn.model_validate({"pledge_id": p, "stance": config.stance}) for p in pledges],
        url_key=identity.url_key,
        content_hash=identity.content_hash,
        observed_value=item.observed_value,
        target_met=item.target_met,
    )


def _finish(context: CollectContext, source_id: str, run_id: int, result: RunResult) -> None:
    now = context.clock.now()  # when the run ended, not when its record got its turn
    with context.admission(write=True), context.database.transaction() as session:
        finish_run(session, source_id, run_id, result, now=now)
