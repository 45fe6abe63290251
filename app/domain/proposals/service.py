"""Proposals: final verdicts that rules propose and analysts confirm or dismiss. No HTTP here."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.domain.keys.service import Principal
from app.domain.ledger.service import record
from app.domain.proposals.models import Proposal
from app.domain.proposals.schemas import ProposalOut
from app.domain.status.revision import claim_revision
from app.domain.status.schemas import StatusChangeIn
from app.domain.status.service import change_status
from app.errors import Conflict, NotFound
from app.pagination import cursor_id, cursor_time, decode_cursor, encode_cursor


def proposal_out(proposal: Proposal) -> ProposalOut:
    return ProposalOut(
        id=proposal.id,
        pledge_id=proposal.pledge_id,
        rule=proposal.rule,
        proposed_status=proposal.proposed_status,  # type: ignore[arg-type]
        reason=proposal.reason,
        evidence_ids=list(proposal.evidence_ids),
        created_at=proposal.created_at,
        state=proposal.state,  # type: ignore[arg-type]
        decided_by=proposal.decided_by,
        decided_at=proposal.decided_at,
        note=proposal.note,
        status_change_id=proposal.status_change_id,
    )


def list_proposals(
    session: Session,
    *,
    state: str | None,
    pledge_id: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[ProposalOut], str | None]:
    """Proposals, oldest first (a work queue), optionally of one state and one pledge."""
    query = select(Proposal)
    if state is not None:
        query = query.where(Proposal.state == state)
    if pledge_id is not None:
        query = query.where(Proposal.pledge_id == pledge_id)
    after = decode_cursor(cursor, 2)
    if after is not None:
        created, proposal_id = cursor_time(after[0]), cursor_id(after[1])
        query = query.where(
            or_(
                Proposal.created_at > created,
                and_(Proposal.created_at == created, Proposal.id > proposal_id),
            )
        )
    rows = session.scalars(query.order_by(Proposal.created_at, Proposal.id).limit(limit + 1)).all()
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return [proposal_out(row) for row in rows[:limit]], next_cursor


def get_proposal(session: Session, proposal_id: int) -> Proposal:
    """The proposal, or NotFound."""
    proposal = session.get(Proposal, proposal_id)
    if proposal is None:
        raise NotFound(f"no proposal with id {proposal_id}")
    return proposal


def _open_for_decision(session: Session, proposal_id: int) -> Proposal:
    # Locked so that two analysts deciding at once queue; the second then sees it decided.
    proposal = session.scalars(
        select(Proposal).where(Proposal.id == proposal_id).with_for_update()
    ).one_or_none()
    if proposal is None:
        raise NotFound(f"no proposal with id {proposal_id}")
    if proposal.state != "open":
        raise Conflict(
            f"proposal {proposal_id} is already {proposal.state} "
            f"(by {proposal.decided_by}); only an open proposal can be decided"
        )
    return proposal


def confirm(
    session: Session,
    proposal_id: int,
    *,
    note: str | None,
    principal: Principal,
    now: datetime,
    tolerance: timedelta,
) -> Proposal:
    """Record the proposed verdict as the analyst's own status change, and close the proposal.

    The change carries the proposal's reason and evidence. It is an ordinary
    status change, so it is refused (409) when the pledge already has that
    status or has the other final one.
    """
    # Every writer takes the revision lock first (see claim_revision); taking it
    # before the proposal's row keeps that one order.
    claim_revision(session)
    proposal = _open_for_decision(session, proposal_id)
    change = change_status(
        session,
        proposal.pledge_id,
        StatusChangeIn(
            status=proposal.proposed_status,  # type: ignore[arg-type]
            reason=proposal.reason,
            evidence_ids=list(proposal.evidence_ids),
        ),
        principal=principal,
        if_match=None,
        now=now,
        tolerance=tolerance,
    )
    proposal.state = "confirmed"
    proposal.decided_by = principal.actor
    proposal.decided_at = now
    proposal.note = note
    proposal.status_change_id = change.id
    session.flush()
    record(session, "proposal.confirmed", [proposal.id], now=now)
    return proposal


def dismiss(
    session: Session, proposal_id: int, *, note: str | None, principal: Principal, now: datetime
) -> Proposal:
    """Close the proposal without changing the pledge. The rule will not propose it again
    on the same grounds (see ``rules``)."""
    claim_revision(session)
    proposal = _open_for_decision(session, proposal_id)
    proposal.state = "dismissed"
    proposal.decided_by = principal.actor
    proposal.decided_at = now
    proposal.note = note
    session.flush()
    record(session, "proposal.dismissed", [proposal.id], now=now)
    return proposal
