"""Write a benchmark database directly: pledges, evidence with links, status history and ledger.

Nothing goes through the API: rows are made in memory and inserted with SQLAlchemy Core
``executemany`` in large transactions. The result is still a database the service accepts
as its own: migrated by Alembic first, every derived column (a pledge's status,
verification, counts, version; the source tallies, monthly totals and grade dates; the
revision and ledger head) consistent with the rows, and a ledger that ``pledgewatch ledger
verify`` accepts. The ledger's payloads are built from :mod:`app.domain.ledger.subjects`'
column lists and hashed with :mod:`app.domain.ledger.canonical`, the code the service
itself uses.

The data are deterministic for a given size and seed (only "now" moves with the clock).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import multiprocessing
import random
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, update
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import Session

from app.db import UTCDateTime
from app.domain.evidence.identity import content_hash, url_key
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.evidence.service import rebuild_summaries
from app.domain.ledger.canonical import GENESIS, entry_hash, payload_hash
from app.domain.ledger.models import LedgerEntry
from app.domain.ledger.subjects import EVIDENCE, LINK, PLEDGE, STATUS_CHANGE, Payload
from app.domain.pledges.models import Pledge, PledgeParty, PledgeTopic
from app.domain.pledges.service import start_of
from app.domain.status.models import Revision, StatusChange
from app.migrate import upgrade

STATUSES = ("not_yet_rated", "in_progress", "stalled", "compromise", "kept", "broken")
# When the service "started": every pledge is recorded in its first day, everything after.
SERVICE_START = datetime(2015, 1, 1, tzinfo=UTC)
ANALYST = "key:bench-analyst"
FEED = "source:bench-feed"
PARTIES = ("US", "CN", "GB", "FR", "DE", "JP", "IN", "BR", "ZA", "CA", "AU", "KR", "MX", "ID")
TOPICS = ("climate", "trade", "narcotics", "health", "security", "energy", "migration", "ai")
KINDS = ("commitment", "planned_engagement", "concern")
STANCES = ("supports", "supports", "undermines", "context")
# Sources with a fixed type and reliability, as real ones have: what verification grades.
SOURCES: tuple[tuple[str, str, str], ...] = (
    *((f"Wire Service {n}", "independent", "high") for n in range(1, 9)),
    *((f"Regional Paper {n}", "independent", "medium") for n in range(1, 13)),
    *((f"Blog {n}", "independent", "low") for n in range(1, 6)),
    *((f"Ministry of Affairs {n}", "pledger_official", "high") for n in range(1, 7)),
    *((f"Counterpart Office {n}", "counterpart_official", "medium") for n in range(1, 5)),
    *((f"Statistics Bureau {n}", "dataset", "high") for n in range(1, 4)),
    ("Analyst desk", "analyst_note", "medium"),
)
_LEDGER_BATCH = 20_000
_EVIDENCE_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Size:
    """How much history a benchmark database holds."""

    pledges: int
    evidence: int
    status_changes: int

    def __post_init__(self) -> None:
        if self.pledges < 1 or self.evidence < 0:
            raise ValueError("a benchmark database needs at least one pledge")
        if self.status_changes < self.pledges:
            raise ValueError("every pledge's history has a first entry: status_changes >= pledges")

    @property
    def label(self) -> str:
        return f"{self.pledges}p-{self.evidence}e-{self.status_changes}s"


@dataclass(slots=True)
class Report:
    """What was written, and how long it took."""

    size: Size
    links: int = 0
    ledger_length: int = 0
    ledger_head: str = GENESIS
    revision: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _PledgeState:
    """The derived columns of one pledge, accumulated while its rows are written."""

    accepted: int = 0
    unreviewed: int = 0
    last_evidence_at: datetime | None = None
    status: str = "not_yet_rated"
    status_since: datetime = SERVICE_START


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _payload(columns: Iterable[str], row: dict[str, Any]) -> Payload:
    return {name: row[name] for name in columns}


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
# Every this many hashes the fast path is checked against the service's own functions.
_CROSS_CHECK_EVERY = 499


# The same instants recur (an item's time is its links' and its entries' too): each is
# formatted once. Cleared when large, so memory stays flat.
_ISO: dict[datetime, str] = {}
_STORED: dict[datetime, str] = {}


def _iso(moment: datetime) -> str:
    text = _ISO.get(moment)
    if text is None:
        if len(_ISO) > 100_000:
            _ISO.clear()
        text = _ISO[moment] = moment.isoformat(timespec="microseconds")
    return text


def _plain(value: Any) -> Any:
    """:func:`app.domain.ledger.canonical.plain` for the generator's own values (all UTC)."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is datetime:
        return _iso(value)
    if kind is date:
        return value.isoformat()
    if kind is list:
        return [_plain(item) for item in value]
    return value


