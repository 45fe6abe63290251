"""HTTP for pledges. Rules live in the service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from app.deps import Analyst, ClockDep, Reader, SessionDep
from app.domain.pledges import service
from app.domain.pledges.schemas import (
    PledgeCreate,
    PledgeKind,
    PledgeOut,
    PledgeUpdate,
    StatusName,
)
from app.pagination import Page, etag_matches
from app.problems import READ_ERRORS, WRITE_ERRORS, problems
from app.types import PARTY_PATTERN, SLUG_PATTERN, TOPIC_PATTERN, PageLimit, StorableStr

router = APIRouter(tags=["pledges"])

PledgeId = Annotated[
    str, Path(pattern=SLUG_PATTERN, max_length=100, description="The pledge's slug.")
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=1000,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="next_cursor of the previous page.",
    ),
]
Limit = Annotated[PageLimit, Query(description="Page size, at most 500.")]


@dataclass(frozen=True)
class PledgeFilters:
    status: StatusName | None
    kind: PledgeKind | None
    topic: str | None
    party: str | None
    q: str | None


def pledge_filters(
    status: Annotated[StatusName | None, Query()] = None,
    kind: Annotated[PledgeKind | None, Query()] = None,
    topic: Annotated[str | None, Query(pattern=TOPIC_PATTERN)] = None,
    party: Annotated[
        str | None,
        Query(pattern=PARTY_PATTERN, description="ISO 3166-1 alpha-2, maker or recipient."),
    ] = None,
    q: Annotated[
        StorableStr | None, Query(max_length=200, description="Words in the id, title or text.")
    ] = None,
) -> PledgeFilters:
    return PledgeFilters(status=status, kind=kind, topic=topic, party=party, q=q)


Filters = Annotated[PledgeFilters, Depends(pledge_filters)]


def etag_of(version: int) -> str:
    return f'"{version}"'


@router.get("/pledges", response_model=Page[PledgeOut], responses=problems(*READ_ERRORS))
def list_pledges(
    session: SessionDep,
    clock: ClockDep,
    _: Reader,
    filters: Filters,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[PledgeOut]:
    """List pledges in id order, filtered, a page at a time."""
    rows, next_cursor = service.list_pledges(
        session,
        limit=limit,
        cursor=cursor,
        status=filters.status,
        kind=filters.kind,
        topic=filters.topic,
        party=filters.party,
        q=filters.q,
    )
    return service.pledge_page(rows, next_cursor, today=clock.now().date())


@router.post(
    "/pledges",
    status_code=201,
    response_model=PledgeOut,
    responses=problems(*WRITE_ERRORS),
)
def create_pledge(
    body: PledgeCreate,
    session: SessionDep,
    clock: ClockDep,
    principal: Analyst,
    response: Response,
) -> PledgeOut:
    """Record a pledge. Its history starts ``not_yet_rated`` on ``made_on``."""
    now = clock.now()
    pledge = service.create_pledge(session, body, actor=principal.actor, now=now)
    response.headers["Location"] = f"/api/v1/pledges/{pledge.id}"
    response.headers["ETag"] = etag_of(pledge.version)
    return service.to_out(pledge, today=now.date())


@router.get(
    "/pledges/{pledge_id}",
    response_model=PledgeOut,
    responses=problems(304, *READ_ERRORS, 404),
)
def get_pledge(
    pledge_id: PledgeId,
    session: SessionDep,
    clock: ClockDep,
    _: Reader,
    response: Response,
    if_none_match: Annotated[str | None, Header()] = None,
) -> PledgeOut | Response:
    """One pledge with its derived fields; ``ETag`` is its version."""
    pledge = service.get_pledge(session, pledge_id)
    etag = etag_of(pledge.version)
    if etag_matches(etag, if_none_match):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return service.to_out(pledge, today=clock.now().date())


@router.patch(
    "/pledges/{pledge_id}",
    response_model=PledgeOut,
    responses=problems(*WRITE_ERRORS, 404, 412),
)
def update_pledge(
    pledge_id: PledgeId,
    body: PledgeUpdate,
    session: SessionDep,
    clock: ClockDep,
    _: Analyst,
    response: Response,
    if_match: Annotated[
        str | None, Header(description="The ETag you last saw; 412 if it is stale.")
    ] = None,
) -> PledgeOut:
    """Edit descriptive fields. Send ``If-Match`` to be sure nobody changed it meanwhile."""
    now = clock.now()
    pledge = service.update_pledge(session, pledge_id, body, if_match=if_match, now=now)
    response.headers["ETag"] = etag_of(pledge.version)
    return service.to_out(pledge, today=now.date())
