"""The run lifecycle a poll goes through, on both databases: begun, chunk by chunk, finished,
and what each ending means for the source's next poll."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.clock import FrozenClock
from app.db import Database
from app.domain.sources.models import Source, SourceRun
from app.domain.sources.schemas import RunOutcome
from app.domain.sources.service import (
    FeedSettings,
    PollSchedule,
    RunReport,
    begin_poll,
    finish_run,
    poll_interval,
    polling_schedule,
    record_progress,
    start_run,
)


def _source(source_id: str, **fields: Any) -> Source:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": source_id,
        "name": f"The {source_id}",
        "kind": "csv",
        "url": f"https://example.org/{source_id}.csv",
        "every_minutes": 10,
        "pledges": ["us-cn-leader-calls-more-often"],
        "match_any": ["calls"],
        "match_all": [],
        "match_none": ["rumour"],
        "stance": "supports",
        "source_type": "dataset",
        "reliability": "high",
        "trusted": True,
        "enabled": True,
        "mapping": {"date": "date", "value": "value"},
        "etag": '"v1"',
        "last_modified": "Tue, 02 Apr 2024 18:00:00 GMT",
        "consecutive_failures": 0,
        "created_at": created,
        "updated_at": created,
        **fields,
    }
    return Source(**values)


def _add(database: Database, *sources: Source) -> None:
    with database.transaction() as session:
        session.add_all(sources)


def _runs(database: Database) -> list[SourceRun]:
    with database.transaction(write=False) as session:
        return list(session.scalars(select(SourceRun).order_by(SourceRun.id)))


def _get(database: Database, source_id: str) -> Source:
    with database.transaction(write=False) as session:
        return session.get_one(Source, source_id)


def test_begin_poll_records_a_running_run_and_copies_what_the_poll_needs(
    database: Database, clock: FrozenClock
) -> None:
    _add(database, _source("series"))

    with database.transaction() as session:
        poll = begin_poll(session, "series", run_id=None, now=clock.now())

    assert poll is not None
    (run,) = _runs(database)
    assert (poll.run_id, run.source_id, run.outcome, run.started_at) == (
        run.id,
        "series",
        "running",
        clock.now(),
    )
    assert (run.finished_at, run.items_ingested, run.items_left) == (None, 0, 0)
    assert poll.source == FeedSettings(
        id="series",
        url="https://example.org/series.csv",
        etag='"v1"',
        last_modified="Tue, 02 Apr 2024 18:00:00 GMT",
        kind="csv",
        mapping={"date": "date", "value": "value"},
        name="The series",
        source_type="dataset",
        reliability="high",
        stance="supports",
        trusted=True,
        pledges=("us-cn-leader-calls-more-often",),
        match_any=("calls",),
        match_all=(),
        match_none=("rumour",),
    )


def test_begin_poll_continues_a_run_already_recorded_even_for_a_disabled_source(
    database: Database, clock: FrozenClock
) -> None:
    _add(database, _source("series", enabled=False))
    with database.transaction() as session:
        recorded = start_run(session, "series", now=clock.now()).id

    with database.transaction() as session:
        asked = begin_poll(session, "series", run_id=recorded, now=clock.now())
        scheduled = begin_poll(session, "series", run_id=None, now=clock.now())

    assert asked is not None
    assert asked.run_id == recorded
    assert scheduled is None, "a disabled source is polled only when asked for"
    assert [run.id for run in _runs(database)] == [recorded]


def test_begin_poll_of_a_source_that_is_gone_is_none(
    database: Database, clock: FrozenClock
) -> None:
    with database.transaction() as session:
        assert begin_poll(session, "nowhere", run_id=None, now=clock.now()) is None
        assert begin_poll(session, "nowhere", run_id=7, now=clock.now()) is None
    assert _runs(database) == []


def test_progress_adds_up_chunk_by_chunk_and_finishing_records_the_ending(
    database: Database, clock: FrozenClock
) -> None:
    _add(database, _source("series"))
    with database.transaction() as session:
        run_id = start_run(session, "series", now=clock.now()).id
    for items, added, linked in ((4, 3, 3), (4, 1, 2)):
        with database.transaction() as session:
            record_progress(session, run_id, items=items, evidence_added=added, links_added=linked)

    (running,) = _runs(database)
    assert (running.outcome, running.items_ingested) == ("running", 8)
    assert (running.evidence_added, running.links_added) == (4, 5)

    clock.advance(timedelta(minutes=3))
    report = RunReport(
        outcome="partial",
        http_status=200,
        items_seen=25,
        items_ingested=8,
        items_left=17,
        evidence_added=4,
        links_added=5,
        etag='"v2"',
    )
    with database.transaction() as session:
        finish_run(session, "series", run_id, report, now=clock.now())

    (run,) = _runs(database)
    assert (run.outcome, run.finished_at, run.http_status, run.error) == (
        "partial",
        clock.now(),
        200,
        None,
    )
    assert (run.items_seen, run.items_ingested, run.items_left) == (25, 8, 17)
    assert (run.evidence_added, run.links_added) == (4, 5)


def test_a_failed_run_backs_the_source_off_and_keeps_its_validators(
    database: Database, clock: FrozenClock
) -> None:
    succeeded = clock.now() - timedelta(days=1)
    _add(database, _source("series", consecutive_failures=1, last_success_at=succeeded))
    with database.transaction() as session:
        run_id = start_run(session, "series", now=clock.now()).id
        failed = RunReport(outcome="failed", http_status=503, error="it answered 503")
        finish_run(session, "series", run_id, failed, now=clock.now())

    (run,) = _runs(database)
    assert (run.outcome, run.http_status, run.error) == ("failed", 503, "it answered 503")
    source = _get(database, "series")
    assert (source.consecutive_failures, source.last_run_at) == (2, clock.now())
    assert source.last_success_at == succeeded
    assert (source.etag, source.last_modified) == ('"v1"', "Tue, 02 Apr 2024 18:00:00 GMT")


@pytest.mark.parametrize(
    ("outcome", "validators"),
    [
        ("ok", ('"v2"', "Wed, 03 Apr 2024 09:00:00 GMT")),
        ("not_modified", ('"v2"', "Wed, 03 Apr 2024 09:00:00 GMT")),
        # The next run must fetch the whole feed again, not be told "not modified".
        ("partial", (None, None)),
    ],
)
def test_a_run_that_fetched_resets_the_failures_and_keeps_what_the_next_poll_sends(
    database: Database, clock: FrozenClock, outcome: RunOutcome, validators: tuple[str | None, ...]
) -> None:
    _add(database, _source("series", consecutive_failures=3))
    report = RunReport(
        outcome=outcome,
        http_status=200,
        etag='"v2"',
        last_modified="Wed, 03 Apr 2024 09:00:00 GMT",
    )
    with database.transaction() as session:
        run_id = start_run(session, "series", now=clock.now()).id
        finish_run(session, "series", run_id, report, now=clock.now())

    source = _get(database, "series")
    assert (source.consecutive_failures, source.last_run_at, source.last_success_at) == (
        0,
        clock.now(),
        clock.now(),
    )
    assert (source.etag, source.last_modified) == validators


def test_finishing_the_run_of_a_source_deleted_meanwhile_records_nothing(
    database: Database, clock: FrozenClock
) -> None:
    _add(database, _source("series"))
    with database.transaction() as session:
        run_id = start_run(session, "series", now=clock.now()).id
    with database.transaction() as session:
        session.delete(session.get_one(Source, "series"))

    with database.transaction() as session:
        finish_run(session, "series", run_id, RunReport(outcome="ok"), now=clock.now())

    assert _runs(database) == []


@pytest.mark.parametrize(
    ("every", "failures", "minutes"),
    [(10, 0, 10), (10, 1, 20), (10, 3, 80), (10, 5, 320), (10, 50, 320), (1, -1, 1)],
)
def test_failing_sources_are_polled_less_often(every: int, failures: int, minutes: int) -> None:
    assert poll_interval(every, failures) == timedelta(minutes=minutes)


def test_the_polling_schedule_covers_enabled_sources_backed_off_from_their_last_poll(
    database: Database, clock: FrozenClock
) -> None:
    polled = clock.now() - timedelta(minutes=4)
    _add(
        database,
        _source("fresh"),
        _source("polled", every_minutes=15, last_run_at=polled),
        _source("failing", consecutive_failures=2, last_run_at=polled),
        _source("off", enabled=False, last_run_at=polled),
    )

    with database.transaction(write=False) as session:
        schedule = sorted(polling_schedule(session), key=lambda plan: plan.source_id)

    assert schedule == [
        PollSchedule("failing", timedelta(minutes=40), polled + timedelta(minutes=40)),
        PollSchedule("fresh", timedelta(minutes=10), None),
        PollSchedule("polled", timedelta(minutes=15), polled + timedelta(minutes=15)),
    ]