class _Hasher:
    """The ledger's hashes, computed a few times faster than the general functions can.

    The general functions handle any value read from any database; the generator's
    values are of a few known types, all in UTC. So that the two can never drift
    apart unnoticed, a sample of hashes (the first of each kind, then one in
    ``_CROSS_CHECK_EVERY``) is recomputed with :mod:`app.domain.ledger.canonical`,
    and any difference stops the generator.
    """

    def __init__(self) -> None:
        self._count = 0
        self._kinds_seen: set[str] = set()

    def _check(self, kind: str) -> bool:
        self._count += 1
        if kind not in self._kinds_seen:
            self._kinds_seen.add(kind)
            return True
        return self._count % _CROSS_CHECK_EVERY == 0

    def payload(self, kind: str, payload: Payload) -> str:
        text = _ENCODER.encode({key: _plain(value) for key, value in payload.items()})
        digest = hashlib.sha256(text.encode("ascii")).hexdigest()
        if self._check("payload:" + kind) and digest != payload_hash(payload):
            raise AssertionError(f"the fast payload hash drifted from the ledger's ({kind})")
        return digest

    def entry(
        self, previous: str, *, seq: int, at: datetime, kind: str, subject: str, digest: str
    ) -> str:
        text = _ENCODER.encode(
            {
                "seq": seq,
                "at": _iso(at),
                "kind": kind,
                "subject": subject,
                "payload_hash": digest,
            }
        )
        current = hashlib.sha256((previous + text).encode("ascii")).hexdigest()
        if self._check("entry:" + kind) and current != entry_hash(
            previous, seq=seq, at=at, kind=kind, subject=subject, payload_digest=digest
        ):
            raise AssertionError(f"the fast entry hash drifted from the ledger's ({kind})")
        return current


Encoded = tuple[list[str], list[tuple[Any, ...]]]
"""Column names, and one tuple of driver values per row."""


class RowEncoder:
    """Rows as the driver takes them, converted by the columns' own SQLAlchemy bind processors.

    So values are stored exactly as the service's ORM would store them; only
    SQLAlchemy's per-row bookkeeping is skipped, which is most of the cost of a bulk load.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def _converter(self, table: Table, name: str, sample: Any) -> Callable[[Any], Any] | None:
        """The column's bind processor; for SQLite datetimes a faster equivalent, checked once."""
        column = table.c[name]
        processor: Callable[[Any], Any] | None = column.type._cached_bind_processor(self.dialect)
        if processor is None or self.dialect.name != "sqlite":
            return processor
        if not isinstance(column.type, UTCDateTime):
            return processor

        def stored(value: datetime | None) -> str | None:
            # The generator's datetimes are all UTC: SQLite stores them naive, to the microsecond.
            if value is None:
                return None
            text = _STORED.get(value)
            if text is None:
                if len(_STORED) > 100_000:
                    _STORED.clear()
                text = _STORED[value] = value.replace(tzinfo=None).isoformat(" ", "microseconds")
            return text

        if sample is not None and stored(sample) != processor(sample):
            raise AssertionError(f"{table.name}.{name}: SQLite stores datetimes differently now")
        return stored

    def encode(self, table: Table, rows: list[dict[str, Any]]) -> Encoded:
        """The column names of ``rows`` and their values, ready for ``executemany``."""
        if not rows:
            return [], []
        names = list(rows[0])
        converters = [
            (index, converter)
            for index, name in enumerate(names)
            if (converter := self._converter(table, name, rows[0][name])) is not None
        ]
        encoded = []
        for row in rows:
            values = [row[name] for name in names]
            for index, converter in converters:
                values[index] = converter(values[index])
            encoded.append(tuple(values))
        return names, encoded


