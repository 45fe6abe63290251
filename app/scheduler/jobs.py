"""The scheduled jobs, and the wrapper that lets each tick of a job run at most once.

APScheduler stores jobs by reference (``app.scheduler.jobs:evaluate``), so every
job is a module-level function. What a job needs (the database, the clock, the
fetcher) reaches it through ``current_context()``, set by the executor for the
duration of the job, never through pickled arguments.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy.exc import SQLAlchemyError

from app.clock import Clock
from app.collectors.collect import CollectContext, collect_source
from app.config import Settings
from app.db import Database
from app.domain.sources.service import polling_schedule
from app.domain.webhooks.deliver import run as run_deliveries
from app.logs import LogThrottle
from app.metrics import SCHEDULER_JOBS
from app.net import SafeFetcher
from app.scheduler.models import JobRun
from app.sql import insert_or_ignore

log = logging.getLogger("pledgewatch.scheduler")
# Ticks come every few seconds: a database that cannot record them is reported once a minute.
_UNRECORDED = LogThrottle()

EVALUATE = "evaluate"
SYNC_SOURCES = "sync-sources"
COLLECT_PREFIX = "collect:"
DELIVER = "deliver"
# Jobs that guard each unit of their work themselves, so a tick that runs twice does no harm:
# they run without a job_run row per tick (every 5 s, that would be 17,280 rows a day).
SELF_GUARDED_JOBS = frozenset({DELIVER})
# Sources are added, changed and disabled through the API at any time; the
# scheduler catches up within this long.
SYNC_SOURCES_EVERY_SECONDS = 30


@dataclass
class SchedulerContext:
    """What jobs need, built once per scheduler process."""

    settings: Settings
    database: Database
    clock: Clock
    holder: str
    # The demo feed is served by the app itself: its host:port is the one
    # address the SSRF guard lets through.
    exempt_hosts: frozenset[str] = frozenset()
    # Given by the app (shared with POST /sources/{id}/run), or built on first use.
    collect_context: CollectContext | None = None
    # The running BackgroundScheduler, for jobs that add or remove jobs.
    scheduler: Any = None
    # Set while the service steps down (stopping, or the lock lost): long jobs end early.
    stop_requested: threading.Event = field(default_factory=threading.Event)
    _owns_fetcher: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def collector(self) -> CollectContext:
        """The collect context, with one shared safe HTTP client for every poll."""
        with self._lock:
            if self.collect_context is None:
                fetcher = SafeFetcher(
                    allow_private=self.settings.allow_private_source_hosts,
                    clock=self.clock,
                    exempt_hosts=self.exempt_hosts,
                )
                self.collect_context = CollectContext(
                    database=self.database,
                    fetcher=fetcher,
                    clock=self.clock,
                    max_items=self.settings.collect_max_items_per_run,
                    chunk_items=self.settings.collect_chunk_items,
                )
                self._owns_fetcher = True
            return self.collect_context

    def close(self) -> None:
        """Close what this context built itself (not what it was given)."""
        with self._lock:
            if self._owns_fetcher and self.collect_context is not None:
                self.collect_context.fetcher.close()
                self.collect_context = None
                self._owns_fetcher = False


_CURRENT: ContextVar[SchedulerContext] = ContextVar("pledgewatch_scheduler_context")


def current_context() -> SchedulerContext:
    """The context of the job running in this thread."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("no scheduler context: jobs run only through run_once") from None


def job_family(job_id: str) -> str:
    """``collect:<source>`` -> ``collect``: a label of bounded cardinality for metrics."""
    return job_id.split(":", 1)[0]


def tick_time(scheduled_for: datetime) -> datetime:
    """The tick's identity: UTC, to the millisecond.

    Run times travel through the job store as float timestamps; whole
    milliseconds make every process see the very same value.
    """
    at = scheduled_for.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def claim_tick(context: SchedulerContext, job_id: str, scheduled_for: datetime) -> bool:
    """Record that this process runs ``job_id`` for this tick; False if it already ran.

    The unique (job_id, scheduled_for) constraint decides, in its own committed
    transaction, before the job does anything: two processes (an old leader that
    has not yet noticed it lost the lock, and its successor) cannot both win.
    """
    with context.database.transaction() as session:
        inserted = session.execute(
            insert_or_ignore(session, JobRun).values(
                job_id=job_id,
                scheduled_for=tick_time(scheduled_for),
                started_at=context.clock.now(),
                holder=context.holder,
            )
        ).rowcount  # type: ignore[attr-defined]
    return bool(inserted)


