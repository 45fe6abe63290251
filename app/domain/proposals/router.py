"""HTTP for proposals: the final verdicts rules propose, and the analyst's answer."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.deps import Analyst, ClockDep, SessionDep, SettingsDep
from app.domain.pledges.router import Cursor, Limit
from app.domain.proposals import service
from app.domain.proposals.schemas import DecisionIn, ProposalOut, ProposalState
from app.metrics import PROPOSALS, STATUS_CHANGES
from app.pagination import Page
from app.problems import READ_ERRORS, WRITE_ERRORS, problems
from app.types import SLUG_PATTERN

router = APIRouter(tags=["proposals"])

ProposalId = Annotated[int, Path(ge=1, le=2_147_483_647, description="The proposal's id.")]


@router.get(
    "/proposals",
    response_model=Page[ProposalOut],
    responses=problems(*READ_ERRORS),
)
def list_proposals(
    session: SessionDep,
    _: Analyst,
    state: Annotated[
        ProposalState | None, Query(description="Only proposals in this state.")
    ] = None,
    pledge_id: Annotated[
        str | None,
        Query(pattern=SLUG_PATTERN, max_length=100, description="Only this pledge's proposals."),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ProposalOut]:
    """Final verdicts (kept, broken) that rules propose, oldest first. ``state=open`` is the
    analysts' queue."""
    items, next_cursor = service.list_proposals(
        session, state=state, pledge_id=pledge_id, limit=limit, cursor=cursor
    )
    return Page[ProposalOut](items=items, next_cursor=next_cursor)


@router.get(
    "/proposals/{proposal_id}",
    response_model=ProposalOut,
    responses=problems(*READ_ERRORS, 404),
)
def get_proposal(proposal_id: ProposalId, session: SessionDep, _: Analyst) -> ProposalOut:
    """One proposal."""
    return service.proposal_out(service.get_proposal(session, proposal_id))


@router.post(
    "/proposals/{proposal_id}/confirm",
    response_model=ProposalOut,
    responses=problems(*WRITE_ERRORS, 404),
)
def confirm_proposal(
    proposal_id: ProposalId,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Analyst,
    response: Response,
    body: DecisionIn | None = None,
) -> ProposalOut:
    """Record the proposed verdict as your status change (with the proposal's reason and
    evidence) and close the proposal. ``409`` when it is not open, or when the pledge already
    has that status or the other final one."""
    proposal = service.confirm(
        session,
        proposal_id,
        note=body.note if body else None,
        principal=principal,
        now=clock.now(),
        tolerance=timedelta(seconds=settings.future_tolerance_seconds),
    )
    STATUS_CHANGES.labels(proposal.proposed_status).inc()
    PROPOSALS.labels(proposal.rule, "confirmed").inc()
    response.headers["Location"] = f"/api/v1/pledges/{proposal.pledge_id}/history"
    return service.proposal_out(proposal)


@router.post(
    "/proposals/{proposal_id}/dismiss",
    response_model=ProposalOut,
    responses=problems(*WRITE_ERRORS, 404),
)
def dismiss_proposal(
    proposal_id: ProposalId,
    session: SessionDep,
    clock: ClockDep,
    principal: Analyst,
    body: DecisionIn | None = None,
) -> ProposalOut:
    """Close the proposal without changing the pledge. ``409`` when it is not open."""
    proposal = service.dismiss(
        session, proposal_id, note=body.note if body else None, principal=principal, now=clock.now()
    )
    PROPOSALS.labels(proposal.rule, "dismissed").inc()
    return service.proposal_out(proposal)