class _Sink:
    """Inserts rows through the driver's ``executemany`` (PostgreSQL: ``COPY``)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._dialect = connection.dialect
        self.encoder = RowEncoder(connection.dialect)

    def insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        self.insert_encoded(table, self.encoder.encode(table, rows))

    def insert_encoded(self, table: Table, encoded: Encoded) -> None:
        names, values = encoded
        if not values:
            return
        columns = ", ".join(f'"{name}"' for name in names)
        driver_connection: Any = self._connection.connection.driver_connection
        cursor = driver_connection.cursor()
        try:
            if self._dialect.name == "postgresql":
                with cursor.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy:
                    for row in values:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" for _ in names)
                cursor.executemany(
                    # Names from our own metadata, values bound: nothing here comes from outside.
                    f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})',  # noqa: S608
                    values,
                )
        finally:
            cursor.close()


class _Ledger:
    """Entries waiting for their turn (ordered by time), then chained and written in batches."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._hasher = _Hasher()
        self._pending: list[tuple[datetime, int, str, str, str]] = []
        self._order = 0
        self._rows: list[dict[str, Any]] = []
        self.length = 0
        self.head = GENESIS

    def add(self, at: datetime, kind: str, subject: str, payload: Payload) -> None:
        self.add_hashed(at, kind, subject, self._hasher.payload(kind, payload))

    def add_hashed(self, at: datetime, kind: str, subject: str, digest: str) -> None:
        self._order += 1
        heapq.heappush(self._pending, (at, self._order, kind, subject, digest))

    def append_until(self, until: datetime | None) -> None:
        """Chain every pending entry dated up to ``until`` (all of them when None)."""
        pending = self._pending
        while pending and (until is None or pending[0][0] <= until):
            at, _, kind, subject, digest = heapq.heappop(pending)
            self.length += 1
            current = self._hasher.entry(
                self.head, seq=self.length, at=at, kind=kind, subject=subject, digest=digest
            )
            self._rows.append(
                {
                    "seq": self.length,
                    "at": at,
                    "kind": kind,
                    "subject": subject,
                    "payload_hash": digest,
                    "prev_hash": self.head,
                    "hash": current,
                }
            )
            self.head = current
            if len(self._rows) >= _LEDGER_BATCH:
                self.flush()

    def flush(self) -> None:
        self._sink.insert(_table(LedgerEntry), self._rows)
        self._rows = []