def run_once(
    context: SchedulerContext, job_id: str, scheduled_for: datetime, body: Callable[[], None]
) -> bool:
    """Run ``body`` for this tick unless the tick already ran; True when it ran here.

    At most once: a tick claimed by a process that then died is not run again. Jobs in
    ``SELF_GUARDED_JOBS`` are not recorded: the leader lock keeps them to one process, and
    their own claims make a second run of a tick harmless.
    """
    if job_id in SELF_GUARDED_JOBS:
        token = _CURRENT.set(context)
        try:
            body()
        finally:
            _CURRENT.reset(token)
        return True
    try:
        claimed = claim_tick(context, job_id, scheduled_for)
    except SQLAlchemyError:
        # Without the record there is no guarantee; the next tick will come.
        _UNRECORDED.failed(
            log,
            job_family(job_id),
            "tick not run: cannot record it",
            level=logging.ERROR,
            exc_info=True,
            extra={"job_id": job_id},
        )
        SCHEDULER_JOBS.labels(job_family(job_id), "unrecorded").inc()
        return False
    _UNRECORDED.recovered(log, job_family(job_id), "ticks are recorded again")
    if not claimed:
        log.info(
            "tick already ran; skipped",
            extra={"job_id": job_id, "scheduled_for": scheduled_for.isoformat()},
        )
        SCHEDULER_JOBS.labels(job_family(job_id), "skipped").inc()
        return False
    token = _CURRENT.set(context)
    try:
        body()
    finally:
        _CURRENT.reset(token)
    return True


# --- the jobs -----------------------------------------------------------------


def evaluate() -> None:
    """Apply the status rules to every pledge (the rules log what they did)."""
    from app.domain.proposals.rules import evaluate as apply_rules

    context = current_context()
    # A session of its own, not one transaction: the rules commit chunk by chunk so
    # that the API's writers never wait long.
    session = context.database.session(write=True)
    try:
        apply_rules(session, context.clock.now())
    finally:
        session.close()


def collect(source_id: str) -> None:
    """Poll one source (its run records the outcome; a bad feed never raises here)."""
    context = current_context()
    # Between chunks, a run stops when the scheduler does: the rest waits for the next run.
    collect_source(context.collector(), source_id, should_stop=context.stop_requested.is_set)


def deliver() -> None:
    """Queue new events for every webhook and send the deliveries that are due."""
    context = current_context()
    run_deliveries(context.database, context.collector().fetcher, context.clock, context.settings)


def sync_sources() -> None:
    """Keep one ``collect:<id>`` job per enabled source, at its (backed-off) interval."""
    context = current_context()
    if context.scheduler is None or not context.scheduler.running:
        return
    reconcile_collect_jobs(context.scheduler, context.database, context.clock.now())


def reconcile_collect_jobs(scheduler: Any, database: Database, now: datetime) -> None:
    """Add, reschedule and remove collect jobs so that they match the enabled sources.

    The sources service says each source's interval (backed off while it fails) and when
    its next poll is due. A job whose interval is unchanged is left alone, so its next run
    survives restarts and syncs; a new one runs now if the source was never polled (or is
    overdue), else when its next poll is due.
    """
    with database.transaction(write=False) as session:
        schedules = polling_schedule(session)
    wanted = {f"{COLLECT_PREFIX}{plan.source_id}": plan for plan in schedules}
    existing = {job.id: job for job in scheduler.get_jobs() if job.id.startswith(COLLECT_PREFIX)}
    for job_id in existing.keys() - wanted.keys():
        scheduler.remove_job(job_id)
        log.info("collect job removed", extra={"job_id": job_id})
    for job_id, plan in wanted.items():
        job = existing.get(job_id)
        if job is not None and getattr(job.trigger, "interval", None) == plan.interval:
            continue
        first = now if plan.due_at is None else max(now, plan.due_at)
        scheduler.add_job(
            collect,
            IntervalTrigger(seconds=plan.interval.total_seconds(), timezone=UTC),
            id=job_id,
            name=job_id,
            args=[plan.source_id],
            replace_existing=True,
            next_run_time=first,
        )
        log.info(
            "collect job scheduled",
            extra={
                "job_id": job_id,
                "every_seconds": plan.interval.total_seconds(),
                "next_run": first.isoformat(),
            },
        )


def ensure_interval_job(
    scheduler: Any,
    job_id: str,
    func: Callable[..., None],
    *,
    seconds: float,
    next_run: datetime | None = None,
) -> None:
    """Add ``job_id`` with a fixed id, replacing any stored one, keeping its next run.

    ``replace_existing`` makes a restart neither lose nor double the job. Unless
    ``next_run`` says otherwise, the stored next run time is kept when the
    interval is unchanged, so a restart does not postpone the job either; a run
    missed while no scheduler was up runs once when one starts (coalesced).
    """
    interval = timedelta(seconds=seconds)
    stored = scheduler.get_job(job_id)
    if (
        next_run is None
        and stored is not None
        and getattr(stored.trigger, "interval", None) == interval
    ):
        next_run = stored.next_run_time
    options: dict[str, Any] = {} if next_run is None else {"next_run_time": next_run}
    scheduler.add_job(
        func,
        IntervalTrigger(seconds=seconds, timezone=UTC),
        id=job_id,
        name=job_id,
        replace_existing=True,
        **options,
    )


def register_jobs(scheduler: Any, context: SchedulerContext) -> None:
    """The jobs every leader runs, by fixed id."""
    ensure_interval_job(
        scheduler, EVALUATE, evaluate, seconds=context.settings.evaluate_every_seconds
    )
    ensure_interval_job(scheduler, DELIVER, deliver, seconds=context.settings.deliver_every_seconds)
    # Reconcile at once: a new leader should not wait to start polling sources.
    ensure_interval_job(
        scheduler,
        SYNC_SOURCES,
        sync_sources,
        seconds=SYNC_SOURCES_EVERY_SECONDS,
        next_run=context.clock.now(),
    )
