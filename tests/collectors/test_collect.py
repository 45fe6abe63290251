"""One poll end to end: a real feed server, the real fetcher, a real database (both kinds)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import pytest
from sqlalchemy import func, select

from app.clock import FrozenClock
from app.collectors import collect as collect_module
from app.collectors import feeds
from app.collectors.collect import CollectContext, collect_source
from app.db import Database
from app.domain.evidence import service as evidence_service
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.pledges.models import Pledge
from app.domain.sources.models import Source, SourceRun
from app.domain.sources.schemas import SourceCreate
from app.domain.sources.service import create_source
from app.net import SafeFetcher
from app.seed.loader import seed
from tests.collectors.feed_server import Answer, FeedServer, feed_server, rss

CALLS = "us-cn-leader-calls-more-often"
AI = "us-cn-ai-cooperation"
ITEMS = (
    (
        "Biden and Xi speak by phone",
        "The leaders held a call on Tuesday.",
        "Tue, 02 Apr 2024 18:00:00 GMT",
    ),
    ("Markets close higher", "Stocks rose on Friday.", "Fri, 05 Apr 2024 20:00:00 GMT"),
)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


@pytest.fixture
def context(database: Database, clock: FrozenClock) -> Iterator[CollectContext]:
    with database.transaction() as session:
        seed(session, clock)
    fetcher = SafeFetcher(
        allow_private=True,
        clock=clock,
        retries=1,
        backoff_base=0.001,
        read_timeout=0.5,
        sleep=lambda _: None,
    )
    yield CollectContext(database=database, fetcher=fetcher, clock=clock)
    fetcher.close()


def add_source(context: CollectContext, url: str, **overrides: object) -> str:
    body: dict[str, object] = {
        "id": "test-feed",
        "name": "Test Wire",
        "kind": "rss",
        "url": url,
        "pledges": [CALLS],
        "match": {"any": ["Xi"]},
        "source_type": "independent",
        "reliability": "high",
        "trusted": True,
        **overrides,
    }
    with context.database.transaction() as session:
        create_source(session, SourceCreate.model_validate(body), now=context.clock.now())
    return str(body["id"])


def runs(database: Database) -> list[SourceRun]:
    with database.transaction(write=False) as session:
        return list(session.scalars(select(SourceRun).order_by(SourceRun.id)))


def source(database: Database) -> Source:
    with database.transaction(write=False) as session:
        return session.get_one(Source, "test-feed")


def test_a_poll_attaches_matching_items_and_records_the_run(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS))
    source_id = add_source(context, server.url("/feed"))

    result = collect_source(context, source_id)

    assert result is not None
    assert (result.outcome, result.items_seen, result.evidence_added) == ("ok", 2, 1)
    (run,) = runs(database)
    assert (run.outcome, run.items_seen, run.evidence_added, run.links_added) == ("ok", 2, 1, 1)
    assert run.finished_at is not None
    assert run.http_status == 200
    with database.transaction(write=False) as session:
        evidence = session.scalars(select(Evidence)).all()
        new = [e for e in evidence if e.collected_by == "source:test-feed"]
        assert [e.title for e in new] == ["Biden and Xi speak by phone"]
        assert new[0].fetched_at == context.clock.now()
        assert new[0].source_name == "Test Wire"
        assert new[0].source_type == "independent"
        link = session.scalars(
            select(EvidenceLink).where(EvidenceLink.evidence_id == new[0].id)
        ).one()
        assert (link.pledge_id, link.stance, link.review) == (CALLS, "supports", "accepted")
    assert source(database).last_success_at == context.clock.now()
    assert source(database).consecutive_failures == 0
    assert server.requests[0][1]["User-Agent"].startswith("Pledgewatch")


def test_an_unchanged_feed_adds_nothing_the_second_time(
    context: CollectContext, server: FeedServer, database: Database, clock: FrozenClock
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS))
    source_id = add_source(context, server.url("/feed"))
    collect_source(context, source_id)
    clock.advance(timedelta(minutes=5))

    again = collect_source(context, source_id)

    assert again is not None
    assert (again.outcome, again.evidence_added, again.links_added) == ("ok", 0, 0)
    with database.transaction(write=False) as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(Evidence)
                .where(Evidence.collected_by == "source:test-feed")
            )
            == 1
        )


def test_conditional_get_answers_not_modified(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS), etag='"v1"')
    source_id = add_source(context, server.url("/feed"))
    collect_source(context, source_id)
    assert source(database).etag == '"v1"'

    again = collect_source(context, source_id)

    assert again is not None
    assert again.outcome == "not_modified"
    assert server.requests[-1][1]["If-None-Match"] == '"v1"'
    assert [run.outcome for run in runs(database)] == ["ok", "not_modified"]


def test_an_untrusted_source_waits_for_review(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS))
    source_id = add_source(context, server.url("/feed"), trusted=False)
    before = _pledge(database, CALLS)

    collect_source(context, source_id)

    after = _pledge(database, CALLS)
    assert after.unreviewed_count == before.unreviewed_count + 1
    assert after.evidence_count == before.evidence_count


def test_item_already_known_by_url_is_linked_not_copied(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS))
    add_source(context, server.url("/feed"))
    add_source(
        context, server.url("/feed"), id="second-feed", pledges=[AI], match={"any": ["phone"]}
    )
    collect_source(context, "test-feed")

    second = collect_source(context, "second-feed")

    assert second is not None
    assert (second.outcome, second.evidence_added, second.links_added) == ("ok", 0, 1)
    with database.transaction(write=False) as session:
        evidence = session.scalars(
            select(Evidence).where(Evidence.title == "Biden and Xi speak by phone")
        ).one()
        pledges = set(
            session.scalars(
                select(EvidenceLink.pledge_id).where(EvidenceLink.evidence_id == evidence.id)
            )
        )
    assert pledges == {CALLS, AI}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(status=500, body=b"oops"), "500"),
        (Answer(status=404, body=b"gone"), "404"),
        (Answer(body=b"<rss><channel><item><title>unclosed"), "XML"),
        (Answer(body=rss(*ITEMS), delay=2.0), "time"),
        (Answer(body=b"x" * (6 * 1024 * 1024)), "limit"),
        (Answer(body=b'{"items": [', content_type="application/json"), "JSON"),
    ],
    ids=["server-error", "not-found", "malformed-xml", "timeout", "huge-body", "malformed-json"],
)
def test_a_bad_feed_fails_its_own_run_with_the_error_in_words(
    context: CollectContext, server: FeedServer, database: Database, answer: Answer, expected: str
) -> None:
    server.answers["/feed"] = answer
    json_source = {"kind": "json", "mapping": {"items": "items", "title": "t", "published_at": "d"}}
    source_id = add_source(
        context,
        server.url("/feed"),
        **(json_source if answer.content_type.endswith("json") else {}),
    )

    result = collect_source(context, source_id)

    assert result is not None
    assert result.outcome == "failed"
    (run,) = runs(database)
    assert run.outcome == "failed"
    assert run.finished_at is not None
    assert run.error is not None
    assert expected.lower() in run.error.lower(), run.error
    assert source(database).consecutive_failures == 1
    assert source(database).last_success_at is None


def test_a_redirect_to_a_private_address_fails_when_private_hosts_are_refused(
    database: Database, clock: FrozenClock, server: FeedServer
) -> None:
    with database.transaction() as session:
        seed(session, clock)
    server.answers["/feed"] = Answer(status=302, location="http://10.0.0.1/feed")
    fetcher = SafeFetcher(
        allow_private=False,
        clock=clock,
        retries=0,
        exempt_hosts=frozenset({server.base.removeprefix("http://")}),
    )
    context = CollectContext(database=database, fetcher=fetcher, clock=clock)
    source_id = add_source(context, server.url("/feed"))
    try:
        result = collect_source(context, source_id)
    finally:
        fetcher.close()
    assert result is not None
    assert result.outcome == "failed"
    assert result.error is not None
    assert "10.0.0.1" in result.error


def test_a_disabled_or_deleted_source_is_not_polled(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/feed"] = Answer(body=rss(*ITEMS))
    source_id = add_source(context, server.url("/feed"), enabled=False)
    assert collect_source(context, source_id) is None
    assert collect_source(context, "no-such-source") is None
    assert runs(database) == []
    assert server.requests == []


def _pledge(database: Database, pledge_id: str) -> Pledge:
    with database.transaction(write=False) as session:
        return session.get_one(Pledge, pledge_id)


# --- big feeds: chunks, a cap per run, and the next run going on --------------------------


def _csv(rows: int) -> bytes:
    lines = ["date,value"] + [f"2024-01-{1 + n % 28:02d},{n}" for n in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def add_csv_source(context: CollectContext, url: str) -> str:
    return add_source(
        context,
        url,
        kind="csv",
        mapping={"date": "date", "value": "value"},
        match={},
        source_type="dataset",
    )


def _collected(database: Database) -> int:
    with database.transaction(write=False) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Evidence)
                .where(Evidence.collected_by == "source:test-feed")
            )
            or 0
        )


def test_a_big_feed_is_ingested_in_chunks_capped_per_run_and_continued_next_run(
    context: CollectContext, server: FeedServer, database: Database, clock: FrozenClock
) -> None:
    server.answers["/series.csv"] = Answer(body=_csv(25), content_type="text/csv", etag='"v1"')
    source_id = add_csv_source(context, server.url("/series.csv"))
    context.max_items, context.chunk_items = 10, 4

    first = collect_source(context, source_id)

    assert first is not None
    assert (first.outcome, first.items_seen, first.items_ingested, first.items_left) == (
        "partial",
        25,
        10,
        15,
    )
    assert (first.chunks, first.evidence_added, first.links_added) == (3, 10, 10)
    (run,) = runs(database)
    assert (run.outcome, run.items_ingested, run.items_left, run.evidence_added) == (
        "partial",
        10,
        15,
        10,
    )
    assert source(database).etag is None, "the next run must fetch the whole feed again"
    assert source(database).consecutive_failures == 0

    clock.advance(timedelta(hours=1))
    second = collect_source(context, source_id)
    clock.advance(timedelta(hours=1))
    third = collect_source(context, source_id)

    assert second is not None
    assert third is not None
    assert (second.outcome, second.items_ingested, second.items_left) == ("partial", 10, 5)
    assert (third.outcome, third.items_ingested, third.items_left) == ("ok", 5, 0)
    assert _collected(database) == 25
    assert source(database).etag == '"v1"', "a complete run keeps the validator"
    clock.advance(timedelta(hours=1))
    fourth = collect_source(context, source_id)
    assert fourth is not None
    assert fourth.outcome == "not_modified"


def test_items_already_done_are_skipped_and_repeats_within_the_feed_count_once(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    body = _csv(6)
    server.answers["/series.csv"] = Answer(body=body + body.split(b"\n", 1)[1])  # rows twice
    source_id = add_csv_source(context, server.url("/series.csv"))
    context.max_items = 4

    first = collect_source(context, source_id)
    second = collect_source(context, source_id)
    third = collect_source(context, source_id)

    assert first is not None
    assert second is not None
    assert third is not None
    assert (first.items_seen, first.items_ingested, first.items_left) == (12, 4, 2)
    assert (second.outcome, second.items_ingested, second.items_left) == ("ok", 2, 0)
    assert (third.outcome, third.items_ingested, third.evidence_added) == ("ok", 0, 0)
    assert _collected(database) == 6


def test_a_run_asked_to_stop_ends_between_chunks_and_leaves_the_rest(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/series.csv"] = Answer(body=_csv(12), content_type="text/csv")
    source_id = add_csv_source(context, server.url("/series.csv"))
    context.chunk_items = 5
    asked: list[int] = []

    def stop_after_two_chunks() -> bool:
        asked.append(_collected(database))
        return len(asked) > 2

    result = collect_source(context, source_id, should_stop=stop_after_two_chunks)

    assert result is not None
    assert asked == [0, 5, 10], "asked before each chunk, each chunk committed on its own"
    assert (result.outcome, result.items_ingested, result.items_left) == ("partial", 10, 2)
    assert _collected(database) == 10


def test_each_transaction_of_a_poll_waits_for_its_turn_and_parsing_takes_none(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/series.csv"] = Answer(body=_csv(9), content_type="text/csv")
    source_id = add_csv_source(context, server.url("/series.csv"))
    context.chunk_items = 4
    turns: list[str] = []
    parsing = []

    @contextmanager
    def admission(*, write: bool) -> Iterator[None]:
        turns.append("write" if write else "read")
        yield

    real_read_feed = feeds.read_feed

    def read_feed(*args: Any, **kwargs: Any) -> Any:
        parsing.append(list(turns))
        return real_read_feed(*args, **kwargs)

    context.admission = admission
    with patch.object(collect_module, "read_feed", read_feed):
        result = collect_source(context, source_id)

    assert result is not None
    assert result.outcome == "ok"
    # Start the run, [parse], the pledges, one look-up of what is done, three chunks, finish.
    assert parsing == [["write"]]
    assert turns == ["write", "read", "read", "write", "write", "write", "write"]


def test_a_chunk_that_fails_fails_the_run_which_keeps_what_committed_and_says_what_is_left(
    context: CollectContext, server: FeedServer, database: Database
) -> None:
    server.answers["/series.csv"] = Answer(body=_csv(10), content_type="text/csv")
    source_id = add_csv_source(context, server.url("/series.csv"))
    context.chunk_items = 4
    real_ingest = evidence_service.ingest
    calls: list[int] = []

    def ingest_failing_the_second_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("the disk is full")
        return real_ingest(*args, **kwargs)

    with patch.object(collect_module, "ingest", ingest_failing_the_second_chunk):
        result = collect_source(context, source_id)

    assert result is not None
    assert (result.outcome, result.error) == ("failed", "internal error: RuntimeError")
    assert (result.items_ingested, result.items_left, result.evidence_added) == (4, 6, 4)
    (run,) = runs(database)
    assert (run.outcome, run.items_ingested, run.items_left) == ("failed", 4, 6)
    assert _collected(database) == 4
    assert source(database).consecutive_failures == 1
