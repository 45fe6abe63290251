"""The application factory: routers, middleware, error handling and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import __version__
from app.clock import Clock, SystemClock
from app.config import Settings, get_settings
from app.db import Database
from app.domain.evidence.router import router as evidence_router
from app.domain.pledges.router import router as pledges_router
from app.domain.status.router import router as status_router
from app.domain.status.view_cache import StatusViewCache
from app.gates import DatabaseGates
from app.logs import configure_logging
from app.middleware import BodyLimitMiddleware, IdempotencyMiddleware, RequestContextMiddleware
from app.migrate import head_revision
from app.problems import Problem, install
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
        )
        app.state.schema_head = head_revision()
        app.state.status_cache = StatusViewCache(settings.status_cache_entries)
        try:
            yield
        finally:
            if owned:
                app.state.database.dispose()

    app = FastAPI(
        title="Pledgewatch",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install(app)
    app.include_router(pledges_router, prefix=API_PREFIX)
    app.include_router(evidence_router, prefix=API_PREFIX)
    app.include_router(status_router, prefix=API_PREFIX)
    app.include_router(system_router)

    # Outermost first: ids and logs see everything, including 413s and replays.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
