"""HTTP for evidence, links and their review. Rules live in the service."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.deps import Analyst, ClockDep, Collector, Reader, SessionDep, SettingsDep
from app.domain.evidence import service
from app.domain.evidence.schemas import (
    BatchOut,
    EvidenceBatch,
    EvidenceCreate,
    EvidenceOut,
    LinkIn,
    LinkOut,
    PledgeEvidenceCreate,
    PledgeEvidenceOut,
    QueueItem,
    ReviewIn,
)
from app.domain.pledges.router import Cursor, Limit, PledgeId
from app.domain.pledges.service import get_pledge
from app.metrics import EVIDENCE_INGESTED
from app.pagination import Page
from app.problems import READ_ERRORS, WRITE_ERRORS, problems

router = APIRouter(tags=["evidence"])

EvidenceId = Annotated[int, Path(ge=1, le=2_147_483_647, description="The evidence item's id.")]


def _tolerance(settings: SettingsDep) -> timedelta:
    return timedelta(seconds=settings.future_tolerance_seconds)


def _created_or_existing(out: EvidenceOut, created: bool, response: Response) -> EvidenceOut:
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/evidence/{out.id}"
    EVIDENCE_INGESTED.labels("created" if created else "existing").inc()
    return out


_ADD_RESPONSES = {
    200: {
        "description": "The item was already known (same normalised URL or content hash); "
        "it is now linked, not copied.",
        "model": EvidenceOut,
    },
    **problems(*WRITE_ERRORS),
}


@router.get(
    "/pledges/{pledge_id}/evidence",
    response_model=Page[PledgeEvidenceOut],
    responses=problems(*READ_ERRORS, 404),
)
def list_pledge_evidence(
    pledge_id: PledgeId,
    session: SessionDep,
    _: Reader,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[PledgeEvidenceOut]:
    """The evidence linked to a pledge, newest ``published_at`` first."""
    items, next_cursor = service.pledge_evidence(session, pledge_id, limit=limit, cursor=cursor)
    return Page[PledgeEvidenceOut](items=items, next_cursor=next_cursor)


@router.post(
    "/pledges/{pledge_id}/evidence",
    status_code=201,
    response_model=EvidenceOut,
    responses={**_ADD_RESPONSES, **problems(404)},
)
def add_pledge_evidence(
    pledge_id: PledgeId,
    body: PledgeEvidenceCreate,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Collector,
    response: Response,
) -> EvidenceOut:
    """Add one item linked to this pledge: ``201`` when new, ``200`` when already known."""
    get_pledge(session, pledge_id, with_lists=False)
    data = EvidenceCreate(
        **body.model_dump(exclude={"stance"}),
        links=[LinkIn(pledge_id=pledge_id, stance=body.stance)],
    )
    out, created = service.add_evidence(
        session, data, principal=principal, now=clock.now(), tolerance=_tolerance(settings)
    )
    return _created_or_existing(out, created, response)


@router.post("/evidence", status_code=201, response_model=EvidenceOut, responses=_ADD_RESPONSES)
def add_evidence(
    body: EvidenceCreate,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Collector,
    response: Response,
) -> EvidenceOut:
    """Add one item linked to several pledges, each with its own stance."""
    out, created = service.add_evidence(
        session, body, principal=principal, now=clock.now(), tolerance=_tolerance(settings)
    )
    return _created_or_existing(out, created, response)


@router.post("/evidence/batch", response_model=BatchOut, responses=problems(*WRITE_ERRORS))
def add_evidence_batch(
    body: EvidenceBatch,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Collector,
) -> BatchOut:
    """Up to 1,000 items in one transaction. Each result, in order, has its own ``status``:
    ``201`` new, ``200`` already known, ``422`` invalid (with the problem)."""
    results = service.ingest_batch(
        session, body.items, principal=principal, now=clock.now(), tolerance=_tolerance(settings)
    )
    for result in results:
        EVIDENCE_INGESTED.labels(
            {201: "created", 200: "existing", 422: "invalid"}[result.status]
        ).inc()
    return BatchOut(results=results)


@router.get(
    "/evidence/{evidence_id:int}", response_model=EvidenceOut, responses=problems(*READ_ERRORS, 404)
)
def get_evidence(evidence_id: EvidenceId, session: SessionDep, _: Reader) -> EvidenceOut:
    """One item with all its links."""
    return service.get_evidence(session, evidence_id)


@router.post(
    "/evidence/{evidence_id:int}/review",
    response_model=LinkOut,
    responses=problems(*WRITE_ERRORS, 404),
)
def review_evidence(
    evidence_id: EvidenceId,
    body: ReviewIn,
    session: SessionDep,
    clock: ClockDep,
    principal: Analyst,
) -> LinkOut:
    """Accept or reject how an item bears on one pledge; verification is regraded."""
    return service.review_link(
        session,
        evidence_id,
        pledge_id=body.pledge_id,
        review=body.review,
        note=body.note,
        principal=principal,
        now=clock.now(),
    )


@router.get("/review-queue", response_model=Page[QueueItem], responses=problems(*READ_ERRORS))
def review_queue(
    session: SessionDep, _: Analyst, limit: Limit = 50, cursor: Cursor = None
) -> Page[QueueItem]:
    """Links waiting for an analyst, oldest first."""
    items, next_cursor = service.review_queue(session, limit=limit, cursor=cursor)
    return Page[QueueItem](items=items, next_cursor=next_cursor)
