"""What the ledger vouches for: each kind of row, its key, and the columns that are its facts.

A row's payload is read back from the database by the same code when it is
written and when it is verified, so the two can only differ if the row did.
Derived columns (a pledge's current status, counts, a source's polling state,
a webhook's secret and outbox cursor) are left out: they are recomputed or
operational, and change without a write the ledger records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Table, select
from sqlalchemy.orm import Session

from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.pledges.models import Pledge, PledgeParty, PledgeTopic
from app.domain.proposals.models import Proposal
from app.domain.sources.models import Source
from app.domain.status.models import StatusChange
from app.domain.webhooks.models import Webhook

Payload = dict[str, Any]
_CHUNK = 500


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


@dataclass(frozen=True)
class SubjectType:
    """One kind of row the ledger covers."""

    name: str
    table: Table
    key: str
    columns: tuple[str, ...]
    # Facts kept in child tables (a pledge's parties and topics), by key.
    extras: Callable[[Session, Sequence[Any]], dict[Any, Payload]] | None = None

    def subject(self, key: Any) -> str:
        return f"{self.name}:{key}"

    def parse_key(self, text: str) -> Any:
        """The key of a subject string's row, typed as the table's key column.

        ValueError when ``text`` is no such key: an integer key must also fit its column,
        or the lookup would fail in the database instead of finding nothing.
        """
        column = self.table.c[self.key]
        if column.type.python_type is not int:
            return text
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"{text!r} is not an id")
        key = int(text)
        if key > (2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1):
            raise ValueError(f"{text!r} is out of range")
        return key

    def _build(self, session: Session, rows: Sequence[Any]) -> dict[Any, Payload]:
        keys = [row[self.key] for row in rows]
        extra = self.extras(session, keys) if self.extras is not None and keys else {}
        return {
            row[self.key]: {
                **{name: row[name] for name in self.columns},
                **extra.get(row[self.key], {}),
            }
            for row in rows
        }

    def payloads(self, session: Session, keys: Sequence[Any]) -> dict[Any, Payload]:
        """The payloads of the rows with ``keys`` as they are in the database now."""
        found: dict[Any, Payload] = {}
        columns = [self.table.c[name] for name in self.columns]
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            rows = (
                session.execute(select(*columns).where(self.table.c[self.key].in_(chunk)))
                .mappings()
                .all()
            )
            found.update(self._build(session, rows))
        return found

    def chunks(self, session: Session, size: int = 1000) -> Iterator[dict[Any, Payload]]:
        """Every row's payload, a chunk at a time in key order (memory stays flat)."""
        key = self.table.c[self.key]
        columns = [self.table.c[name] for name in self.columns]
        last: Any = None
        while True:
            query = select(*columns).order_by(key).limit(size)
            if last is not None:
                query = query.where(key > last)
            rows = session.execute(query).mappings().all()
            if not rows:
                return
            yield self._build(session, rows)
            last = rows[-1][self.key]


def _pledge_lists(session: Session, keys: Sequence[Any]) -> dict[Any, Payload]:
    lists: dict[Any, Payload] = defaultdict(lambda: {"made_by": [], "made_to": [], "topics": []})
    for party in session.execute(
        select(PledgeParty.pledge_id, PledgeParty.role, PledgeParty.party)
        .where(PledgeParty.pledge_id.in_(keys))
        .order_by(PledgeParty.pledge_id, PledgeParty.role, PledgeParty.position)
    ):
        lists[party.pledge_id][party.role].append(party.party)
    for topic in session.execute(
        select(PledgeTopic.pledge_id, PledgeTopic.topic)
        .where(PledgeTopic.pledge_id.in_(keys))
        .order_by(PledgeTopic.pledge_id, PledgeTopic.position)
    ):
        lists[topic.pledge_id]["topics"].append(topic.topic)
    return {key: lists[key] for key in keys}


PLEDGE = SubjectType(
    "pledge",
    _table(Pledge),
    "id",
    (
        "id",
        "title",
        "text",
        "kind",
        "made_on",
        "venue",
        "source_title",
        "source_url",
        "source_publisher",
        "source_published_on",
        "source_quote",
        "verification_criteria",
        "due_on",
        "review_every_days",
        "created_at",
        "updated_at",
        "created_by",
    ),
    _pledge_lists,
)
EVIDENCE = SubjectType(
    "evidence",
    _table(Evidence),
    "id",
    (
        "id",
        "title",
        "url",
        "url_key",
        "summary",
        "published_at",
        "source_name",
        "source_type",
        "reliability",
        "content_hash",
        "collected_by",
        "recorded_at",
        "fetched_at",
        "observed_value",
        "target_met",
    ),
)
LINK = SubjectType(
    "link",
    _table(EvidenceLink),
    "id",
    (
        "id",
        "evidence_id",
        "pledge_id",
        "stance",
        "review",
        "review_note",
        "reviewed_by",
        "reviewed_at",
        "linked_by",
        "created_at",
        "published_at",
    ),
)
STATUS_CHANGE = SubjectType(
    "status_change",
    _table(StatusChange),
    "id",
    (
        "id",
        "pledge_id",
        "from_status",
        "to_status",
        "effective_at",
        "recorded_at",
        "actor",
        "reason",
        "evidence_ids",
    ),
)
PROPOSAL = SubjectType(
    "proposal",
    _table(Proposal),
    "id",
    (
        "id",
        "pledge_id",
        "rule",
        "proposed_status",
        "reason",
        "evidence_ids",
        "created_at",
        "state",
        "decided_by",
        "decided_at",
        "note",
        "status_change_id",
    ),
)
SOURCE = SubjectType(
    "source",
    _table(Source),
    "id",
    (
        "id",
        "name",
        "kind",
        "url",
        "every_minutes",
        "pledges",
        "match_any",
        "match_all",
        "match_none",
        "stance",
        "source_type",
        "reliability",
        "trusted",
        "enabled",
        "mapping",
        "created_at",
        "updated_at",
    ),
)
WEBHOOK = SubjectType(
    "webhook",
    _table(Webhook),
    "id",
    ("id", "url", "events", "description", "created_at", "created_by"),
)

SUBJECT_TYPES: dict[str, SubjectType] = {
    subject.name: subject
    for subject in (PLEDGE, EVIDENCE, LINK, STATUS_CHANGE, PROPOSAL, SOURCE, WEBHOOK)
}

# Every kind of entry, and the subject it concerns. A ``.deleted`` kind vouches that the
# row is gone.
KINDS: dict[str, SubjectType] = {
    "pledge.created": PLEDGE,
    "pledge.edited": PLEDGE,
    "evidence.added": EVIDENCE,
    "link.made": LINK,
    "link.reviewed": LINK,
    "status.changed": STATUS_CHANGE,
    "proposal.created": PROPOSAL,
    "proposal.confirmed": PROPOSAL,
    "proposal.dismissed": PROPOSAL,
    "source.created": SOURCE,
    "source.edited": SOURCE,
    "source.deleted": SOURCE,
    "webhook.created": WEBHOOK,
    "webhook.deleted": WEBHOOK,
}


def is_deletion(kind: str) -> bool:
    return kind.endswith(".deleted")
