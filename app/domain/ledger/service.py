"""The ledger: appending to the hash chain in the writer's transaction, reading it, verifying it.

No HTTP here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, event, func, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction

from app.db import Database
from app.domain.ledger.canonical import GENESIS, entry_hash, payload_hash
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.subjects import KINDS, SUBJECT_TYPES, SubjectType, is_deletion
from app.domain.status.models import Revision
from app.domain.status.revision import claim_revision

_HEAD = "pledgewatch.ledger_head"
_APPENDED = "pledgewatch.ledger_appended"


@dataclass(frozen=True, slots=True)
class Head:
    """Where the chain ends: its length (the last ``seq``) and the last entry's hash."""

    length: int
    hash: str


# Called with the new head after a transaction that appended commits; the events
# broadcaster of each app in this process listens, so SSE clients wake at once.
_listeners: set[Callable[[Head], None]] = set()
_listeners_lock = threading.Lock()


def add_listener(listener: Callable[[Head], None]) -> None:
    with _listeners_lock:
        _listeners.add(listener)


def remove_listener(listener: Callable[[Head], None]) -> None:
    with _listeners_lock:
        _listeners.discard(listener)


@event.listens_for(Session, "after_transaction_end")
def _forget_head(session: Session, transaction: SessionTransaction, *_: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_HEAD, None)


@event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    head = session.info.pop(_APPENDED, None)
    if head is None:
        return
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(head)


@event.listens_for(Session, "after_rollback")
def _forget_announcement(session: Session) -> None:
    session.info.pop(_APPENDED, None)


def read_head(session: Session) -> Head:
    """The committed head (or, inside a writer's transaction, its own)."""
    row = session.execute(
        select(Revision.ledger_length, Revision.ledger_head).where(Revision.id == 1)
    ).one()
    return Head(int(row.ledger_length), row.ledger_head)


def _locked_head(session: Session) -> Head:
    # claim_revision locks the revision row, which holds the head: appends are serialised
    # by the same lock every writer already takes first, so the chain cannot fork.
    claim_revision(session)
    head = session.info.get(_HEAD)
    if head is None:
        head = read_head(session)
        session.info[_HEAD] = head
    assert isinstance(head, Head)
    return head


def record(session: Session, kind: str, keys: Sequence[Any], *, now: datetime) -> Head:
    """Append one entry of ``kind`` per key, in order, in the caller's transaction.

    Each entry carries the hash of its row as it now stands in the database (the
    caller has just written it), or of nothing for a deletion. Returns the new head.
    """
    subject_type = KINDS[kind]
    head = _locked_head(session)
    if not keys:
        return head
    session.flush()
    deleted = is_deletion(kind)
    payloads = {} if deleted else subject_type.payloads(session, keys)
    rows: list[dict[str, Any]] = []
    length, previous = head.length, head.hash
    for key in keys:
        if not deleted and key not in payloads:
            raise LookupError(f"{subject_type.subject(key)} is not in the database")
        length += 1
        subject = subject_type.subject(key)
        digest = payload_hash(None if deleted else payloads[key])
        current = entry_hash(
            previous, seq=length, at=now, kind=kind, subject=subject, payload_digest=digest
        )
        rows.append(
            {
                "seq": length,
                "at": now,
                "kind": kind,
                "subject": subject,
                "payload_hash": digest,
                "prev_hash": previous,
                "hash": current,
            }
        )
        previous = current
    # The table, not the entity: a plain executemany, without the ORM's bulk bookkeeping.
    table: Table = LedgerEntry.__table__  # type: ignore[assignment]
    for start in range(0, len(rows), 1000):
        session.execute(insert(table), rows[start : start + 1000])
    new_head = Head(length, previous)
    session.execute(
        update(Revision)
        .where(Revision.id == 1)
        .values(
            value=claim_revision(session),
            ledger_length=new_head.length,
            ledger_head=new_head.hash,
        )
    )
    session.info[_HEAD] = new_head
    session.info[_APPENDED] = new_head
    return new_head


def entries(session: Session, *, after: int, limit: int) -> list[LedgerEntry]:
    """Entries with ``seq`` greater than ``after``, in order."""
    return list(
        session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.seq > after)
            .order_by(LedgerEntry.seq)
            .limit(limit)
        )
    )


@dataclass(slots=True)
class Problem:
    """One thing verification found wrong."""

    seq: int | None
    subject: str | None
    reason: str


@dataclass(slots=True)
class Verdict:
    ok: bool
    length: int
    head: str
    problems: list[Problem] = field(default_factory=list)
    # The head the revision row records: what readers are told the ledger ends at.
    recorded: Head | None = None

    @property
    def first_bad(self) -> Problem | None:
        with_seq = [p for p in self.problems if p.seq is not None]
        if with_seq:
            return min(with_seq, key=lambda p: p.seq or 0)
        return self.problems[0] if self.problems else None


