"""HTTP for sources and their runs (admin only). Rules live in the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Request, Response

from app.deps import Admin, ClockDep, SessionDep
from app.domain.keys.service import Principal
from app.domain.pledges.router import Cursor, Limit
from app.domain.sources import service
from app.domain.sources.schemas import RunOut, SourceCreate, SourceOut, SourceUpdate
from app.pagination import Page
from app.problems import READ_ERRORS, WRITE_ERRORS, problems
from app.types import SLUG_PATTERN

router = APIRouter(tags=["sources"])

SourceId = Annotated[
    str, Path(pattern=SLUG_PATTERN, max_length=100, description="The source's id.")
]
_View = TypeVar("_View", SourceOut, RunOut)

PollSource = Callable[[str, int], object]
"""Polls a source into the run already recorded for it: (source id, run id). The app wires
the feed poller in its lifespan (``app.state.poll_source``); this package does not import it."""


def get_poll_source(request: Request) -> PollSource:
    poll: PollSource = request.app.state.poll_source
    return poll


PollSourceDep = Annotated[PollSource, Depends(get_poll_source)]


def as_seen_by(principal: Principal, views: list[_View]) -> list[_View]:
    """``views`` as ``principal`` may see them: whole for an admin; for anyone else (should a
    read here ever be opened to other roles) without the secrets in URLs and run errors."""
    return views if principal.has_role("admin") else [view.redacted() for view in views]


@router.get("/sources", response_model=Page[SourceOut], responses=problems(*READ_ERRORS))
def list_sources(
    session: SessionDep, principal: Admin, limit: Limit = 50, cursor: Cursor = None
) -> Page[SourceOut]:
    """Every feed, in id order."""
    items, next_cursor = service.list_sources(session, limit=limit, cursor=cursor)
    return Page[SourceOut](items=as_seen_by(principal, items), next_cursor=next_cursor)


@router.post(
    "/sources", status_code=201, response_model=SourceOut, responses=problems(*WRITE_ERRORS)
)
def create_source(
    body: SourceCreate, session: SessionDep, clock: ClockDep, _: Admin, response: Response
) -> SourceOut:
    """Register a feed. A bad URL, an unknown kind or a mapping that does not fit is a 422."""
    source = service.create_source(session, body, now=clock.now())
    response.headers["Location"] = f"/api/v1/sources/{source.id}"
    return service.source_out(source)


@router.get("/sources/{source_id}", response_model=SourceOut, responses=problems(*READ_ERRORS, 404))
def get_source(source_id: SourceId, session: SessionDep, principal: Admin) -> SourceOut:
    """One feed, with when it last succeeded and how many polls in a row have failed."""
    (view,) = as_seen_by(principal, [service.source_out(service.get_source(session, source_id))])
    return view


@router.patch(
    "/sources/{source_id}", response_model=SourceOut, responses=problems(*WRITE_ERRORS, 404)
)
def update_source(
    source_id: SourceId, body: SourceUpdate, session: SessionDep, clock: ClockDep, _: Admin
) -> SourceOut:
    """Change a feed; only the fields given change."""
    return service.source_out(service.update_source(session, source_id, body, now=clock.now()))


@router.delete("/sources/{source_id}", status_code=204, responses=problems(*WRITE_ERRORS, 404))
def delete_source(source_id: SourceId, session: SessionDep, clock: ClockDep, _: Admin) -> Response:
    """Remove a feed and its runs. The evidence it brought stays."""
    service.delete_source(session, source_id, now=clock.now())
    return Response(status_code=204)


@router.post(
    "/sources/{source_id}/run",
    status_code=202,
    response_model=RunOut,
    responses=problems(*WRITE_ERRORS, 404),
)
def run_source(
    source_id: SourceId,
    session: SessionDep,
    clock: ClockDep,
    _: Admin,
    poll_source: PollSourceDep,
    response: Response,
    background: BackgroundTasks,
) -> RunOut:
    """Poll now. The run is recorded at once (``running``) and finishes in the background;
    follow it at ``/sources/{id}/runs``."""
    run = service.start_run(session, source_id, now=clock.now())
    # The run row must be committed before the background poll looks for it; background
    # tasks start after the response, by which time the request's transaction has committed.
    background.add_task(poll_source, source_id, run.id)
    response.headers["Location"] = f"/api/v1/sources/{source_id}/runs"
    return service.run_out(run)


@router.get(
    "/sources/{source_id}/runs",
    response_model=Page[RunOut],
    responses=problems(*READ_ERRORS, 404),
)
def list_runs(
    source_id: SourceId,
    session: SessionDep,
    principal: Admin,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[RunOut]:
    """The recorded polls, newest first (a failed run's ``error`` says why, in words)."""
    items, next_cursor = service.list_runs(session, source_id, limit=limit, cursor=cursor)
    return Page[RunOut](items=as_seen_by(principal, items), next_cursor=next_cursor)
