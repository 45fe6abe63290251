"""Sources: the feeds the scheduler polls, and the record of every poll. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.domain.ledger.service import record
from app.domain.pledges.models import Pledge
from app.domain.sources.mapping import validate_mapping
from app.domain.sources.models import Source, SourceRun
from app.domain.sources.schemas import (
    MatchRules,
    RunOut,
    RunOutcome,
    SourceCreate,
    SourceOut,
    SourceUpdate,
)
from app.domain.status.revision import claim_revision
from app.errors import Conflict, InvalidInput, NotFound, field_errors
from app.pagination import cursor_id, decode_cursor, encode_cursor


def _check_mapping(kind: str, mapping: dict[str, Any] | None) -> None:
    try:
        validate_mapping(kind, mapping)
    except ValueError as error:
        # The message reads "<key>: <reason>", the key being kind, mapping or mapping.<field>.
        field, _, reason = str(error).partition(": ")
        if not reason or not field.startswith(("mapping", "kind")):
            field, reason = "mapping", str(error)
        raise InvalidInput(field, reason) from None


def _check_pledges(session: Session, pledge_ids: Sequence[str]) -> None:
    found = set(session.scalars(select(Pledge.id).where(Pledge.id.in_(pledge_ids))))
    for index, pledge_id in enumerate(pledge_ids):
        if pledge_id not in found:
            raise InvalidInput(f"pledges[{index}]", f"no pledge with id {pledge_id!r}")


def get_source(session: Session, source_id: str) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise NotFound(f"no source with id {source_id!r}")
    return source


def create_source(session: Session, data: SourceCreate, *, now: datetime) -> Source:
    """Register a feed; it is polled from the scheduler's next reconciliation on."""
    claim_revision(session)
    if session.get(Source, data.id) is not None:
        raise Conflict(f"a source with id {data.id!r} already exists")
    _check_pledges(session, data.pledges)
    _check_mapping(data.kind, data.mapping)
    source = Source(
        id=data.id,
        name=data.name,
        kind=data.kind,
        url=data.url,
        every_minutes=data.every_minutes,
        pledges=list(data.pledges),
        match_any=list(data.match.any),
        match_all=list(data.match.all),
        match_none=list(data.match.none),
        stance=data.stance,
        source_type=data.source_type,
        reliability=data.reliability,
        trusted=data.trusted,
        enabled=data.enabled,
        mapping=data.mapping,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(source)
    session.flush()
    record(session, "source.created", [source.id], now=now)
    return source


def update_source(session: Session, source_id: str, data: SourceUpdate, *, now: datetime) -> Source:
    """Change what is given; a new URL forgets the conditional-GET state of the old one."""
    claim_revision(session)
    source = get_source(session, source_id)
    changes = data.model_dump(exclude_unset=True)
    for field, value in changes.items():
        if value is None and field != "mapping":
            raise InvalidInput(field, "may be changed but not removed")
    if "pledges" in changes:
        _check_pledges(session, changes["pledges"])
        source.pledges = list(changes["pledges"])
    if "mapping" in changes:
        _check_mapping(source.kind, changes["mapping"])
        source.mapping = changes["mapping"]
    if data.match is not None:
        source.match_any = list(data.match.any)
        source.match_all = list(data.match.all)
        source.match_none = list(data.match.none)
    if "url" in changes and changes["url"] != source.url:
        source.etag = None
        source.last_modified = None
    for field in (
        "name",
        "url",
        "every_minutes",
        "stance",
        "source_type",
        "reliability",
        "trusted",
        "enabled",
    ):
        if field in changes:
            setattr(source, field, changes[field])
    if changes.get("enabled"):
        # Re-enabling is a fresh start: poll at the normal pace again.
        source.consecutive_failures = 0
    source.updated_at = now
    session.flush()
    record(session, "source.edited", [source.id], now=now)
    return source


def delete_source(session: Session, source_id: str, *, now: datetime) -> None:
    """Remove a source and its runs; the evidence it brought stays."""
    claim_revision(session)
    session.delete(get_source(session, source_id))
    session.flush()
    record(session, "source.deleted", [source_id], now=now)


def list_sources(
    session: Session, *, limit: int, cursor: str | None
) -> tuple[list[SourceOut], str | None]:
    after = decode_cursor(cursor, 1)
    query = select(Source).order_by(Source.id).limit(limit + 1)
    if after is not None:
        query = query.where(Source.id > str(after[0]))
    rows = session.scalars(query).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [source_out(row) for row in rows[:limit]], next_cursor


def source_out(source: Source) -> SourceOut:
    return SourceOut(
        id=source.id,
        name=source.name,
        kind=source.kind,  # type: ignore[arg-type]
        url=source.url,
        every_minutes=source.every_minutes,
        pledges=list(source.pledges),
        match=MatchRules(any=source.match_any, all=source.match_all, none=source.match_none),
        stance=source.stance,  # type: ignore[arg-type]
        source_type=source.source_type,  # type: ignore[arg-type]
        reliability=source.reliability,  # type: ignore[arg-type]
        trusted=source.trusted,
        enabled=source.enabled,
        mapping=source.mapping,
        last_run_at=source.last_run_at,
        last_success_at=source.last_success_at,
        consecutive_failures=source.consecutive_failures,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


# --- polls: each run's record, and the source's polling state ---------------------------------
#
# A poll (app/scheduler's collect job, or POST /sources/{id}/run) goes begin_poll, then
# record_progress once per committed chunk, then finish_run; each in the poller's own short
# transaction. The poller never writes a source or a run itself.

# A failing source is polled less often: every_minutes doubled per consecutive failure,
# up to 2**5 = 32 times.
MAX_BACKOFF_DOUBLINGS = 5


@dataclass(frozen=True)
class FeedSettings:
    """What a poll needs of its source, copied in one short transaction before it fetches:
    where the feed is and its validators, how to read and match it, what its evidence says."""

    id: str
    url: str
    etag: str | None
    last_modified: str | None
    kind: str
    mapping: dict[str, Any] | None
    name: str
    source_type: str
    reliability: str
    stance: str
    trusted: bool
    pledges: tuple[str, ...]
    match_any: tuple[str, ...]
    match_all: tuple[str, ...]
    match_none: tuple[str, ...]

    @classmethod
    def of(cls, source: Source) -> FeedSettings:
        """A copy of ``source``'s settings, usable once its session is closed."""
        return cls(
            id=source.id,
            url=source.url,
            etag=source.etag,
            last_modified=source.last_modified,
            kind=source.kind,
            mapping=source.mapping,
            name=source.name,
            source_type=source.source_type,
            reliability=source.reliability,
            stance=source.stance,
            trusted=source.trusted,
            pledges=tuple(source.pledges),
            match_any=tuple(source.match_any),
            match_all=tuple(source.match_all),
            match_none=tuple(source.match_none),
        )


@dataclass(frozen=True)
class Poll:
    """A poll under way: the run it records into, and what it needs of its source."""

    run_id: int
    source: FeedSettings


@dataclass
class RunReport:
    """How a run ended, as its record and its source's polling state keep it.

    ``etag`` and ``last_modified`` are the validators of a successful fetch, kept for the
    next poll's conditional GET.
    """

    outcome: RunOutcome
    http_status: int | None = None
    items_seen: int = 0
    evidence_added: int = 0
    links_added: int = 0
    error: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    items_ingested: int = 0
    items_left: int = 0


@dataclass(frozen=True)
class PollSchedule:
    """When an enabled source is polled: at its interval (backed off while it fails), next
    at ``due_at`` (None when it was never polled)."""

    source_id: str
    interval: timedelta
    due_at: datetime | None


def start_run(session: Session, source_id: str, *, now: datetime) -> SourceRun:
    """Record that a poll of ``source_id`` begins."""
    get_source(session, source_id)
    run = SourceRun(
        source_id=source_id,
        started_at=now,
        outcome="running",
        items_seen=0,
        evidence_added=0,
        links_added=0,
        items_ingested=0,
        items_left=0,
    )
    session.add(run)
    session.flush()
    return run


def begin_poll(
    session: Session, source_id: str, *, run_id: int | None, now: datetime
) -> Poll | None:
    """Begin a poll of ``source_id``: a run is recorded, unless ``run_id`` continues one
    already recorded (``POST /sources/{id}/run``). None when the source is gone, or disabled
    and not asked for explicitly (no ``run_id``)."""
    source = session.get(Source, source_id)
    if source is None or (run_id is None and not source.enabled):
        return None
    if run_id is None:
        run_id = start_run(session, source_id, now=now).id
    return Poll(run_id=run_id, source=FeedSettings.of(source))


def record_progress(
    session: Session, run_id: int, *, items: int, evidence_added: int, links_added: int
) -> None:
    """Add one chunk's counts to its run, in the chunk's own transaction: the record shows
    progress while the run goes on, and never claims what was rolled back."""
    session.execute(
        update(SourceRun)
        .where(SourceRun.id == run_id)
        .values(
            items_ingested=SourceRun.items_ingested + items,
            evidence_added=SourceRun.evidence_added + evidence_added,
            links_added=SourceRun.links_added + links_added,
        )
    )


def finish_run(
    session: Session, source_id: str, run_id: int, report: RunReport, *, now: datetime
) -> None:
    """Record how the run ended (outcome, counts, error in words, HTTP status), and what
    that means for its source's next poll (``note_poll``)."""
    run = session.get(SourceRun, run_id)
    if run is not None:
        run.finished_at = now
        run.outcome = report.outcome
        run.http_status = report.http_status
        run.items_seen = report.items_seen
        # The chunks recorded their progress as they committed; this is the same sum.
        run.items_ingested = report.items_ingested
        run.items_left = report.items_left
        run.evidence_added = report.evidence_added
        run.links_added = report.links_added
        run.error = report.error
    note_poll(session, source_id, report, now=now)


def note_poll(session: Session, source_id: str, report: RunReport, *, now: datetime) -> None:
    """Keep a source's polling state after a run: when it was polled; how many polls in a row
    failed (which backs its interval off, ``poll_interval``); when it last succeeded; and the
    validators for the next conditional GET. Nothing when the source is gone."""
    source = session.get(Source, source_id)
    if source is None:
        return
    source.last_run_at = now
    if report.outcome == "failed":
        source.consecutive_failures += 1
        return
    source.consecutive_failures = 0
    source.last_success_at = now
    # A partial run must fetch the whole feed again next time, not be told "not modified".
    partial = report.outcome == "partial"
    source.etag = None if partial else report.etag
    source.last_modified = None if partial else report.last_modified


def poll_interval(every_minutes: int, consecutive_failures: int) -> timedelta:
    """How often a source is polled: slower while it keeps failing."""
    doublings = min(max(consecutive_failures, 0), MAX_BACKOFF_DOUBLINGS)
    return timedelta(minutes=every_minutes * 2**doublings)


def polling_schedule(session: Session) -> list[PollSchedule]:
    """When each enabled source is to be polled (the scheduler keeps a job per source)."""
    rows = session.execute(
        select(
            Source.id, Source.every_minutes, Source.consecutive_failures, Source.last_run_at
        ).where(Source.enabled.is_(True))
    ).all()
    schedules = []
    for row in rows:
        interval = poll_interval(row.every_minutes, row.consecutive_failures)
        due_at = None if row.last_run_at is None else row.last_run_at + interval
        schedules.append(PollSchedule(source_id=row.id, interval=interval, due_at=due_at))
    return schedules


def run_out(run: SourceRun) -> RunOut:
    return RunOut(
        id=run.id,
        source_id=run.source_id,
        started_at=run.started_at,
        finished_at=run.finished_at,
        outcome=run.outcome,  # type: ignore[arg-type]
        http_status=run.http_status,
        items_seen=run.items_seen,
        evidence_added=run.evidence_added,
        links_added=run.links_added,
        error=run.error,
        items_ingested=run.items_ingested,
        items_left=run.items_left,
    )


def list_runs(
    session: Session, source_id: str, *, limit: int, cursor: str | None
) -> tuple[list[RunOut], str | None]:
    """A source's runs, newest first."""
    get_source(session, source_id)
    after = decode_cursor(cursor, 1)
    query = select(SourceRun).where(SourceRun.source_id == source_id)
    if after is not None:
        query = query.where(SourceRun.id < cursor_id(after[0]))
    rows = session.scalars(query.order_by(SourceRun.id.desc()).limit(limit + 1)).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [run_out(row) for row in rows[:limit]], next_cursor


def load_sources_file(
    session: Session, path: Path, *, now: datetime, substitutions: dict[str, str] | None = None
) -> list[str]:
    """Create the sources listed in a YAML file that do not exist yet; return their ids.

    Sources already present are left as they are: an admin may have edited them.
    ``{name}`` in the file is replaced by ``substitutions[name]``.
    """
    text = path.read_text(encoding="utf-8")
    for name, value in (substitutions or {}).items():
        text = text.replace("{" + name + "}", value)
    document = yaml.safe_load(text) or {}
    created = []
    for index, entry in enumerate(document.get("sources") or []):
        try:
            data = SourceCreate.model_validate(entry)
        except ValidationError as error:
            problems = field_errors(error.errors(include_url=False), whole="(source)")
            first = problems[0]
            raise InvalidInput(
                f"{path.name}: sources[{index}].{first['field']}", first["message"]
            ) from None
        if session.get(Source, data.id) is not None:
            continue
        missing = set(data.pledges) - set(
            session.scalars(select(Pledge.id).where(Pledge.id.in_(data.pledges)))
        )
        if missing:
            # A file may name pledges this database does not have (yet): attach to the rest.
            data = data.model_copy(
                update={"pledges": [p for p in data.pledges if p not in missing]}
            )
            if not data.pledges:
                continue
        create_source(session, data, now=now)
        created.append(data.id)
    return created