def bulk_engine(url: str) -> Engine:
    """An engine tuned for one bulk load (the file is only trusted once the load completes)."""
    if not url.startswith("sqlite"):
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _no_wait(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET synchronous_commit = off")
            cursor.close()
            dbapi_connection.commit()

        return engine
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _bulk(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-1000000",
            "temp_store=MEMORY",
            "locking_mode=EXCLUSIVE",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


class Generator:
    """Makes the rows of one benchmark database, deterministic for a size and a seed."""

    def __init__(self, size: Size, *, seed: int = 5, now: datetime | None = None) -> None:
        self.size = size
        self.random = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        # Nothing is dated within the last day: a day-old database is still all in the past.
        self.end = now - timedelta(days=1)
        if self.end <= SERVICE_START + timedelta(days=30):
            raise ValueError("the clock is before 2015: cannot date a history")
        self.pledge_ids = [f"bench-pledge-{n:05d}" for n in range(size.pledges)]
        self.state = {pledge_id: _PledgeState() for pledge_id in self.pledge_ids}

    # --- pledges ---------------------------------------------------------------------------

    def pledges(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Pledge rows (derived columns at their starting values), parties and topics."""
        rng = self.random
        pledges: list[dict[str, Any]] = []
        parties: list[dict[str, Any]] = []
        topics: list[dict[str, Any]] = []
        for index, pledge_id in enumerate(self.pledge_ids):
            made_on = date(2012, 1, 1) + timedelta(days=rng.randrange(3 * 365))
            created_at = SERVICE_START + timedelta(seconds=index)
            due_on = made_on + timedelta(days=rng.randrange(365, 15 * 365)) if index % 4 else None
            topic = rng.choice(TOPICS)
            pledges.append(
                {
                    "id": pledge_id,
                    "title": f"Pledge {index}: the parties will cooperate on {topic} "
                    f"and report progress every year",
                    "text": f"The parties commit to cooperate on {topic}; pledge number {index}.",
                    "kind": KINDS[index % len(KINDS)],
                    "made_on": made_on,
                    "venue": f"Summit {index % 40}",
                    "source_title": f"Joint statement {index}",
                    "source_url": f"https://statements.example.org/{index}",
                    "source_publisher": "Example Foreign Office",
                    "source_published_on": made_on,
                    "source_quote": "We will work together.",
                    "verification_criteria": f"Readouts and data on {topic}.",
                    "due_on": due_on,
                    "review_every_days": (30, 60, 90)[index % 3],
                    "status": "not_yet_rated",
                    "status_since": start_of(made_on),
                    "verification": "unverified",
                    "evidence_count": 0,
                    "unreviewed_count": 0,
                    "last_evidence_at": None,
                    "version": 1,
                    "created_at": created_at,
                    "updated_at": created_at,
                    "created_by": ANALYST,
                }
            )
            made_by = rng.sample(PARTIES, rng.choice((1, 2)))
            made_to = [p for p in rng.sample(PARTIES, 3) if p not in made_by][:2]
            chosen_topics = rng.sample(TOPICS, rng.choice((1, 2, 3)))
            for role, members in (("made_by", made_by), ("made_to", made_to)):
                parties.extend(
                    {"pledge_id": pledge_id, "role": role, "party": party, "position": position}
                    for position, party in enumerate(members)
                )
            topics.extend(
                {"pledge_id": pledge_id, "topic": name, "position": position}
                for position, name in enumerate(chosen_topics)
            )
        return pledges, parties, topics

    @staticmethod
    def pledge_payload(
        pledge: dict[str, Any], parties: list[dict[str, Any]], topics: list[dict[str, Any]]
    ) -> Payload:
        """What the ledger records of a pledge: its fact columns and its lists, in order."""
        lists: dict[str, list[str]] = {"made_by": [], "made_to": [], "topics": []}
        for party in sorted(parties, key=lambda p: (p["role"], p["position"])):
            lists[party["role"]].append(party["party"])
        lists["topics"] = [t["topic"] for t in sorted(topics, key=lambda t: t["position"])]
        return {**_payload(PLEDGE.columns, pledge), **lists}

    # --- status history --------------------------------------------------------------------

    def status_changes(self, pledges: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every pledge's history: its first entry, then later changes, ids in recorded order."""
        rng = self.random
        count = len(pledges)
        first = [
            {
                "pledge_id": pledge["id"],
                "from_status": None,
                "to_status": "not_yet_rated",
                "effective_at": start_of(pledge["made_on"]),
                "recorded_at": pledge["created_at"],
                "actor": ANALYST,
                "reason": "Pledge recorded; not yet rated.",
                "evidence_ids": [],
            }
            for pledge in pledges
        ]
        later: list[dict[str, Any]] = []
        extra = self.size.status_changes - count
        earliest_record = SERVICE_START + timedelta(days=1)
        for index, pledge in enumerate(pledges):
            wanted = extra // count + (1 if index < extra % count else 0)
            if not wanted:
                continue
            start = start_of(pledge["made_on"]) + timedelta(days=1)
            span = int((self.end - timedelta(days=4) - start).total_seconds())
            moments = sorted({rng.randrange(span) for _ in range(wanted)})
            while len(moments) < wanted:  # collisions: vanishingly rare, but keep the count
                moments = sorted(set(moments) | {rng.randrange(span)})
            status = "not_yet_rated"
            for moment in moments:
                effective_at = start + timedelta(seconds=moment)
                to_status = rng.choice([s for s in STATUSES[1:] if s != status])
                recorded_at = max(effective_at, earliest_record) + timedelta(
                    minutes=rng.randrange(1, 3 * 24 * 60)
                )
                later.append(
                    {
                        "pledge_id": pledge["id"],
                        "from_status": status,
                        "to_status": to_status,
                        "effective_at": effective_at,
                        "recorded_at": recorded_at,
                        "actor": ANALYST if to_status in ("kept", "broken") else "rule:bench",
                        "reason": f"Bench assessment: now {to_status.replace('_', ' ')}.",
                        "evidence_ids": [],
                    }
                )
                status = to_status
        later.sort(key=lambda change: (change["recorded_at"], change["pledge_id"]))
        changes = first + later
        for change_id, change in enumerate(changes, start=1):
            change["id"] = change_id
            state = self.state[change["pledge_id"]]
            # The current status is the latest by effective time (the later in each history).
            if change["effective_at"] >= state.status_since or change["from_status"] is None:
                state.status = change["to_status"]
                state.status_since = change["effective_at"]
        return changes

    # --- evidence and links ----------------------------------------------------------------

    def evidence_chunk(
        self, start: int, stop: int, first_link_id: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, Payload, datetime]]]:
        """Items ``start`` to ``stop`` (0-based), their links, and the link reviews made later.

        Reviews are returned as (subject, payload of the row after review, when) and the
        link rows are their final state; ``link.made`` payloads are the state at creation.
        """
        rng = self.random
        total = max(self.size.evidence, 1)
        first_record = SERVICE_START + timedelta(days=1)
        span_us = int((self.end - first_record).total_seconds() * 1_000_000)
        pledge_ids = self.pledge_ids
        items: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        reviews: list[tuple[str, Payload, datetime]] = []
        link_id = first_link_id
        for index in range(start, stop):
            evidence_id = index + 1
            recorded_at = first_record + timedelta(
                microseconds=span_us * (2 * index + 1) // total // 2
            )
            published_at = (recorded_at - timedelta(hours=rng.randrange(1, 240))).replace(
                microsecond=0
            )
            name, source_type, reliability = SOURCES[rng.randrange(len(SOURCES))]
            by_analyst = rng.random() < 0.7
            title = f"{name} reports on item {evidence_id}"
            summary = (
                f"Item {evidence_id}: what {name} published about the pledges it concerns, "
                "summarised in a sentence or two for the benchmark."
            )
            url = f"https://evidence.example.org/items/{evidence_id}" if index % 10 else None
            observed = round(rng.uniform(0, 100), 1) if source_type == "dataset" else None
            item = {
                "id": evidence_id,
                "title": title,
                "url": url,
                "url_key": url_key(url),
                "summary": summary,
                "published_at": published_at,
                "source_name": name,
                "source_type": source_type,
                "reliability": reliability,
                "content_hash": content_hash(title, summary, published_at),
                "collected_by": ANALYST if by_analyst else FEED,
                "recorded_at": recorded_at,
                "fetched_at": None if by_analyst else recorded_at - timedelta(seconds=5),
                "observed_value": observed,
                "target_met": None if observed is None else observed >= 50,
            }
            items.append(item)
            wanted = min(1 + rng.randrange(3), len(pledge_ids))
            chosen: list[str] = []
            while len(chosen) < wanted:
                candidate = pledge_ids[rng.randrange(len(pledge_ids))]
                if candidate not in chosen:
                    chosen.append(candidate)
            for pledge_id in chosen:
                stance = STANCES[rng.randrange(len(STANCES))]
                link = {
                    "id": link_id,
                    "evidence_id": evidence_id,
                    "pledge_id": pledge_id,
                    "stance": stance,
                    "review": "accepted" if by_analyst else "unreviewed",
                    "review_note": None,
                    "reviewed_by": None,
                    "reviewed_at": None,
                    "linked_by": item["collected_by"],
                    "created_at": recorded_at,
                    "published_at": published_at,
                }
                link_id += 1
                if not by_analyst and rng.random() < 0.5:
                    reviewed_at = min(recorded_at + timedelta(days=2), self.end)
                    reviewed = {
                        **link,
                        "review": "accepted" if rng.random() < 0.6 else "rejected",
                        "review_note": "Checked against the source (bench).",
                        "reviewed_by": ANALYST,
                        "reviewed_at": reviewed_at,
                    }
                    reviews.append(
                        (
                            LINK.subject(link["id"]),
                            _payload(LINK.columns, reviewed),
                            reviewed_at,
                        )
                    )
                    links.append({"made": link, "row": reviewed})
                else:
                    links.append({"made": link, "row": link})
                row = links[-1]["row"]
                state = self.state[pledge_id]
                if row["review"] == "accepted":
                    state.accepted += 1
                    if state.last_evidence_at is None or state.last_evidence_at < published_at:
                        state.last_evidence_at = published_at
                elif row["review"] == "unreviewed":
                    state.unreviewed += 1
        return items, links, reviews

    # --- derived state ---------------------------------------------------------------------

    def derived(self, version: int) -> list[dict[str, Any]]:
        """Each pledge's derived columns, from what was generated.

        Verification is left to the service: ``rebuild_summaries`` grades every pledge
        from the tallies it makes.
        """
        return [
            {
                "pid": pledge_id,
                "status": state.status,
                "status_since": state.status_since,
                "evidence_count": state.accepted,
                "unreviewed_count": state.unreviewed,
                "last_evidence_at": state.last_evidence_at,
                "version": version,
            }
            for pledge_id, state in self.state.items()
        ]


@dataclass(slots=True)
class _Chunk:
    """One chunk of evidence, made (possibly in another process) ready to insert."""

    items: Encoded
    links: Encoded
    link_count: int
    # (when, kind, subject, payload hash) of each ledger entry the chunk needs.
    entries: list[tuple[datetime, str, str, str]]
    last_recorded_at: datetime
    state: dict[str, _PledgeState]


# What a worker process (or this one, without workers) makes chunks with.
_worker: dict[str, tuple[Generator, RowEncoder, _Hasher, int]] = {}


def _start_worker(size: Size, seed: int, now: datetime, url: str) -> None:
    dialect = make_url(url).get_dialect()()
    _worker["made"] = (Generator(size, seed=seed, now=now), RowEncoder(dialect), _Hasher(), seed)


def _make_chunk(start: int) -> _Chunk:
    """Items ``start`` to ``start + _EVIDENCE_CHUNK``: rows encoded, payloads hashed.

    Each chunk has its own random stream and its own range of link ids (at most three
    links an item), so chunks can be made in any process, in any order, with the same
    result.
    """
    generator, encoder, hasher, seed = _worker["made"]
    stop = min(start + _EVIDENCE_CHUNK, generator.size.evidence)
    generator.random = random.Random(f"{seed}:{start}")  # noqa: S311 - data, not secrets
    generator.state = {pledge_id: _PledgeState() for pledge_id in generator.pledge_ids}
    items, links, reviews = generator.evidence_chunk(start, stop, 3 * start + 1)
    entries = [
        (
            item["recorded_at"],
            "evidence.added",
            EVIDENCE.subject(item["id"]),
            hasher.payload("evidence.added", _payload(EVIDENCE.columns, item)),
        )
        for item in items
    ]
    entries.extend(
        (
            link["made"]["created_at"],
            "link.made",
            LINK.subject(link["made"]["id"]),
            hasher.payload("link.made", _payload(LINK.columns, link["made"])),
        )
        for link in links
    )
    entries.extend(
        (at, "link.reviewed", subject, hasher.payload("link.reviewed", payload))
        for subject, payload, at in reviews
    )
    touched = {
        pledge_id: state
        for pledge_id, state in generator.state.items()
        if state.accepted or state.unreviewed
    }
    return _Chunk(
        items=encoder.encode(_table(Evidence), items),
        links=encoder.encode(_table(EvidenceLink), [link["row"] for link in links]),
        link_count=len(links),
        entries=entries,
        last_recorded_at=items[-1]["recorded_at"],
        state=touched,
    )


def _chunks(size: Size, seed: int, now: datetime, url: str, workers: int) -> Iterator[_Chunk]:
    """Every chunk in order: made by ``workers`` processes a few chunks ahead, or here (0)."""
    starts = range(0, size.evidence, _EVIDENCE_CHUNK)
    if workers == 0:
        _start_worker(size, seed, now, url)
        yield from (_make_chunk(start) for start in starts)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(size, seed, now, url)) as pool:
        pending: deque[Any] = deque()
        queued = iter(starts)
        # A few chunks ahead at most: memory stays flat whichever side is faster.
        for start in queued:
            pending.append(pool.apply_async(_make_chunk, (start,)))
            if len(pending) >= 2 * workers + 1:
                break
        while pending:
            chunk: _Chunk = pending.popleft().get()
            next_start = next(queued, None)
            if next_start is not None:
                pending.append(pool.apply_async(_make_chunk, (next_start,)))
            yield chunk


