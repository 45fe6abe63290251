"""Evidence: ingest (one, multi-link, batch), read, review. No HTTP here.

Ingest is set-based: whatever the batch size, it costs a fixed number of
statements, each carrying many rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from app.domain.evidence.identity import content_hash, url_key
from app.domain.evidence.models import Evidence, EvidenceLink, GradeDates, SourceTally
from app.domain.evidence.schemas import (
    BatchProblem,
    BatchResult,
    EvidenceCreate,
    EvidenceFields,
    EvidenceOut,
    LinkIn,
    LinkOut,
    PledgeEvidenceOut,
    QueueItem,
)
from app.domain.evidence.timeline import add_to_months, rebuild_months, rebuild_tallies
from app.domain.evidence.verification import (
    AGREEING_KEYS,
    GRADED_STANCES,
    LevelDates,
    SourceCount,
    grade,
    level_dates,
)
from app.domain.keys.service import Principal
from app.domain.ledger.service import record
from app.domain.pledges.models import Pledge
from app.domain.status.revision import claim_revision, publish_revision
from app.errors import InvalidInput, NotFound, field_errors
from app.pagination import cursor_id, cursor_time, decode_cursor, encode_cursor
from app.sql import insert_or_ignore, upsert


@dataclass(slots=True)
class Draft:
    """One validated item to ingest, with its identity computed."""

    fields: EvidenceFields
    links: list[LinkIn]
    url_key: str | None
    content_hash: str
    # Dataset observations only (collected from csv sources): the value and its verdict.
    observed_value: float | None = None
    target_met: bool | None = None


@dataclass(slots=True)
class IngestOutcome:
    evidence_id: int
    created: bool
    links: list[EvidenceLink] = field(default_factory=list)
    new_links: int = 0


def make_draft(
    fields: EvidenceFields, links: list[LinkIn], *, now: datetime, tolerance: timedelta
) -> Draft:
    """Check what the schema cannot (dates against our clock, duplicate links) and fix identity."""
    if fields.published_at > now + tolerance:
        raise InvalidInput("published_at", "must not be in the future")
    if fields.fetched_at is not None and fields.fetched_at > now + tolerance:
        raise InvalidInput("fetched_at", "must not be in the future")
    seen: set[str] = set()
    for index, link in enumerate(links):
        if link.pledge_id in seen:
            raise InvalidInput(f"links[{index}].pledge_id", "links the same pledge twice")
        seen.add(link.pledge_id)
    return Draft(
        fields=fields,
        links=links,
        url_key=url_key(fields.url),
        content_hash=fields.content_hash
        or content_hash(fields.title, fields.summary, fields.published_at),
    )


def _missing_pledges(session: Session, drafts: Sequence[Draft]) -> set[str]:
    wanted = {link.pledge_id for draft in drafts for link in draft.links}
    if not wanted:
        return set()
    found = set(session.scalars(select(Pledge.id).where(Pledge.id.in_(wanted))))
    return wanted - found


def ingest(
    session: Session, drafts: Sequence[Draft], *, actor: str, accepted: bool, now: datetime
) -> list[IngestOutcome]:
    """Store each draft once and link it to its pledges; results in the order given.

    An item whose URL or content hash is already known is not stored again: the
    existing item is linked. Links start accepted when ``accepted`` (analysts'
    and admins' keys, trusted sources), else they wait for review. Pledges'
    derived state is updated in the same transaction.
    """
    claim_revision(session)
    if not drafts:
        return []

    # Items repeated inside one batch collapse onto their first occurrence.
    canonical: list[int] = []
    first_by_key: dict[str, int] = {}
    for index, draft in enumerate(drafts):
        keys = [f"h:{draft.content_hash}"] + ([f"u:{draft.url_key}"] if draft.url_key else [])
        owner = next((first_by_key[k] for k in keys if k in first_by_key), index)
        for key in keys:
            first_by_key.setdefault(key, owner)
        canonical.append(owner)

    unique = sorted(set(canonical))
    rows = [
        {
            "title": drafts[i].fields.title,
            "url": drafts[i].fields.url,
            "url_key": drafts[i].url_key,
            "summary": drafts[i].fields.summary,
            "published_at": drafts[i].fields.published_at,
            "source_name": drafts[i].fields.source_name,
            "source_type": drafts[i].fields.source_type,
            "reliability": drafts[i].fields.reliability,
            "content_hash": drafts[i].content_hash,
            "collected_by": actor,
            "recorded_at": now,
            "fetched_at": drafts[i].fields.fetched_at,
            "observed_value": drafts[i].observed_value,
            "target_met": drafts[i].target_met,
        }
        for i in unique
    ]
    inserted: dict[str, int] = {}
    # Tables, not entities, in these inserts: plain executemany, without the ORM's bulk
    # bookkeeping (a third of a batch's time when it was there).
    evidence_table: Table = Evidence.__table__  # type: ignore[assignment]
    statement = insert_or_ignore(session, evidence_table).returning(
        evidence_table.c.id, evidence_table.c.content_hash
    )
    for start in range(0, len(rows), 500):
        for row in session.execute(statement, rows[start : start + 500]):
            inserted[row.content_hash] = row.id

    # What was not inserted already existed: find it by URL first, then by hash.
    leftovers = [i for i in unique if drafts[i].content_hash not in inserted]
    by_url: dict[str, tuple[int, datetime]] = {}
    by_hash: dict[str, tuple[int, datetime]] = {}
    if leftovers:
        url_keys = [k for i in leftovers if (k := drafts[i].url_key) is not None]
        hashes = [drafts[i].content_hash for i in leftovers]
        for chunk_start in range(0, len(leftovers), 400):
            chunk_urls = url_keys[chunk_start : chunk_start + 400]
            chunk_hashes = hashes[chunk_start : chunk_start + 400]
            condition: ColumnElement[bool] = Evidence.content_hash.in_(chunk_hashes)
            if chunk_urls:
                condition = or_(condition, Evidence.url_key.in_(chunk_urls))
            for found in session.execute(
                select(
                    Evidence.id, Evidence.url_key, Evidence.content_hash, Evidence.published_at
                ).where(condition)
            ):
                if found.url_key:
                    by_url[found.url_key] = (found.id, found.published_at)
                by_hash[found.content_hash] = (found.id, found.published_at)

    identity: dict[int, tuple[int, datetime, bool]] = {}
    for i in unique:
        draft = drafts[i]
        if draft.content_hash in inserted:
            identity[i] = (inserted[draft.content_hash], draft.fields.published_at, True)
            continue
        match = (by_url.get(draft.url_key) if draft.url_key else None) or by_hash.get(
            draft.content_hash
        )
        if match is None:  # pragma: no cover - the unique constraints make this impossible
            raise RuntimeError("an evidence item was neither inserted nor found")
        identity[i] = (match[0], match[1], False)

    review = "accepted" if accepted else "unreviewed"
    wanted_links: dict[tuple[int, str], dict[str, Any]] = {}
    for index, draft in enumerate(drafts):
        evidence_id, published_at, _ = identity[canonical[index]]
        for link in draft.links:
            wanted_links.setdefault(
                (evidence_id, link.pledge_id),
                {
                    "evidence_id": evidence_id,
                    "pledge_id": link.pledge_id,
                    "stance": link.stance,
                    "review": review,
                    "linked_by": actor,
                    "created_at": now,
                    "published_at": published_at,
                },
            )
    new_links: list[tuple[int, str]] = []
    new_link_ids: list[int] = []
    link_rows = list(wanted_links.values())
    link_table: Table = EvidenceLink.__table__  # type: ignore[assignment]
    link_statement = insert_or_ignore(session, link_table).returning(
        link_table.c.id, link_table.c.evidence_id, link_table.c.pledge_id
    )
    for start in range(0, len(link_rows), 500):
        for row in session.execute(link_statement, link_rows[start : start + 500]):
            new_links.append((row.evidence_id, row.pledge_id))
            new_link_ids.append(row.id)

    if inserted or new_links:
        _apply_new_links(session, [wanted_links[key] for key in new_links])
        record(session, "evidence.added", sorted(inserted.values()), now=now)
        record(session, "link.made", sorted(new_link_ids), now=now)
        publish_revision(session)

    new_per_evidence: dict[int, int] = defaultdict(int)
    for evidence_id, _pledge_id in new_links:
        new_per_evidence[evidence_id] += 1
    links_by_evidence = _links_of(session, {identity[i][0] for i in unique})
    return [
        IngestOutcome(
            evidence_id=identity[canonical[index]][0],
            created=identity[canonical[index]][2] and canonical[index] == index,
            links=[
                link
                for link in links_by_evidence.get(identity[canonical[index]][0], [])
                if link.pledge_id in {wanted.pledge_id for wanted in draft.links}
            ],
            # Counted once, on the first occurrence of an item in the batch.
            new_links=new_per_evidence.get(identity[index][0], 0)
            if canonical[index] == index
            else 0,
        )
        for index, draft in enumerate(drafts)
    ]


def _links_of(session: Session, evidence_ids: set[int]) -> dict[int, list[EvidenceLink]]:
    result: dict[int, list[EvidenceLink]] = defaultdict(list)
    ids = sorted(evidence_ids)
    for start in range(0, len(ids), 500):
        for link in session.scalars(
            select(EvidenceLink)
            .where(EvidenceLink.evidence_id.in_(ids[start : start + 500]))
            .order_by(EvidenceLink.evidence_id, EvidenceLink.id)
        ):
            result[link.evidence_id].append(link)
    return result


def _apply_new_links(session: Session, links: list[dict[str, Any]]) -> None:
    """Fold freshly made links into tallies and pledges' counters, set-based."""
    if not links:
        return
    evidence_ids = sorted({link["evidence_id"] for link in links})
    sources: dict[int, tuple[str, str, str, bool]] = {}
    for start in range(0, len(evidence_ids), 500):
        for row in session.execute(
            select(
                Evidence.id,
                Evidence.source_type,
                Evidence.reliability,
                Evidence.source_name,
                Evidence.target_met,
            ).where(Evidence.id.in_(evidence_ids[start : start + 500]))
        ):
            sources[row.id] = (
                row.source_type,
                row.reliability,
                row.source_name,
                bool(row.target_met),
            )

    accepted: dict[str, int] = defaultdict(int)
    unreviewed: dict[str, int] = defaultdict(int)
    latest: dict[str, datetime] = {}
    tallies: dict[TallyKey, TallyDelta] = {}
    for link in links:
        pledge_id = link["pledge_id"]
        published_at: datetime = link["published_at"]
        if link["review"] == "accepted":
            accepted[pledge_id] += 1
            if pledge_id not in latest or latest[pledge_id] < published_at:
                latest[pledge_id] = published_at
            source_type, reliability, source_name, met = sources[link["evidence_id"]]
            key = (pledge_id, link["stance"], source_type, reliability, source_name)
            tallies[key] = tallies.get(key, TallyDelta()).plus(published_at, met=met)
        else:
            unreviewed[pledge_id] += 1

    regrade = _add_to_tallies(session, tallies) if tallies else set()
    add_to_months(
        session,
        (
            (link["pledge_id"], link["published_at"])
            for link in links
            if link["review"] == "accepted"
        ),
    )

    table: Table = Pledge.__table__  # type: ignore[assignment]
    params: list[dict[str, Any]] = [
        {
            "pid": pledge_id,
            "accepted": accepted.get(pledge_id, 0),
            "unreviewed": unreviewed.get(pledge_id, 0),
            "latest": latest.get(pledge_id),
        }
        for pledge_id in sorted(set(accepted) | set(unreviewed))
    ]
    session.execute(
        update(table)
        .where(table.c.id == bindparam("pid"))
        .values(
            evidence_count=table.c.evidence_count + bindparam("accepted"),
            unreviewed_count=table.c.unreviewed_count + bindparam("unreviewed"),
            last_evidence_at=case(
                (
                    bindparam("latest", type_=Pledge.last_evidence_at.type).is_(None),
                    table.c.last_evidence_at,
                ),
                (
                    table.c.last_evidence_at.is_(None),
                    bindparam("latest", type_=Pledge.last_evidence_at.type),
                ),
                (
                    table.c.last_evidence_at
                    < bindparam("latest", type_=Pledge.last_evidence_at.type),
                    bindparam("latest", type_=Pledge.last_evidence_at.type),
                ),
                else_=table.c.last_evidence_at,
            ),
        ),
        params,
    )
    touched: list[str] = [p["pid"] for p in params]
    refresh_verification(session, sorted(regrade))
    _stamp_versions(session, touched)


TallyKey = tuple[str, str, str, str, str]
"""pledge_id, stance, source_type, reliability, source_name"""


@dataclass(frozen=True, slots=True)
class TallyDelta:
    """New accepted links of one tally: how many, how many meet a target, the earliest of each."""

    links: int = 0
    targets_met: int = 0
    first_at: datetime | None = None
    first_met_at: datetime | None = None

    def plus(self, published_at: datetime, *, met: bool) -> TallyDelta:
        return TallyDelta(
            links=self.links + 1,
            targets_met=self.targets_met + int(met),
            first_at=_earlier(self.first_at, published_at),
            first_met_at=_earlier(self.first_met_at, published_at) if met else self.first_met_at,
        )


def _earlier(known: datetime | None, candidate: datetime) -> datetime:
    return candidate if known is None or candidate < known else known


def _add_to_tallies(session: Session, tallies: dict[TallyKey, TallyDelta]) -> set[str]:
    """Add new accepted links to their tallies; return the pledges whose grade may have moved.

    A grade, and the dates it was reached, depend on which tallies have links,
    which meet a target, and the earliest link of each. Only a tally that the new
    links start, or whose earliest date they move back, can change them: those
    are the ones whose earliest date comes back as the new links' own.
    """
    table: Table = SourceTally.__table__  # type: ignore[assignment]
    statement = upsert(session, table)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["pledge_id", "stance", "source_type", "reliability", "source_name"],
        set_={
            "links": table.c.links + excluded.links,
            "targets_met": table.c.targets_met + excluded.targets_met,
            "first_at": _earliest_of(table.c.first_at, excluded.first_at),
            "first_met_at": _earliest_of(table.c.first_met_at, excluded.first_met_at),
        },
    ).returning(*(table.c[name] for name in _TALLY_KEY), table.c.first_at, table.c.first_met_at)
    rows = [
        {
            **dict(zip(_TALLY_KEY, key, strict=True)),
            "links": delta.links,
            "targets_met": delta.targets_met,
            "first_at": delta.first_at,
            "first_met_at": delta.first_met_at,
        }
        for key, delta in sorted(tallies.items())
    ]
    moved: set[str] = set()
    for start in range(0, len(rows), 500):
        for row in session.execute(statement, rows[start : start + 500]):
            delta = tallies[tuple(row[:5])]
            if row.stance not in GRADED_STANCES:
                continue
            if row.first_at == delta.first_at or (
                delta.first_met_at is not None and row.first_met_at == delta.first_met_at
            ):
                moved.add(row.pledge_id)
    return moved


