"""HTTP for status history, status changes and the dashboard view."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from app.clock import Clock
from app.db import Database
from app.deps import Analyst, ClockDep, Reader, SessionDep, SettingsDep
from app.domain.pledges.router import Cursor, Filters, Limit, PledgeId, etag_of
from app.domain.pledges.service import get_pledge
from app.domain.status import badge, service
from app.domain.status.revision import current_revision_and_head
from app.domain.status.schemas import StatusChangeIn, StatusChangeOut, StatusQuery, StatusView
from app.domain.status.view_cache import (
    RevisionState,
    RevisionWatch,
    StatusViewCache,
    accepts_gzip,
    gzip_etag,
    status_etag,
)
from app.errors import InvalidInput
from app.metrics import STATUS_CACHE, STATUS_CHANGES
from app.pagination import Page, etag_matches
from app.problems import READ_ERRORS, WRITE_ERRORS, problems

router = APIRouter(tags=["status"])

LEDGER_LENGTH_HEADER = "X-Pledgewatch-Ledger-Length"
LEDGER_HEAD_HEADER = "X-Pledgewatch-Ledger-Head"

Instant = Annotated[
    str | None,
    Query(
        max_length=64,
        description="A date (YYYY-MM-DD, meaning the end of that day, UTC) "
        "or an RFC 3339 datetime.",
    ),
]


def parse_instant(
    value: str | None, field: str, clock: Clock, tolerance: timedelta
) -> datetime | None:
    """A query instant: a date means its last moment (so that day's changes count).

    It is not clamped to now here, so the same query keeps the same ETag; the
    service reads "later than now" as now.
    """
    if value is None:
        return None
    now = clock.now()
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if day > (now + tolerance).date():
                raise InvalidInput(field, "must not be in the future")
            if day.year < 1900:
                raise InvalidInput(field, "must not be before 1900-01-01")
            return datetime.combine(day, time.max, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(field, "must be a date (YYYY-MM-DD) or an RFC 3339 datetime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(field, "is out of range") from None
    if parsed > now + tolerance:
        raise InvalidInput(field, "must not be in the future")
    if parsed.year < 1900:
        raise InvalidInput(field, "must not be before 1900-01-01")
    return parsed


@router.get(
    "/pledges/{pledge_id}/history",
    response_model=Page[StatusChangeOut],
    responses=problems(*READ_ERRORS, 404),
)
def history(
    pledge_id: PledgeId,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    _: Reader,
    limit: Limit = 100,
    cursor: Cursor = None,
    known_at: Instant = None,
) -> Page[StatusChangeOut]:
    """Status changes, oldest ``effective_at`` first. ``known_at`` shows the history as it was
    recorded by then."""
    tolerance = timedelta(seconds=settings.future_tolerance_seconds)
    items, next_cursor = service.history(
        session,
        pledge_id,
        limit=limit,
        cursor=cursor,
        known_at=parse_instant(known_at, "known_at", clock, tolerance),
    )
    return Page[StatusChangeOut](items=items, next_cursor=next_cursor)


@router.post(
    "/pledges/{pledge_id}/status",
    status_code=201,
    response_model=StatusChangeOut,
    responses=problems(*WRITE_ERRORS, 404, 412),
)
def change_status(
    pledge_id: PledgeId,
    body: StatusChangeIn,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Analyst,
    response: Response,
    if_match: Annotated[
        str | None, Header(description="The pledge's ETag you last saw; 412 if it is stale.")
    ] = None,
) -> StatusChangeOut:
    """Record an assessment. ``409`` when it is no change, or leaves kept/broken without
    ``reopen``; ``412`` when ``If-Match`` is stale."""
    change = service.change_status(
        session,
        pledge_id,
        body,
        principal=principal,
        if_match=if_match,
        now=clock.now(),
        tolerance=timedelta(seconds=settings.future_tolerance_seconds),
    )
    STATUS_CHANGES.labels(change.to_status).inc()
    version = session.info.get("pledgewatch.revision")
    if version is not None:
        response.headers["ETag"] = etag_of(int(version))
    response.headers["Location"] = f"/api/v1/pledges/{pledge_id}/history"
    return service.change_out(change)


@router.get(
    "/status",
    response_model=StatusView,
    responses=problems(304, *READ_ERRORS),
)
def status_view(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    _: Reader,
    filters: Filters,
    as_of: Instant = None,
    known_at: Instant = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Every pledge's status for dashboards, now or as of a past moment (``as_of``: what was true
    then; ``known_at``: what had been recorded by then). Send ``If-None-Match`` to get ``304``."""
    tolerance = timedelta(seconds=settings.future_tolerance_seconds)
    query = StatusQuery(
        status=filters.status,
        kind=filters.kind,
        topic=filters.topic,
        party=filters.party,
        q=filters.q,
        as_of=parse_instant(as_of, "as_of", clock, tolerance),
        known_at=parse_instant(known_at, "known_at", clock, tolerance),
    )
    # A view of the past is built for nearly every request (each date is its own body),
    # and building is CPU work under the GIL: more at once than there are cores only take
    # turns, each holding a database connection (and its page cache) while it waits. So
    # such requests queue for a build slot before they touch the database.
    past = query.as_of is not None or query.known_at is not None
    builds: threading.BoundedSemaphore = request.app.state.status_builds
    with builds if past else contextlib.nullcontext():
        build_slot = contextlib.nullcontext() if past else builds
        return _answer(request, session, query, clock.now(), if_none_match, build_slot)


def _answer(
    request: Request,
    session: Session,
    query: StatusQuery,
    now: datetime,
    if_none_match: str | None,
    build_slot: contextlib.AbstractContextManager[Any],
) -> Response:
    """The answer to ``query``: 304, the cached body, or a body built within ``build_slot``."""
    watch: RevisionWatch | None = getattr(request.app.state, "revision_watch", None)
    generation = watch.generation if watch is not None else 0
    state = current_revision_and_head(session)
    # Only when this read began the transaction (checking a key reads first): then the
    # state is at least as new as the generation taken just before it.
    if watch is not None and "authorization" not in request.headers:
        watch.offer(state, generation)
    revision, ledger_length, ledger_head = state
    etag = status_etag(revision, now.date(), query)
    compress = accepts_gzip(request.headers.get("accept-encoding"))
    # Every ledger append moves the revision, so the ETag also stands for this head.
    headers = {
        "ETag": gzip_etag(etag) if compress else etag,
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
        LEDGER_LENGTH_HEADER: str(ledger_length),
        LEDGER_HEAD_HEADER: ledger_head,
    }
    if etag_matches(headers["ETag"], if_none_match):
        STATUS_CACHE.labels("not_modified").inc()
        return Response(status_code=304, headers=headers)
    cache: StatusViewCache = request.app.state.status_cache
    # A past as_of/known_at of whole seconds is stable; "now" is pinned by the revision.
    body = cache.get(etag)
    if body is None:
        STATUS_CACHE.labels("built").inc()
        with build_slot:
            view = service.dashboard(session, query, now=now, state=state)
            body = view.model_dump_json().encode()
        cache.put(etag, body)
    else:
        STATUS_CACHE.labels("cached").inc()
    if compress:
        headers["Content-Encoding"] = "gzip"
        body = cache.gzipped(etag, body)
    return Response(body, media_type="application/json", headers=headers)


# How often each process reads the revision to hear of other processes' writes: a
# dashboard polling any of them sees such a write within about this long.
REVISION_POLL_SECONDS = 0.1


async def read_revision_state(app: Any) -> RevisionState:
    """The committed revision and ledger head, read in a worker thread like any request."""
    database: Database = app.state.database

    def read() -> RevisionState:
        with database.transaction(write=False) as session:
            return current_revision_and_head(session)

    # One task per process: it waits its turn however long the queue, and is never shed.
    async with app.state.gates.admit(write=False, background=True):
        return await anyio.to_thread.run_sync(read)


async def start_revision_watch(app: Any) -> None:
    """Keep ``app.state.revision_watch`` current (the lifespan stops it)."""
    watch = RevisionWatch(REVISION_POLL_SECONDS)
    app.state.revision_watch = watch
    app.state.revision_poller = asyncio.create_task(watch.poll(lambda: read_revision_state(app)))


async def stop_revision_watch(app: Any) -> None:
    poller: asyncio.Task[None] | None = getattr(app.state, "revision_poller", None)
    if poller is not None:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


class StatusFastPath:
    """Answers a dashboard's poll of the whole ``/status`` before routing, from memory.

    Polling is what most requests are: ``GET /status`` with no query, no key (public
    reads) and, most of the time, the ETag it got last. When the revision is known
    (:class:`RevisionWatch`) and the body for it is cached, the answer (``304``, or the
    cached body, gzip-coded when accepted) needs no database read, no thread and no
    dependency resolution; it is the same answer ``status_view`` gives, headers
    included. Anything else (a query, a key, private reads, a revision or body not
    known yet) goes on to ``status_view``. Mounted inside the request-id, logging and
    metrics middleware, so these requests are logged and counted like the others.
    """

    def __init__(self, app: ASGIApp, *, path: str) -> None:
        self.app = app
        self.path = path
        self.route = next(
            route for route in router.routes if getattr(route, "endpoint", None) is status_view
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] != "GET"
            or scope["query_string"]
        ):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        watch: RevisionWatch | None = getattr(state, "revision_watch", None)
        current = watch.current() if watch is not None else None
        if watch is None or current is None or not state.settings.public_read:
            await self.app(scope, receive, send)
            return
        if_none_match = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
            elif name == b"authorization":
                # A key is checked (and a bad one refused) by the full path.
                await self.app(scope, receive, send)
                return
        revision, ledger_length, ledger_head = current
        etag = watch.etag(revision, state.clock.now().date())
        compress = accepts_gzip(accept_encoding)
        tag = gzip_etag(etag) if compress else etag
        headers = [
            (b"etag", tag.encode("latin-1")),
            (b"cache-control", b"no-cache"),
            (b"vary", b"Accept-Encoding"),
            (LEDGER_LENGTH_HEADER.lower().encode(), str(ledger_length).encode()),
            (LEDGER_HEAD_HEADER.lower().encode(), ledger_head.encode("latin-1")),
        ]
        if etag_matches(tag, if_none_match):
            scope["route"] = self.route
            STATUS_CACHE.labels("not_modified").inc()
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        cache: StatusViewCache = state.status_cache
        body = cache.get(etag)
        if body is None:
            await self.app(scope, receive, send)
            return
        if compress:
            body = cache.gzipped(etag, body)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        scope["route"] = self.route
        STATUS_CACHE.labels("cached").inc()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SVGResponse(Response):
    media_type = "image/svg+xml"