_MAX_PROBLEMS = 100

Checkpoint = Callable[[], None]
"""Called between pages of a verification; it may raise to stop it (see ``verifier``)."""


def _carry_on() -> None:
    return None


def verify_database(
    database: Database,
    *,
    progress: Callable[[int], None] | None = None,
    checkpoint: Checkpoint = _carry_on,
) -> Verdict:
    """Verify in one consistent snapshot of the database, whatever is being written meanwhile.

    SQLite's read transaction is a snapshot already; PostgreSQL needs REPEATABLE READ,
    or a write committed halfway through would look like tampering.
    """
    with database.session(write=False) as session:
        if database.dialect == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        try:
            return verify(session, progress=progress, checkpoint=checkpoint)
        finally:
            session.rollback()


def verify(
    session: Session,
    *,
    progress: Callable[[int], None] | None = None,
    checkpoint: Checkpoint = _carry_on,
) -> Verdict:
    """Recompute the chain, compare every subject's latest entry with its row today, then
    recompute the derived state readers are shown from those rows.

    Finds an entry edited, removed or reordered (the chain breaks there), a head
    that does not match the chain's end (entries cut off the tail), a row changed,
    deleted or inserted behind the API's back, and a pledge's kept status,
    verification, counters or summaries that its history and links do not make
    (``derived``). Memory stays flat: everything is read in pages, and
    ``checkpoint`` is called between them.
    """
    # Imported here: the derived state is computed by services that record into the ledger.
    from app.domain.ledger.derived import verify_derived

    problems: list[Problem] = []
    length, running = _verify_chain(session, problems, progress, checkpoint)
    recorded = read_head(session)
    if (recorded.length, recorded.hash) != (length, running):
        problems.append(
            Problem(
                seq=min(length, recorded.length) + 1 if recorded.length != length else length,
                subject=None,
                reason=(
                    f"the recorded head is entry {recorded.length} ({recorded.hash[:12]}…) "
                    f"but the chain ends at entry {length} ({running[:12]}…)"
                ),
            )
        )
    for subject_type in SUBJECT_TYPES.values():
        if len(problems) >= _MAX_PROBLEMS:
            break
        _verify_rows(session, subject_type, problems, checkpoint)
        _verify_deletions(session, subject_type, problems, checkpoint)
    verify_derived(session, problems, checkpoint=checkpoint, limit=_MAX_PROBLEMS)
    problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return Verdict(
        ok=not problems,
        length=length,
        head=running,
        problems=problems[:_MAX_PROBLEMS],
        recorded=recorded,
    )


def _verify_chain(
    session: Session,
    problems: list[Problem],
    progress: Callable[[int], None] | None,
    checkpoint: Checkpoint,
) -> tuple[int, str]:
    expected_seq, running = 1, GENESIS
    broken = False
    for entry in _stream_entries(session, checkpoint):
        if not broken:
            reason = None
            if entry.seq != expected_seq:
                reason = f"entry {expected_seq} is missing (the next entry is {entry.seq})"
                seq = expected_seq
            elif entry.prev_hash != running:
                reason = "its prev_hash is not the hash of the entry before it"
                seq = entry.seq
            elif entry.kind not in KINDS:
                reason = f"unknown kind {entry.kind!r}"
                seq = entry.seq
            elif entry.hash != entry_hash(
                entry.prev_hash,
                seq=entry.seq,
                at=entry.at,
                kind=entry.kind,
                subject=entry.subject,
                payload_digest=entry.payload_hash,
            ):
                reason = "its hash does not match its contents"
                seq = entry.seq
            if reason is not None:
                problems.append(Problem(seq=seq, subject=entry.subject, reason=reason))
                broken = True
        running = entry.hash
        expected_seq = entry.seq + 1
        if progress is not None:
            progress(entry.seq)
    return expected_seq - 1, running


def _stream_entries(session: Session, checkpoint: Checkpoint) -> Iterator[Any]:
    last = 0
    while True:
        checkpoint()
        batch = session.execute(
            select(
                LedgerEntry.seq,
                LedgerEntry.at,
                LedgerEntry.kind,
                LedgerEntry.subject,
                LedgerEntry.payload_hash,
                LedgerEntry.prev_hash,
                LedgerEntry.hash,
            )
            .where(LedgerEntry.seq > last)
            .order_by(LedgerEntry.seq)
            .limit(5000)
        ).all()
        if not batch:
            return
        yield from batch
        last = batch[-1].seq


