"""Events: the ledger entries that the outside world subscribes to, with what they are about.

``/events`` (Server-Sent Events) and webhooks send the same events, built here
from the ledger, so a client that reconnects or a delivery that is retried
sees exactly what it would have seen live. No HTTP here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.ledger.canonical import plain
from app.domain.ledger.models import LedgerEntry
from app.domain.proposals.models import Proposal
from app.domain.status.models import StatusChange

# The events of the Contract, in the order a reader meets them in this module.
EVENT_KINDS: tuple[str, ...] = ("status.changed", "evidence.added", "proposal.created")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its id is the ledger ``seq`` of the entry it comes from."""

    seq: int
    kind: str
    at: datetime
    subject: str
    data: dict[str, Any]

    def document(self) -> dict[str, Any]:
        """The JSON document sent for this event (SSE ``data:``; webhook body inside)."""
        return {
            "seq": self.seq,
            "event": self.kind,
            "at": plain(self.at),
            "subject": self.subject,
            "data": self.data,
        }


def read_events(
    session: Session, *, after: int, limit: int, kinds: Collection[str] = EVENT_KINDS
) -> list[Event]:
    """Up to ``limit`` events with ``seq`` greater than ``after``, in ``seq`` order."""
    wanted = [kind for kind in kinds if kind in EVENT_KINDS]
    if not wanted or limit <= 0:
        return []
    rows = session.execute(
        select(LedgerEntry.seq, LedgerEntry.kind, LedgerEntry.at, LedgerEntry.subject)
        .where(LedgerEntry.seq > after, LedgerEntry.kind.in_(wanted))
        .order_by(LedgerEntry.seq)
        .limit(limit)
    ).all()
    keys: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        name, _, key = row.subject.partition(":")
        if key.isdigit():
            keys[name].append(int(key))
    changes = _status_changes(session, keys["status_change"])
    evidence = _evidence(
        session,
        {
            int(row.subject.partition(":")[2]): row.at
            for row in rows
            if row.kind == "evidence.added"
        },
    )
    proposals = _proposals(session, keys["proposal"])
    found = {"status_change": changes, "evidence": evidence, "proposal": proposals}
    events = []
    for row in rows:
        name, _, key = row.subject.partition(":")
        table = found.get(name, {})
        # A row removed behind the API's back still has its event; it says only what it was.
        data = table.get(int(key)) if key.isdigit() else None
        events.append(
            Event(
                seq=row.seq,
                kind=row.kind,
                at=row.at,
                subject=row.subject,
                data=data if data is not None else {"missing": True},
            )
        )
    return events


def _status_changes(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    return {
        change.id: plain(
            {
                "status_change_id": change.id,
                "pledge_id": change.pledge_id,
                "from_status": change.from_status,
                "to_status": change.to_status,
                "effective_at": change.effective_at,
                "recorded_at": change.recorded_at,
                "actor": change.actor,
                "reason": change.reason,
                "evidence_ids": list(change.evidence_ids),
            }
        )
        for change in session.scalars(select(StatusChange).where(StatusChange.id.in_(ids)))
    }


def _evidence(session: Session, added_at: dict[int, datetime]) -> dict[int, dict[str, Any]]:
    """Each item as it was added: with the links made with it, not those made since."""
    if not added_at:
        return {}
    ids = list(added_at)
    links: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for link in session.execute(
        select(
            EvidenceLink.evidence_id,
            EvidenceLink.pledge_id,
            EvidenceLink.stance,
            EvidenceLink.created_at,
        )
        .where(EvidenceLink.evidence_id.in_(ids))
        .order_by(EvidenceLink.evidence_id, EvidenceLink.id)
    ):
        if link.created_at <= added_at[link.evidence_id]:
            links[link.evidence_id].append({"pledge_id": link.pledge_id, "stance": link.stance})
    return {
        item.id: plain(
            {
                "evidence_id": item.id,
                "title": item.title,
                "url": item.url,
                "published_at": item.published_at,
                "source_name": item.source_name,
                "source_type": item.source_type,
                "reliability": item.reliability,
                "collected_by": item.collected_by,
                "links": links[item.id],
            }
        )
        for item in session.scalars(select(Evidence).where(Evidence.id.in_(ids)))
    }


def _proposals(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    return {
        proposal.id: plain(
            {
                "proposal_id": proposal.id,
                "pledge_id": proposal.pledge_id,
                "rule": proposal.rule,
                "proposed_status": proposal.proposed_status,
                "reason": proposal.reason,
                "evidence_ids": list(proposal.evidence_ids),
                "created_at": proposal.created_at,
            }
        )
        for proposal in session.scalars(select(Proposal).where(Proposal.id.in_(ids)))
    }
