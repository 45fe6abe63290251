"""The scheduler service: wait for the leader lock, then run APScheduler until it is lost.

One background thread does it all: followers poll the lock, the leader renews
it; on losing it the leader stops scheduling at once, waits for its running
jobs, and goes back to waiting. ``pledgewatch serve`` runs one in its lifespan
(unless PLEDGEWATCH_SCHEDULER_ENABLED=false) and ``pledgewatch scheduler`` runs
one alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR  # type: ignore[import-untyped]
from apscheduler.executors.base import run_job  # type: ignore[import-untyped]
from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.jobstores.base import BaseJobStore  # type: ignore[import-untyped]
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.schedulers.base import STATE_STOPPED  # type: ignore[import-untyped]

from app.clock import Clock, SystemClock
from app.collectors.admission import no_admission
from app.collectors.collect import CollectContext, own_addresses
from app.config import Settings
from app.db import Database
from app.logs import LogThrottle
from app.metrics import SCHEDULER_JOBS, SCHEDULER_LEADER
from app.scheduler.jobs import SchedulerContext, job_family, register_jobs, run_once
from app.scheduler.lock import LeaderLock, leader_lock, make_holder
from app.system.schema import inspect_schema

log = logging.getLogger("pledgewatch.scheduler")

WORKERS = 20
JOB_TABLE = "apscheduler_jobs"
# APScheduler logs every failed run of a job here, traceback and all: while the database
# is down that is every job, every tick. Throttled to one line per failure a minute.
_JOB_ERRORS = logging.getLogger("apscheduler.executors.default")
_JOB_ERRORS_THROTTLE = LogThrottle()


class _SharedEngineJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The SQLAlchemy job store on an engine the service does not own.

    The stock store disposes its engine on shutdown, which would reset the pool
    of the Database it shares; the Database's owner disposes it instead.
    """

    def start(self, scheduler: Any, alias: str) -> None:
        # Skip the stock CREATE TABLE: Alembic owns the schema, and a table made
        # here on a database not yet migrated would make the migration fail.
        BaseJobStore.start(self, scheduler, alias)

    def shutdown(self) -> None:
        pass


class _Scheduler(BackgroundScheduler):  # type: ignore[misc]
    def _process_jobs(self) -> float | None:
        # APScheduler 3 runs one more round after shutdown(), with its executors
        # gone: due jobs fail to start, yet their next run is moved on in the job
        # store, so the next leader would never run that tick.
        if self.state == STATE_STOPPED:
            return None
        wait: float | None = super()._process_jobs()
        return wait


def build_scheduler(database: Database, executor: Any = None) -> Any:
    """A BackgroundScheduler on the database's job store, with our defaults (not started)."""
    return _Scheduler(
        jobstores={"default": _SharedEngineJobStore(engine=database.engine, tablename=JOB_TABLE)},
        executors={"default": executor if executor is not None else ThreadPoolExecutor(WORKERS)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            # Late is better than never: a tick missed while no one led runs once
            # (coalesced) when a leader comes.
            "misfire_grace_time": None,
        },
        timezone=UTC,
    )


class TickExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """A thread pool executor that runs every job through ``run_once``.

    APScheduler does not tell a job its scheduled time; the executor knows it,
    so this is where a tick is claimed before the job runs.
    """

    def __init__(self, context: SchedulerContext, max_workers: int = WORKERS) -> None:
        super().__init__(max_workers)
        self._context = context

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def done(future: Future[list[Any]]) -> None:
            error = future.exception()
            if error is not None:
                self._run_job_error(job.id, error, error.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        future = self._pool.submit(
            _run_ticks, self._context, job, job._jobstore_alias, run_times, self._logger.name
        )
        future.add_done_callback(done)

    def wait(self) -> None:
        """Wait for the running jobs to end (outside the scheduler's locks)."""
        self._pool.shutdown(wait=True)


def _run_ticks(
    context: SchedulerContext,
    job: Any,
    jobstore_alias: str,
    run_times: list[datetime],
    logger_name: str,
) -> list[Any]:
    events: list[Any] = []
    for run_time in run_times:
        ran: list[Any] = []

        def body(at: datetime = run_time, into: list[Any] = ran) -> None:
            # run_job catches the job's exceptions and reports them as events.
            into.extend(run_job(job, jobstore_alias, [at], logger_name))

        if run_once(context, job.id, run_time, body):
            failed = any(event.code == EVENT_JOB_ERROR for event in ran)
            SCHEDULER_JOBS.labels(job_family(job.id), "failed" if failed else "ok").inc()
            events.extend(ran)
    return events


class SchedulerService:
    """Leader election plus an APScheduler BackgroundScheduler for the leader."""

    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        clock: Clock | None = None,
        holder: str | None = None,
        lock: LeaderLock | None = None,
        collect_context: CollectContext | None = None,
        exempt_hosts: frozenset[str] | None = None,
        register: Callable[[Any, SchedulerContext], None] = register_jobs,
    ) -> None:
        self.settings = settings
        self._owns_database = database is None
        # Its own pool by default: twenty job threads must not starve the API's.
        self.database = database or Database(settings.database_url, pool_size=WORKERS // 2)
        self.holder = holder or make_holder()
        # The lease runs on wall time whatever clock the jobs are given.
        self.lock = lock or leader_lock(
            self.database,
            holder=self.holder,
            lease_seconds=settings.scheduler_lease_seconds,
            # In `serve`, the lease's writes queue at the API's gates like the polls' chunks.
            admission=collect_context.admission if collect_context is not None else no_admission,
        )
        self.context = SchedulerContext(
            settings=settings,
            database=self.database,
            clock=clock or SystemClock(),
            holder=self.holder,
            exempt_hosts=own_addresses(settings) if exempt_hosts is None else exempt_hosts,
            collect_context=collect_context,
        )
        self._register = register
        self._throttle = LogThrottle()
        # Renew three times per lease: one slow renewal never loses it.
        self._interval = settings.scheduler_lease_seconds / 3
        self._stopping = threading.Event()
        self._leading = threading.Event()
        self._thread: threading.Thread | None = None
        self._scheduler: Any = None
        self._executor: TickExecutor | None = None

    @property
    def is_leader(self) -> bool:
        """True while this process runs the jobs."""
        return self._leading.is_set()

    def wait_until_leader(self, timeout: float) -> bool:
        """Block until this process leads (or ``timeout`` seconds pass)."""
        return self._leading.wait(timeout)

    def start(self) -> None:
        """Start the background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("scheduler service already started")
        self._thread = threading.Thread(
            target=self._run, name=f"scheduler-{self.holder}", daemon=True
        )
        apscheduler_log = logging.getLogger("apscheduler")
        if apscheduler_log.level == logging.NOTSET:
            # Two INFO lines per run ("Running job", "executed successfully") would
            # drown the one structured line each job writes; errors still show.
            apscheduler_log.setLevel(logging.WARNING)
        if _JOB_ERRORS_THROTTLE not in _JOB_ERRORS.filters:
            _JOB_ERRORS.addFilter(_JOB_ERRORS_THROTTLE)
        self._thread.start()
        log.info("scheduler started", extra={"holder": self.holder})

    def stop(self, timeout: float = 60) -> None:
        """Stop scheduling, wait for running jobs, and give up the lock."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.context.close()
        if self._owns_database:
            self.database.dispose()

    @property
    def alive(self) -> bool:
        """False once the background thread has ended."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._scheduler is None:
                    if self._schema_ready() and self.lock.try_acquire():
                        self._lead()
                elif not self.lock.renew():
                    log.warning(
                        "leader lock lost; stopping the jobs", extra={"holder": self.holder}
                    )
                    self._step_down()
                self._stopping.wait(self._interval)
        except Exception:
            log.exception("scheduler service crashed")
        finally:
            self._step_down()
            self.lock.release()
            log.info("scheduler stopped", extra={"holder": self.holder})

    def _schema_ready(self) -> bool:
        """Is the database migrated to this code's schema? Jobs need its tables."""
        state = inspect_schema(self.database.engine.connect)
        if state.ready:
            self._throttle.recovered(log, "schema", "scheduler: the schema is at head")
        else:
            self._throttle.failed(log, "schema", "scheduler waiting: %s", state.describe())
        return state.ready

    def _lead(self) -> None:
        self.context.stop_requested.clear()
        executor = TickExecutor(self.context)
        scheduler = build_scheduler(self.database, executor)
        self._scheduler, self._executor = scheduler, executor
        self.context.scheduler = scheduler
        try:
            # Paused while the jobs are (re)registered, so none runs half-set-up.
            scheduler.start(paused=True)
            self._register(scheduler, self.context)
            scheduler.resume()
        except Exception:
            self._throttle.failed(
                log,
                "lead",
                "scheduler could not start; will retry",
                level=logging.ERROR,
                exc_info=True,
            )
            self._step_down()
            return
        self._leading.set()
        SCHEDULER_LEADER.set(1)
        log.info("leader: running the jobs", extra={"holder": self.holder})

    def _step_down(self) -> None:
        scheduler, executor = self._scheduler, self._executor
        self.context.stop_requested.set()
        self._scheduler = self._executor = None
        self.context.scheduler = None
        self._leading.clear()
        SCHEDULER_LEADER.set(0)
        if scheduler is not None and scheduler.running:
            # wait=False, then wait outside the scheduler's locks: a running job
            # that adds or removes jobs (sync-sources) would otherwise deadlock.
            try:
                scheduler.shutdown(wait=False)
            except Exception:
                log.exception("scheduler did not shut down cleanly")
        if executor is not None:
            executor.wait()