_TALLY_KEY = ("pledge_id", "stance", "source_type", "reliability", "source_name")


def _earliest_of(kept: Any, new: Any) -> Any:
    """SQL for the earlier of two nullable instants (SQLite's min() is NULL if either is)."""
    return case(
        (new.is_(None), kept),
        (kept.is_(None), new),
        (new < kept, new),
        else_=kept,
    )


def _stamp_versions(session: Session, pledge_ids: Sequence[str]) -> None:
    version = claim_revision(session)
    for start in range(0, len(pledge_ids), 500):
        session.execute(
            update(Pledge)
            .where(Pledge.id.in_(pledge_ids[start : start + 500]))
            .values(version=version)
            .execution_options(synchronize_session=False)
        )


def tallied_sources(session: Session, pledge_ids: Sequence[str]) -> dict[str, list[SourceCount]]:
    """The accepted sources that can grade each of ``pledge_ids`` (at most a few hundred ids)."""
    sources: dict[str, list[SourceCount]] = defaultdict(list)
    # Columns, not ORM objects: a batch regrades hundreds of pledges of ~100 tallies each.
    for row in session.execute(
        select(
            SourceTally.pledge_id,
            SourceTally.stance,
            SourceTally.source_type,
            SourceTally.reliability,
            SourceTally.source_name,
            SourceTally.links,
            SourceTally.targets_met,
            SourceTally.first_at,
            SourceTally.first_met_at,
        ).where(
            SourceTally.pledge_id.in_(pledge_ids),
            SourceTally.links > 0,
            SourceTally.stance.in_(GRADED_STANCES),
        )
    ).all():
        sources[row[0]].append(SourceCount(*row[1:]))
    return sources


