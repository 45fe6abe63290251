"""The application factory: routers, middleware, error handling and the lifespan."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import __version__
from app.clock import Clock, SystemClock
from app.collectors.admission import LoopAdmission
from app.collectors.collect import CollectContext, collect_source, own_addresses
from app.config import Settings, get_settings
from app.db import Database
from app.demo.router import router as demo_router
from app.domain.events.router import router as events_router
from app.domain.events.stream import EventBroadcaster
from app.domain.evidence.router import router as evidence_router
from app.domain.idempotency.sweeper import ExpiredKeySweeper
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.router import router as keys_router
from app.domain.ledger.router import router as ledger_router
from app.domain.ledger.verifier import LedgerVerifier
from app.domain.pledges.router import router as pledges_router
from app.domain.proposals.router import router as proposals_router
from app.domain.sources.router import router as sources_router
from app.domain.status.router import (
    StatusFastPath,
    start_revision_watch,
    stop_revision_watch,
)
from app.domain.status.router import router as status_router
from app.domain.status.view_cache import StatusViewCache
from app.domain.transfer.router import router as transfer_router
from app.domain.webhooks.router import router as webhooks_router
from app.gates import DatabaseGates
from app.http.cors import CorsMiddleware
from app.http.ratelimit import RateLimitMiddleware, RateLimits, document_rate_limits
from app.http.security import SecurityHeadersMiddleware, docs_policies
from app.http.shedding import LoadShedMiddleware
from app.http.values import parse_origins
from app.logs import configure_logging
from app.middleware import BodyLimitMiddleware, IdempotencyMiddleware, RequestContextMiddleware
from app.migrate import head_revision
from app.net import SafeFetcher
from app.problems import DatabaseUnavailableMiddleware, Problem, install
from app.system.router import router as system_router

API_PREFIX = "/api/v1"

DESCRIPTION = """
Pledgewatch records pledges between governments, attaches dated evidence to each,
and keeps an auditable, bitemporal history of each pledge's status.

**Auth**: `Authorization: Bearer <api key>`. Roles: viewer < collector < analyst < admin.
Reads are public unless `PLEDGEWATCH_PUBLIC_READ=false`.

**Errors** are `application/problem+json` (RFC 9457) with an `errors` list naming each bad field.

**Retries**: every `POST` accepts `Idempotency-Key`; the same key and body replay the first
answer (`Idempotent-Replayed: true`), another body with the same key is `422`, and a retry while
the first is still running is `409`.