def _latest_entries(session: Session, subjects: Sequence[str]) -> dict[str, Any]:
    """The latest entry of each of ``subjects`` (by the subject-and-seq index)."""
    latest: dict[str, Any] = {}
    for start in range(0, len(subjects), 500):
        chunk = subjects[start : start + 500]
        last_seqs = (
            select(func.max(LedgerEntry.seq).label("seq"))
            .where(LedgerEntry.subject.in_(chunk))
            .group_by(LedgerEntry.subject)
            .subquery()
        )
        for row in session.execute(
            select(
                LedgerEntry.seq, LedgerEntry.subject, LedgerEntry.kind, LedgerEntry.payload_hash
            ).join(last_seqs, last_seqs.c.seq == LedgerEntry.seq)
        ):
            latest[row.subject] = row
    return latest


def _verify_rows(
    session: Session, subject_type: SubjectType, problems: list[Problem], checkpoint: Checkpoint
) -> None:
    for payloads in subject_type.chunks(session):
        checkpoint()
        subjects = {subject_type.subject(key): key for key in payloads}
        latest = _latest_entries(session, list(subjects))
        for subject, key in subjects.items():
            entry = latest.get(subject)
            if entry is None:
                problems.append(
                    Problem(seq=None, subject=subject, reason="the row is not in the ledger")
                )
            elif is_deletion(entry.kind):
                problems.append(
                    Problem(
                        seq=entry.seq,
                        subject=subject,
                        reason="the ledger says the row was deleted, but it is there",
                    )
                )
            elif payload_hash(payloads[key]) != entry.payload_hash:
                problems.append(
                    Problem(
                        seq=entry.seq,
                        subject=subject,
                        reason=f"the row differs from what entry {entry.seq} ({entry.kind}) "
                        "recorded",
                    )
                )
            if len(problems) >= _MAX_PROBLEMS:
                return


def _verify_deletions(
    session: Session, subject_type: SubjectType, problems: list[Problem], checkpoint: Checkpoint
) -> None:
    """Subjects the ledger holds whose rows are gone without a deletion entry."""
    prefix = f"{subject_type.name}:"
    last = ""
    key_column = subject_type.table.c[subject_type.key]
    while True:
        checkpoint()
        rows = session.execute(
            select(LedgerEntry.subject, func.max(LedgerEntry.seq).label("seq"))
            .where(LedgerEntry.subject.startswith(prefix, autoescape=True))
            .where(LedgerEntry.subject > last)
            .group_by(LedgerEntry.subject)
            .order_by(LedgerEntry.subject)
            .limit(1000)
        ).all()
        if not rows:
            return
        last = rows[-1].subject
        keys = {}
        for row in rows:
            try:
                keys[row.subject] = subject_type.parse_key(row.subject[len(prefix) :])
            except ValueError:
                problems.append(
                    Problem(seq=row.seq, subject=row.subject, reason="malformed subject")
                )
        existing = set(
            session.scalars(select(key_column).where(key_column.in_(list(keys.values()))))
        )
        missing = [row for row in rows if row.subject in keys and keys[row.subject] not in existing]
        if not missing:
            continue
        kinds: dict[int, str] = {}
        for entry in session.execute(
            select(LedgerEntry.seq, LedgerEntry.kind).where(
                LedgerEntry.seq.in_([row.seq for row in missing])
            )
        ):
            kinds[entry.seq] = entry.kind
        for row in missing:
            if not is_deletion(kinds[row.seq]):
                problems.append(
                    Problem(
                        seq=row.seq,
                        subject=row.subject,
                        reason=f"the row recorded by entry {row.seq} ({kinds[row.seq]}) is gone",
                    )
                )
                if len(problems) >= _MAX_PROBLEMS:
                    return


# What each kind of row was recorded as when a database made before the ledger adopts it.
_ADOPTED_AS = (
    ("pledge.created", "pledge"),
    ("status.changed", "status_change"),
    ("evidence.added", "evidence"),
    ("link.made", "link"),
    ("proposal.created", "proposal"),
    ("source.created", "source"),
    ("webhook.created", "webhook"),
)


def adopt_existing_rows(session: Session, *, now: datetime) -> int:
    """Record every row that has no ledger entry yet (a database older than the ledger).

    Returns how many entries were appended.
    """
    appended = 0
    for kind, name in _ADOPTED_AS:
        subject_type = SUBJECT_TYPES[name]
        for payloads in subject_type.chunks(session):
            subjects = {subject_type.subject(key): key for key in payloads}
            known = set(_latest_entries(session, list(subjects)))
            keys = [key for subject, key in subjects.items() if subject not in known]
            record(session, kind, keys, now=now)
            appended += len(keys)
    return appended