def refresh_verification(session: Session, pledge_ids: Sequence[str]) -> None:
    """Regrade the verification of ``pledge_ids`` from their tallies; write only what changed."""
    ids = sorted(set(pledge_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        current = {
            row.id: (row.status, row.verification)
            for row in session.execute(
                select(Pledge.id, Pledge.status, Pledge.verification).where(Pledge.id.in_(chunk))
            )
        }
        sources = tallied_sources(session, chunk)
        changes = [
            {"pid": pledge_id, "level": level}
            for pledge_id, (status, verification) in current.items()
            if (level := grade(status, sources.get(pledge_id, []))) != verification
        ]
        if changes:
            table: Table = Pledge.__table__  # type: ignore[assignment]
            session.execute(
                update(table)
                .where(table.c.id == bindparam("pid"))
                .values(verification=bindparam("level")),
                changes,
            )
        _write_grade_dates(session, list(current), sources)


def _write_grade_dates(
    session: Session, pledge_ids: list[str], sources: dict[str, list[SourceCount]]
) -> None:
    """Bring the ``GradeDates`` rows of ``pledge_ids`` in line with their tallies."""
    kept = {
        (row.pledge_id, row.agreeing): LevelDates(
            row.claimed_at, row.corroborated_at, row.verified_at
        )
        for row in session.execute(
            select(
                GradeDates.pledge_id,
                GradeDates.agreeing,
                GradeDates.claimed_at,
                GradeDates.corroborated_at,
                GradeDates.verified_at,
            ).where(GradeDates.pledge_id.in_(pledge_ids))
        )
    }
    changed = []
    for pledge_id in pledge_ids:
        for agreeing, stances in AGREEING_KEYS.items():
            dates = level_dates(stances, sources.get(pledge_id, []))
            if kept.get((pledge_id, agreeing), LevelDates()) != dates:
                changed.append(
                    {
                        "pledge_id": pledge_id,
                        "agreeing": agreeing,
                        "claimed_at": dates.claimed_at,
                        "corroborated_at": dates.corroborated_at,
                        "verified_at": dates.verified_at,
                    }
                )
    if changed:
        table: Table = GradeDates.__table__  # type: ignore[assignment]
        statement = upsert(session, table)
        statement = statement.on_conflict_do_update(
            index_elements=["pledge_id", "agreeing"],
            set_={
                name: statement.excluded[name]
                for name in ("claimed_at", "corroborated_at", "verified_at")
            },
        )
        session.execute(statement, changed)


def rebuild_summaries(session: Session, pledge_ids: Sequence[str] | None) -> None:
    """Recompute the tallies, monthly totals and grades of ``pledge_ids`` from their links.

    ``None`` means every pledge (a migration, an import, generated data).
    """
    rebuild_tallies(session, pledge_ids)
    rebuild_months(session, pledge_ids)
    if pledge_ids is None:
        pledge_ids = list(session.scalars(select(Pledge.id).order_by(Pledge.id)))
    refresh_verification(session, pledge_ids)


def link_out(link: EvidenceLink) -> LinkOut:
    return LinkOut(
        pledge_id=link.pledge_id,
        stance=link.stance,  # type: ignore[arg-type]
        review=link.review,  # type: ignore[arg-type]
        review_note=link.review_note,
        reviewed_by=link.reviewed_by,
        reviewed_at=link.reviewed_at,
        linked_by=link.linked_by,
        created_at=link.created_at,
    )


def get_evidence(session: Session, evidence_id: int) -> EvidenceOut:
    """One item with every link it has."""
    evidence = session.get(Evidence, evidence_id)
    if evidence is None:
        raise NotFound(f"no evidence with id {evidence_id}")
    links = _links_of(session, {evidence_id}).get(evidence_id, [])
    return evidence_out(evidence, links)


def evidence_out(evidence: Evidence, links: Sequence[EvidenceLink]) -> EvidenceOut:
    return EvidenceOut(
        id=evidence.id,
        title=evidence.title,
        url=evidence.url,
        summary=evidence.summary,
        published_at=evidence.published_at,
        source_name=evidence.source_name,
        source_type=evidence.source_type,  # type: ignore[arg-type]
        reliability=evidence.reliability,  # type: ignore[arg-type]
        content_hash=evidence.content_hash,
        collected_by=evidence.collected_by,
        recorded_at=evidence.recorded_at,
        fetched_at=evidence.fetched_at,
        links=[link_out(link) for link in links],
    )


def add_evidence(
    session: Session,
    data: EvidenceCreate,
    *,
    principal: Principal,
    now: datetime,
    tolerance: timedelta,
) -> tuple[EvidenceOut, bool]:
    """Add one item linked to one or more pledges; True when the item is new."""
    draft = make_draft(data, data.links, now=now, tolerance=tolerance)
    claim_revision(session)
    missing = _missing_pledges(session, [draft])
    if missing:
        index = next(i for i, link in enumerate(draft.links) if link.pledge_id in missing)
        raise InvalidInput(
            f"links[{index}].pledge_id", f"no pledge with id {draft.links[index].pledge_id!r}"
        )
    outcome = ingest(
        session, [draft], actor=principal.actor, accepted=principal.has_role("analyst"), now=now
    )[0]
    return get_evidence(session, outcome.evidence_id), outcome.created


def ingest_batch(
    session: Session,
    items: Sequence[Any],
    *,
    principal: Principal,
    now: datetime,
    tolerance: timedelta,
) -> list[BatchResult]:
    """Validate each item on its own, then ingest all valid ones in this one transaction."""
    claim_revision(session)
    results: list[BatchResult | None] = [None] * len(items)
    drafts: list[Draft] = []
    positions: list[int] = []
    for index, raw in enumerate(items):
        try:
            data = EvidenceCreate.model_validate(raw)
            drafts.append(make_draft(data, data.links, now=now, tolerance=tolerance))
            positions.append(index)
        except ValidationError as error:
            results[index] = _item_problem(
                index,
                field_errors(error.errors(include_url=False, include_input=False), whole="(item)"),
            )
        except InvalidInput as error:
            results[index] = _item_problem(index, error.errors or [])

    missing = _missing_pledges(session, drafts)
    if missing:
        kept_drafts, kept_positions = [], []
        for draft, index in zip(drafts, positions, strict=True):
            bad = [i for i, link in enumerate(draft.links) if link.pledge_id in missing]
            if bad:
                results[index] = _item_problem(
                    index,
                    [
                        {
                            "field": f"links[{i}].pledge_id",
                            "message": f"no pledge with id {draft.links[i].pledge_id!r}",
                        }
                        for i in bad
                    ],
                )
            else:
                kept_drafts.append(draft)
                kept_positions.append(index)
        drafts, positions = kept_drafts, kept_positions

    outcomes = ingest(
        session, drafts, actor=principal.actor, accepted=principal.has_role("analyst"), now=now
    )
    for index, outcome in zip(positions, outcomes, strict=True):
        results[index] = BatchResult(
            index=index,
            status=201 if outcome.created else 200,
            id=outcome.evidence_id,
            links=[link_out(link) for link in outcome.links],
        )
    return [result for result in results if result is not None]


def _item_problem(index: int, errors: list[dict[str, Any]]) -> BatchResult:
    fields = ", ".join(e["field"] for e in errors)
    return BatchResult(
        index=index,
        status=422,
        problem=BatchProblem(
            title="Invalid input",
            detail=f"item {index} is invalid: {fields}" if fields else f"item {index} is invalid",
            errors=errors,
        ),
    )


def pledge_evidence(
    session: Session, pledge_id: str, *, limit: int, cursor: str | None
) -> tuple[list[PledgeEvidenceOut], str | None]:
    """A pledge's linked evidence, newest ``published_at`` first."""
    if session.get(Pledge, pledge_id) is None:
        raise NotFound(f"no pledge with id {pledge_id!r}")
    after = decode_cursor(cursor, 2)
    query = (
        select(EvidenceLink, Evidence)
        .join(Evidence, Evidence.id == EvidenceLink.evidence_id)
        .where(EvidenceLink.pledge_id == pledge_id)
    )
    if after is not None:
        published, evidence_id = cursor_time(after[0]), cursor_id(after[1])
        query = query.where(
            or_(
                EvidenceLink.published_at < published,
                and_(
                    EvidenceLink.published_at == published,
                    EvidenceLink.evidence_id < evidence_id,
                ),
            )
        )
    rows = session.execute(
        query.order_by(EvidenceLink.published_at.desc(), EvidenceLink.evidence_id.desc()).limit(
            limit + 1
        )
    ).all()
    items = [
        PledgeEvidenceOut(
            id=evidence.id,
            title=evidence.title,
            url=evidence.url,
            summary=evidence.summary,
            published_at=evidence.published_at,
            source_name=evidence.source_name,
            source_type=evidence.source_type,  # type: ignore[arg-type]
            reliability=evidence.reliability,  # type: ignore[arg-type]
            stance=link.stance,  # type: ignore[arg-type]
            review=link.review,  # type: ignore[arg-type]
            recorded_at=evidence.recorded_at,
        )
        for link, evidence in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last_link = rows[limit - 1][0]
        next_cursor = encode_cursor(last_link.published_at.isoformat(), last_link.evidence_id)
    return items, next_cursor


def review_link(
    session: Session,
    evidence_id: int,
    *,
    pledge_id: str,
    review: str,
    note: str | None,
    principal: Principal,
    now: datetime,
) -> LinkOut:
    """Accept or reject how one item bears on one pledge, and regrade the pledge."""
    claim_revision(session)
    if session.get(Evidence, evidence_id) is None:
        raise NotFound(f"no evidence with id {evidence_id}")
    link = session.scalars(
        select(EvidenceLink).where(
            EvidenceLink.evidence_id == evidence_id, EvidenceLink.pledge_id == pledge_id
        )
    ).one_or_none()
    if link is None:
        raise InvalidInput("pledge_id", f"evidence {evidence_id} is not linked to {pledge_id!r}")
    if link.review == review and link.review_note == note:
        return link_out(link)

    previous = link.review
    link.review = review
    link.review_note = note
    link.reviewed_by = principal.actor
    link.reviewed_at = now
    session.flush()
    if previous != review:
        # One pledge's links: recomputing its summaries is cheaper to get right than
        # undoing one link's part in earliest dates and running totals.
        _recount(session, pledge_id)
        rebuild_summaries(session, [pledge_id])
    _stamp_versions(session, [pledge_id])
    record(session, "link.reviewed", [link.id], now=now)
    publish_revision(session)
    return link_out(link)


@dataclass(frozen=True, slots=True)
class LinkCounts:
    """What a pledge's links add up to: the counters its row keeps current."""

    accepted: int = 0
    unreviewed: int = 0
    # The latest publication among the accepted links.
    last_accepted_at: datetime | None = None


def link_counts(session: Session, pledge_ids: Sequence[str]) -> dict[str, LinkCounts]:
    """Count the accepted and unreviewed links of ``pledge_ids`` (index ranges, not a scan).

    A pledge with no such link is left out (its counts are ``LinkCounts()``).
    """
    counts: dict[str, LinkCounts] = {}
    ids = sorted(set(pledge_ids))
    for start in range(0, len(ids), 500):
        found: dict[str, dict[str, Any]] = defaultdict(dict)
        for row in session.execute(
            select(
                EvidenceLink.pledge_id,
                EvidenceLink.review,
                func.count(),
                func.max(EvidenceLink.published_at),
            )
            .where(
                EvidenceLink.pledge_id.in_(ids[start : start + 500]),
                EvidenceLink.review.in_(("accepted", "unreviewed")),
            )
            .group_by(EvidenceLink.pledge_id, EvidenceLink.review)
        ):
            found[row[0]][row[1]] = (row[2], row[3])
        for pledge_id, by_review in found.items():
            accepted, last_accepted_at = by_review.get("accepted", (0, None))
            counts[pledge_id] = LinkCounts(
                accepted=accepted,
                unreviewed=by_review.get("unreviewed", (0, None))[0],
                last_accepted_at=last_accepted_at,
            )
    return counts


def _recount(session: Session, pledge_id: str) -> None:
    """Recount one pledge's accepted and unreviewed links into its row."""
    counts = link_counts(session, [pledge_id]).get(pledge_id, LinkCounts())
    session.execute(
        update(Pledge)
        .where(Pledge.id == pledge_id)
        .values(
            evidence_count=counts.accepted,
            last_evidence_at=counts.last_accepted_at,
            unreviewed_count=counts.unreviewed,
        )
        .execution_options(synchronize_session=False)
    )


def review_queue(
    session: Session, *, limit: int, cursor: str | None
) -> tuple[list[QueueItem], str | None]:
    """Unreviewed links, oldest first."""
    after = decode_cursor(cursor, 1)
    query = (
        select(EvidenceLink, Evidence)
        .join(Evidence, Evidence.id == EvidenceLink.evidence_id)
        .where(EvidenceLink.review == "unreviewed")
    )
    if after is not None:
        query = query.where(EvidenceLink.id > cursor_id(after[0]))
    rows = session.execute(query.order_by(EvidenceLink.id).limit(limit + 1)).all()
    items = [
        QueueItem(
            evidence_id=evidence.id,
            pledge_id=link.pledge_id,
            stance=link.stance,  # type: ignore[arg-type]
            linked_by=link.linked_by,
            created_at=link.created_at,
            title=evidence.title,
            url=evidence.url,
            published_at=evidence.published_at,
            source_name=evidence.source_name,
            source_type=evidence.source_type,  # type: ignore[arg-type]
            reliability=evidence.reliability,  # type: ignore[arg-type]
        )
        for link, evidence in rows[:limit]
    ]
    next_cursor = encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None
    return items, next_cursor


def evidence_in_pledge(session: Session, pledge_id: str, evidence_ids: Sequence[int]) -> None:
    """Raise InvalidInput naming the first of ``evidence_ids`` not linked to the pledge."""
    if not evidence_ids:
        return
    linked = set(
        session.scalars(
            select(EvidenceLink.evidence_id).where(
                EvidenceLink.pledge_id == pledge_id, EvidenceLink.evidence_id.in_(evidence_ids)
            )
        )
    )
    for index, evidence_id in enumerate(evidence_ids):
        if evidence_id not in linked:
            raise InvalidInput(
                f"evidence_ids[{index}]", f"evidence {evidence_id} is not linked to {pledge_id!r}"
            )