def _merge(into: dict[str, _PledgeState], chunk: dict[str, _PledgeState]) -> None:
    for pledge_id, delta in chunk.items():
        state = into[pledge_id]
        state.accepted += delta.accepted
        state.unreviewed += delta.unreviewed
        if delta.last_evidence_at is not None and (
            state.last_evidence_at is None or state.last_evidence_at < delta.last_evidence_at
        ):
            state.last_evidence_at = delta.last_evidence_at


def generate(
    url: str,
    size: Size,
    *,
    seed: int = 5,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> Report:
    """Migrate the empty database at ``url`` and fill it to ``size``.

    ``workers`` processes make the evidence while this one writes it and chains the
    ledger (0: all in this process; what a process with threads, like a test, needs).
    """
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    upgrade(url)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    generator = Generator(size, seed=seed, now=now)
    report = Report(size=size)
    # Started before any connection is open: the workers inherit none.
    chunks = _chunks(size, seed, now, url, workers)
    engine = bulk_engine(url)
    try:
        with engine.begin() as connection:
            sink = _Sink(connection)
            ledger = _Ledger(sink)
            pledges, parties, topics = generator.pledges()
            sink.insert(_table(Pledge), pledges)
            sink.insert(_table(PledgeParty), parties)
            sink.insert(_table(PledgeTopic), topics)
            parties_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
            topics_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for party in parties:
                parties_of[party["pledge_id"]].append(party)
            for topic in topics:
                topics_of[topic["pledge_id"]].append(topic)
            changes = generator.status_changes(pledges)
            sink.insert(_table(StatusChange), changes)
            for pledge in pledges:
                ledger.add(
                    pledge["created_at"],
                    "pledge.created",
                    PLEDGE.subject(pledge["id"]),
                    generator.pledge_payload(
                        pledge, parties_of[pledge["id"]], topics_of[pledge["id"]]
                    ),
                )
            for change in changes:
                ledger.add(
                    change["recorded_at"],
                    "status.changed",
                    STATUS_CHANGE.subject(change["id"]),
                    _payload(STATUS_CHANGE.columns, change),
                )
            say(f"{len(pledges)} pledges, {len(changes)} status changes")
            links = 0
            for chunk in chunks:
                links += chunk.link_count
                sink.insert_encoded(_table(Evidence), chunk.items)
                sink.insert_encoded(_table(EvidenceLink), chunk.links)
                for at, kind, subject, digest in chunk.entries:
                    ledger.add_hashed(at, kind, subject, digest)
                _merge(generator.state, chunk.state)
                ledger.append_until(chunk.last_recorded_at)
                say(
                    f"evidence {len(chunk.items[1]) and chunk.items[1][-1][0]}/{size.evidence}, "
                    f"ledger {ledger.length}"
                )
            ledger.append_until(None)
            ledger.flush()
            report.links = links
            # One revision per ledger entry at least: every write appended one.
            report.revision = ledger.length
            updates = generator.derived(report.revision)
            pledge_table = _table(Pledge)
            connection.execute(
                update(pledge_table)
                .where(pledge_table.c.id == _bind("pid"))
                .values(
                    status=_bind("status"),
                    status_since=_bind("status_since", pledge_table.c.status_since.type),
                    evidence_count=_bind("evidence_count"),
                    unreviewed_count=_bind("unreviewed_count"),
                    last_evidence_at=_bind(
                        "last_evidence_at", pledge_table.c.last_evidence_at.type
                    ),
                    version=_bind("version"),
                ),
                updates,
            )
            # The summaries as_of reads (tallies, monthly totals, grade dates) are made by
            # the service's own code, from the links just written.
            say("summarising the links")
            rebuild_summaries(Session(bind=connection), None)
            connection.execute(
                update(_table(Revision))
                .where(_table(Revision).c.id == 1)
                .values(value=report.revision, ledger_length=ledger.length, ledger_head=ledger.head)
            )
            report.ledger_length, report.ledger_head = ledger.length, ledger.head
        if url.startswith("sqlite"):
            with engine.connect() as connection:
                # The service runs in WAL mode: leave the file as it would find it.
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        else:
            with engine.begin() as connection:
                # COPY gave the ids; the sequences must continue after them.
                for model in (Evidence, EvidenceLink, StatusChange):
                    name = _table(model).name
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "  # noqa: S608
                        f"GREATEST((SELECT max(id) FROM {name}), 1))"
                    )
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()
    report.seconds = time.perf_counter() - started
    return report


def _bind(name: str, type_: Any = None) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name, type_=type_)


def fingerprint() -> str:
    """Changes whenever this generator or the schema does: the cache key of generated files.

    The schema is every migration's text, not only the head's name: a migration edited
    before it is released changes the tables too.
    """
    digest = hashlib.sha256(Path(__file__).read_bytes())
    versions = Path(__file__).resolve().parent.parent / "migrations" / "versions"
    for migration in sorted(versions.glob("*.py")):
        digest.update(migration.name.encode())
        digest.update(migration.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.generate URL --evidence N ...``: fill an empty database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="an empty database (a new SQLite file, or PostgreSQL)")
    parser.add_argument("--pledges", type=int, default=1000)
    parser.add_argument("--evidence", type=int, default=100_000)
    parser.add_argument("--status-changes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    size = Size(args.pledges, args.evidence, args.status_changes)
    report = generate(args.url, size, seed=args.seed, progress=lambda m: print(m, file=sys.stderr))
    print(
        f"{size.label}: {report.links} links, ledger {report.ledger_length} entries "
        f"(head {report.ledger_head[:12]}), {report.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