@router.get(
    "/status/{pledge_id}/badge.svg",
    response_class=SVGResponse,
    responses={
        200: {"description": "The badge.", "content": {"image/svg+xml": {}}},
        **problems(304, *READ_ERRORS, 404),
    },
)
def status_badge(
    pledge_id: PledgeId,
    session: SessionDep,
    _: Reader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A small SVG badge of the pledge's status (its title, shortened, on the left), coloured by
    status. ``ETag`` follows the pledge's version; send ``If-None-Match`` to get ``304``."""
    pledge = get_pledge(session, pledge_id, with_lists=False)
    # Revalidated every time: the badge must change the moment the status does, and the
    # 304 that answers most requests costs one primary-key read.
    headers = {"ETag": badge.badge_etag(pledge.version, pledge.status), "Cache-Control": "no-cache"}
    if etag_matches(headers["ETag"], if_none_match):
        return Response(status_code=304, headers=headers)
    svg = badge.render_badge(pledge_id=pledge.id, title=pledge.title, status=pledge.status)
    # Opened on its own, an SVG is a document: it may run nothing and load nothing.
    headers["Content-Security-Policy"] = "default-src 'none'"
    headers["X-Content-Type-Options"] = "nosniff"
    return SVGResponse(svg.encode("utf-8"), headers=headers)
