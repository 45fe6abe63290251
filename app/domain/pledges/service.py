"""Pledges: create, edit, read and list. No HTTP here."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from app.domain.ledger.service import record
from app.domain.pledges.models import Pledge, PledgeParty, PledgeTopic
from app.domain.pledges.schemas import PledgeCreate, PledgeOut, PledgeSource, PledgeUpdate
from app.domain.status.revision import claim_revision, publish_revision
from app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from app.pagination import Page, decode_cursor, encode_cursor

FINAL_STATUSES = frozenset({"kept", "broken"})
SEED_ACTOR = "key:seed"


def slugify(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")[:80].strip("-")
    return slug or "pledge"


def is_overdue(
    *,
    status: str,
    last_evidence_at: datetime | None,
    made_on: date,
    review_every_days: int,
    today: date,
) -> bool:
    """True when no accepted evidence arrived within ``review_every_days``: "we have not looked".

    A pledge with a final verdict is never overdue; one with no evidence yet
    counts from the day it was made.
    """
    if status in FINAL_STATUSES:
        return False
    reference = last_evidence_at.date() if last_evidence_at is not None else made_on
    return today > reference + timedelta(days=review_every_days)


def _check_dates(*, made_on: date | None, due_on: date | None, today: date) -> None:
    if made_on is not None and made_on > today:
        raise InvalidInput("made_on", "must not be in the future")
    if made_on is not None and due_on is not None and due_on < made_on:
        raise InvalidInput("due_on", "must not be before made_on")


def _set_lists(pledge: Pledge, made_by: list[str], made_to: list[str], topics: list[str]) -> None:
    for field, values in (("made_by", made_by), ("made_to", made_to), ("topics", topics)):
        if len(set(values)) != len(values):
            raise InvalidInput(field, "must not list the same value twice")
    pledge.parties = [
        PledgeParty(role=role, party=party, position=index)
        for role, parties in (("made_by", made_by), ("made_to", made_to))
        for index, party in enumerate(parties)
    ]
    pledge.topic_rows = [PledgeTopic(topic=topic, position=i) for i, topic in enumerate(topics)]


def _set_source(pledge: Pledge, source: PledgeSource | None) -> None:
    pledge.source_title = source.title if source else None
    pledge.source_url = source.url if source else None
    pledge.source_publisher = source.publisher if source else None
    pledge.source_published_on = source.published_on if source else None
    pledge.source_quote = source.quote if source else None


def _unique_slug(session: Session, base: str) -> str:
    taken = set(
        session.scalars(
            select(Pledge.id).where(or_(Pledge.id == base, Pledge.id.like(f"{base}-%")))
        )
    )
    if base not in taken:
        return base
    suffix = 2
    while f"{base}-{suffix}" in taken:
        suffix += 1
    return f"{base}-{suffix}"


def create_pledge(
    session: Session,
    data: PledgeCreate,
    *,
    actor: str,
    now: datetime,
    unrated_because: str | None = None,
) -> Pledge:
    """Record a pledge; its history starts ``not_yet_rated`` on ``made_on``.

    ``unrated_because`` replaces the first entry's stock reason (the seed explains why
    some pledges cannot be rated yet).
    """
    # Imported here: the status package builds on pledges, not the other way round.
    from app.domain.status.service import start_history

    _check_dates(made_on=data.made_on, due_on=data.due_on, today=now.date())
    version = claim_revision(session)
    if data.id is not None:
        if session.get(Pledge, data.id) is not None:
            raise Conflict(f"a pledge with id {data.id!r} already exists")
        pledge_id = data.id
    else:
        pledge_id = _unique_slug(session, slugify(data.title))
    pledge = Pledge(
        id=pledge_id,
        title=data.title,
        text=data.text,
        kind=data.kind,
        made_on=data.made_on,
        venue=data.venue,
        verification_criteria=data.verification_criteria,
        due_on=data.due_on,
        review_every_days=data.review_every_days,
        status="not_yet_rated",
        status_since=start_of(data.made_on),
        verification="unverified",
        evidence_count=0,
        unreviewed_count=0,
        last_evidence_at=None,
        version=version,
        created_at=now,
        updated_at=now,
        created_by=actor,
    )
    _set_source(pledge, data.source)
    _set_lists(pledge, data.made_by, data.made_to, data.topics)
    session.add(pledge)
    session.flush()
    record(session, "pledge.created", [pledge.id], now=now)
    start_history(session, pledge, actor=actor, now=now, reason=unrated_because)
    publish_revision(session)
    return pledge


def start_of(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=UTC)


def get_pledge(session: Session, pledge_id: str, *, with_lists: bool = True) -> Pledge:
    """The pledge, or NotFound."""
    query = select(Pledge).where(Pledge.id == pledge_id)
    if with_lists:
        query = query.options(selectinload(Pledge.parties), selectinload(Pledge.topic_rows))
    pledge = session.scalars(query).one_or_none()
    if pledge is None:
        raise NotFound(f"no pledge with id {pledge_id!r}")
    return pledge


def check_if_match(pledge: Pledge, if_match: str | None) -> int | None:
    """The version the client expects, or None when it sent no ``If-Match``.

    Raises PreconditionFailed when the client's copy is stale.
    """
    if if_match is None:
        return None
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" in tags:
        return None
    # Compared as text: int() of a client's digits fails past 4,300 of them (a 500, not
    # the 412 a tag that names no version deserves).
    current = str(pledge.version)
    for tag in tags:
        if tag.removeprefix("W/").strip('"') == current:
            return pledge.version
    raise PreconditionFailed(
        f'the pledge has changed: its current ETag is "{pledge.version}"',
        headers={"ETag": f'"{pledge.version}"'},
    )


def bump_version(session: Session, pledge: Pledge, expected: int | None) -> int:
    """Give ``pledge`` the claimed revision, atomically checking ``expected`` against the row."""
    version = claim_revision(session)
    conditions = [Pledge.id == pledge.id]
    if expected is not None:
        conditions.append(Pledge.version == expected)
    result = session.execute(
        update(Pledge)
        .where(*conditions)
        .values(version=version)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise PreconditionFailed("the pledge was changed by another request; fetch it and retry")
    pledge.version = version
    return version


def update_pledge(
    session: Session,
    pledge_id: str,
    data: PledgeUpdate,
    *,
    if_match: str | None,
    now: datetime,
) -> Pledge:
    """Edit descriptive fields, honouring ``If-Match``."""
    claim_revision(session)
    pledge = get_pledge(session, pledge_id)
    expected = check_if_match(pledge, if_match)
    changes = data.model_dump(exclude_unset=True)
    for field in ("title", "text", "kind", "verification_criteria", "made_by", "review_every_days"):
        if field in changes and changes[field] is None:
            raise InvalidInput(field, "may be changed but not removed")
    due_on = changes.get("due_on", pledge.due_on)
    if due_on is not None and due_on < pledge.made_on:
        raise InvalidInput("due_on", "must not be before made_on")
    for field in (
        "title",
        "text",
        "kind",
        "venue",
        "verification_criteria",
        "due_on",
        "review_every_days",
    ):
        if field in changes:
            setattr(pledge, field, changes[field])
    if "source" in changes:
        _set_source(pledge, data.source)
    if {"made_by", "made_to", "topics"} & changes.keys():
        # A list left out keeps its values; a list sent as null is emptied.
        _set_lists(
            pledge,
            changes.get("made_by") or parties_of(pledge, "made_by"),
            (changes["made_to"] or []) if "made_to" in changes else parties_of(pledge, "made_to"),
            (changes["topics"] or []) if "topics" in changes else topics_of(pledge),
        )
    pledge.updated_at = now
    session.flush()
    bump_version(session, pledge, expected)
    record(session, "pledge.edited", [pledge.id], now=now)
    publish_revision(session)
    return pledge


def parties_of(pledge: Pledge, role: str) -> list[str]:
    return [row.party for row in pledge.parties if row.role == role]


def topics_of(pledge: Pledge) -> list[str]:
    return [row.topic for row in pledge.topic_rows]


def to_out(pledge: Pledge, *, today: date) -> PledgeOut:
    source = (
        PledgeSource(
            title=pledge.source_title,
            url=pledge.source_url,
            publisher=pledge.source_publisher,
            published_on=pledge.source_published_on,
            quote=pledge.source_quote,
        )
        if pledge.source_title is not None
        else None
    )
    return PledgeOut(
        id=pledge.id,
        title=pledge.title,
        text=pledge.text,
        kind=pledge.kind,  # type: ignore[arg-type]
        made_by=parties_of(pledge, "made_by"),
        made_to=parties_of(pledge, "made_to"),
        made_on=pledge.made_on,
        venue=pledge.venue,
        topics=topics_of(pledge),
        source=source,
        verification_criteria=pledge.verification_criteria,
        due_on=pledge.due_on,
        review_every_days=pledge.review_every_days,
        status=pledge.status,  # type: ignore[arg-type]
        status_since=pledge.status_since,
        verification=pledge.verification,  # type: ignore[arg-type]
        evidence_count=pledge.evidence_count,
        unreviewed_evidence_count=pledge.unreviewed_count,
        last_evidence_at=pledge.last_evidence_at,
        overdue=is_overdue(
            status=pledge.status,
            last_evidence_at=pledge.last_evidence_at,
            made_on=pledge.made_on,
            review_every_days=pledge.review_every_days,
            today=today,
        ),
        version=pledge.version,
        created_at=pledge.created_at,
        updated_at=pledge.updated_at,
    )


def filter_pledges(
    query: Select[Any],
    *,
    status: str | None = None,
    kind: str | None = None,
    topic: str | None = None,
    party: str | None = None,
    q: str | None = None,
) -> Select[Any]:
    """Apply the list filters that ``/pledges`` and ``/status`` share."""
    if status is not None:
        query = query.where(Pledge.status == status)
    if kind is not None:
        query = query.where(Pledge.kind == kind)
    if topic is not None:
        query = query.where(
            exists().where(and_(PledgeTopic.pledge_id == Pledge.id, PledgeTopic.topic == topic))
        )
    if party is not None:
        query = query.where(
            exists().where(and_(PledgeParty.pledge_id == Pledge.id, PledgeParty.party == party))
        )
    if q is not None and q.strip():
        pattern = "%" + _escape_like(q.strip().lower()) + "%"
        query = query.where(
            or_(
                func.lower(Pledge.title).like(pattern, escape="\\"),
                func.lower(Pledge.text).like(pattern, escape="\\"),
                func.lower(Pledge.id).like(pattern, escape="\\"),
            )
        )
    return query


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_pledges(
    session: Session,
    *,
    limit: int,
    cursor: str | None,
    status: str | None = None,
    kind: str | None = None,
    topic: str | None = None,
    party: str | None = None,
    q: str | None = None,
) -> tuple[Sequence[Pledge], str | None]:
    """One page of pledges in id order, and the cursor of the next page."""
    after = decode_cursor(cursor, 1)
    query = filter_pledges(select(Pledge), status=status, kind=kind, topic=topic, party=party, q=q)
    if after is not None:
        query = query.where(Pledge.id > str(after[0]))
    query = (
        query.options(selectinload(Pledge.parties), selectinload(Pledge.topic_rows))
        .order_by(Pledge.id)
        .limit(limit + 1)
    )
    rows: Sequence[Pledge] = session.scalars(query).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def pledge_page(rows: Sequence[Pledge], next_cursor: str | None, *, today: date) -> Page[PledgeOut]:
    return Page[PledgeOut](items=[to_out(p, today=today) for p in rows], next_cursor=next_cursor)