**Lists** answer `{"items": [...], "next_cursor": ...}`; pass `cursor=<next_cursor>` for the
next page.
"""


def load_sources(database: Database, path: Path, clock: Clock) -> None:
    """Create the sources of ``PLEDGEWATCH_SOURCES_FILE`` that do not exist yet."""
    from app.domain.sources.service import load_sources_file

    with database.transaction() as session:
        created = load_sources_file(session, path, now=clock.now())
    if created:
        logging.getLogger("pledgewatch.sources").info(
            "sources loaded", extra={"file": str(path), "created": created}
        )


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
) -> FastAPI:
    """Build the app. Shared resources are made in the lifespan, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, as_json=settings.log_json)
        owned = database is None
        app.state.settings = settings
        app.state.clock = clock or SystemClock()
        app.state.database = database or Database(
            settings.database_url, pool_size=settings.db_pool_size
        )
        app.state.gates = DatabaseGates(
            connections=settings.db_pool_size * 2,
            single_writer=app.state.database.dialect == "sqlite",
            queue_max=settings.db_queue_max,
            queue_timeout_seconds=settings.db_queue_timeout_seconds,
        )
        app.state.schema_head = head_revision()
        app.state.keys = KeyDirectory(
            database=app.state.database, gates=app.state.gates, clock=app.state.clock
        )
        await app.state.keys.start()  # records the keys' last use about once a minute
        app.state.status_cache = StatusViewCache(
            settings.status_cache_entries, max_bytes=settings.status_cache_mb * 1024 * 1024
        )
        app.state.status_builds = threading.BoundedSemaphore(settings.status_builds)
        # GET /ledger/verify: one run at a time, in its own thread and on its own connection.
        app.state.ledger_verifier = LedgerVerifier.on_database(
            app.state.database.url,
            clock=app.state.clock,
            reuse_seconds=settings.ledger_verify_reuse_seconds,
            pause_seconds=settings.ledger_verify_pause_ms / 1000,
        )
        app.state.rate_limits = (
            RateLimits(settings, api_prefix=API_PREFIX) if settings.rate_limits_enabled else None
        )
        app.state.fetcher = SafeFetcher(
            allow_private=settings.allow_private_source_hosts,
            clock=app.state.clock,
            exempt_hosts=own_addresses(settings),
        )
        app.state.collect_context = CollectContext(
            database=app.state.database,
            fetcher=app.state.fetcher,
            clock=app.state.clock,
            # Polls (the scheduler's and POST /sources/{id}/run) queue at the API's gates.
            admission=LoopAdmission(app.state.gates, asyncio.get_running_loop()),
            max_items=settings.collect_max_items_per_run,
            chunk_items=settings.collect_chunk_items,
        )
        # POST /sources/{id}/run polls through this (the sources package imports no poller).
        app.state.poll_source = partial(collect_source, app.state.collect_context)
        if settings.sources_file is not None:
            load_sources(app.state.database, settings.sources_file, app.state.clock)
        app.state.scheduler = None
        if settings.scheduler_enabled:
            from app.scheduler.service import SchedulerService

            # Each worker starts one; the leader lock lets only one of them run jobs.
            app.state.scheduler = SchedulerService(
                settings, clock=app.state.clock, collect_context=app.state.collect_context
            )
            app.state.scheduler.start()
        # Wakes /events streams on every ledger commit, here or in other processes.
        app.state.events = EventBroadcaster(
            database=app.state.database,
            gates=app.state.gates,
            poll_seconds=settings.events_poll_seconds,
            max_streams=settings.sse_max_clients,
        )
        await app.state.events.start()
        app.state.idempotency_sweeper = ExpiredKeySweeper(
            database=app.state.database,
            gates=app.state.gates,
            clock=app.state.clock,
            ttl=timedelta(hours=settings.idempotency_ttl_hours),
        )
        app.state.idempotency_sweeper.start()
        # The revision /status polls are answered with, kept current without a read each.
        await start_revision_watch(app)
        try:
            yield
        finally:
            await stop_revision_watch(app)
            await app.state.idempotency_sweeper.stop()
            await app.state.events.stop()
            await app.state.keys.stop()
            await app.state.ledger_verifier.close()
            if app.state.scheduler is not None:
                await asyncio.to_thread(app.state.scheduler.stop)
            app.state.fetcher.close()
            if app.state.rate_limits is not None:
                app.state.rate_limits.close()
            if owned:
                app.state.database.dispose()

    app = FastAPI(
        title="Pledgewatch",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install(app)
    if settings.bench_mode:
        from app.domain.status.reference import router as reference_router

        # First, so that routing costs them the least: they are the ceilings.
        app.include_router(reference_router)
    app.include_router(pledges_router, prefix=API_PREFIX)
    app.include_router(evidence_router, prefix=API_PREFIX)
    app.include_router(status_router, prefix=API_PREFIX)
    app.include_router(sources_router, prefix=API_PREFIX)
    app.include_router(proposals_router, prefix=API_PREFIX)
    app.include_router(webhooks_router, prefix=API_PREFIX)
    app.include_router(keys_router, prefix=API_PREFIX)
    app.include_router(transfer_router, prefix=API_PREFIX)
    app.include_router(events_router, prefix=API_PREFIX)
    app.include_router(ledger_router, prefix=API_PREFIX)
    app.include_router(system_router)
    if settings.demo_mode:
        app.include_router(demo_router)

    # Innermost: the dashboards' polls of /status, answered before routing (logged and
    # counted by the middleware added after it, like every request).
    app.add_middleware(StatusFastPath, path=f"{API_PREFIX}/status")
    # Outermost first: ids and logs see everything, including 413s and replays.
    app.add_middleware(IdempotencyMiddleware)
    # A database outage met by the middleware inside (idempotency keys) is a 503 too.
    app.add_middleware(DatabaseUnavailableMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    # Past the requests a process can work on at once, the next one is refused on arrival
    # (after its client's rate limit: a client over budget is told 429, not 503).
    app.add_middleware(
        LoadShedMiddleware,
        max_in_flight=settings.max_in_flight,
        exempt=("/healthz", "/readyz", "/metrics", f"{API_PREFIX}/events"),
    )
    # Budgets are spent before anything reads a body or the database; the CORS and security
    # headers go on every answer, 429s and preflights included.
    if settings.rate_limits_enabled:
        app.add_middleware(RateLimitMiddleware)
    app.add_middleware(
        CorsMiddleware,
        api_prefix=API_PREFIX,
        write_origins=parse_origins(settings.cors_write_origins),
    )
    app.add_middleware(SecurityHeadersMiddleware, page_policies=docs_policies(app))
    app.add_middleware(RequestContextMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem_schema.pop("$defs", {}))
            schemas["Problem"] = problem_schema
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}, {}]
            document_rate_limits(schema, API_PREFIX)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
