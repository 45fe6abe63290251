"""API tests for ``GET /api/v1/events`` against the real app on both databases.

Streams are read through ``AsgiStream`` (the server's side of one request, played by
the test), writes go through the API; the app's clock is frozen.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.events import router as events_router
from app.domain.events import stream as stream_module
from app.domain.events.router import EVENTS_PATTERN, RETRY_MILLISECONDS
from app.domain.events.service import EVENT_KINDS
from app.domain.events.stream import PAGE_SIZE
from app.domain.keys.service import Principal
from app.domain.ledger.models import LedgerEntry
from app.main import create_app
from tests.domain.events.support import AsgiStream, SseMessage
from tests.factories import PLEDGE_ID, Keys, evidence_body, invalid_fields, pledge_body, problem

API = "/api/v1"
EVENTS = f"{API}/events"
# Never ticks during a test: every wake-up below comes from this process's commits.
NEVER = 3600.0


def make_app(
    settings: Settings, clock: FrozenClock, database: Database, **overrides: Any
) -> FastAPI:
    options = {"events_poll_seconds": NEVER, **overrides}
    return create_app(settings.model_copy(update=options), clock=clock, database=database)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) and a client for its ordinary, finite answers."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def post(http: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    response = await http.post(f"{API}{path}", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def new_pledge(http: httpx.AsyncClient, keys: Keys, pledge_id: str = PLEDGE_ID) -> None:
    await post(http, "/pledges", pledge_body(id=pledge_id), keys["analyst"])


async def change_status(
    http: httpx.AsyncClient, keys: Keys, clock: FrozenClock, status: str
) -> dict[str, Any]:
    clock.advance(timedelta(minutes=1))
    body = {"status": status, "reason": f"Now {status}."}
    change: dict[str, Any] = await post(http, f"/pledges/{PLEDGE_ID}/status", body, keys["analyst"])
    return change


async def add_evidence(http: httpx.AsyncClient, keys: Keys, n: int) -> int:
    body = {**evidence_body(n), "stance": "supports"}
    created = await post(http, f"/pledges/{PLEDGE_ID}/evidence", body, keys["collector"])
    evidence_id: int = created["id"]
    return evidence_id


def event_seqs(database: Database, kinds: Collection[str] = EVENT_KINDS) -> list[int]:
    """The ledger seqs of the events of ``kinds``, in order."""
    with database.transaction(write=False) as session:
        return list(
            session.scalars(
                select(LedgerEntry.seq)
                .where(LedgerEntry.kind.in_(list(kinds)))
                .order_by(LedgerEntry.seq)
            )
        )


def ledger_length(database: Database) -> int:
    with database.transaction(write=False) as session:
        return max(session.scalars(select(LedgerEntry.seq)), default=0)


def ids(messages: list[SseMessage]) -> list[int]:
    return [int(message.id or "") for message in messages]


# --- what a stream carries ----------------------------------------------------------------------


def test_a_status_change_arrives_as_status_changed_with_its_ledger_seq(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[SseMessage, SseMessage, dict[str, Any]]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            async with AsgiStream(app, EVENTS) as stream:
                assert stream.status == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                opening = await stream.next_message()
                change = await change_status(http, keys, clock, "in_progress")
                [event] = await stream.next_events(1)
        return opening, event, change

    opening, event, change = asyncio.run(scenario())

    # The stream started at the head: the pledge's first history entry was not replayed.
    assert opening.retry == RETRY_MILLISECONDS
    assert opening.data is None
    assert int(opening.id or "") == event_seqs(database)[0]
    assert event.event == "status.changed"
    assert int(event.id or "") == event_seqs(database)[-1]
    document = event.document()
    assert document["seq"] == int(event.id or "")
    assert document["event"] == "status.changed"
    assert document["subject"] == f"status_change:{change['id']}"
    assert document["data"]["status_change_id"] == change["id"]
    assert document["data"]["pledge_id"] == PLEDGE_ID
    assert document["data"]["from_status"] == "not_yet_rated"
    assert document["data"]["to_status"] == "in_progress"
    assert document["data"]["actor"] == "key:analyst"
    assert document["data"]["reason"] == "Now in_progress."


def test_new_evidence_arrives_as_evidence_added_with_its_links(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[SseMessage, int]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            async with AsgiStream(app, EVENTS) as stream:
                await stream.next_message()
                evidence_id = await add_evidence(http, keys, 1)
                [event] = await stream.next_events(1)
        return event, evidence_id

    event, evidence_id = asyncio.run(scenario())

    assert event.event == "evidence.added"
    assert int(event.id or "") == event_seqs(database, ["evidence.added"])[-1]
    data = event.document()["data"]
    assert data["evidence_id"] == evidence_id
    assert data["title"] == "Evidence item 1"
    assert data["collected_by"] == "key:collector"
    assert data["links"] == [{"pledge_id": PLEDGE_ID, "stance": "supports"}]


def test_the_events_filter_sends_only_the_named_events(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[SseMessage, list[SseMessage]]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            params = {"events": "evidence.added", "after": "0"}
            async with AsgiStream(app, EVENTS, params=params) as stream:
                opening = await stream.next_message()
                await change_status(http, keys, clock, "in_progress")
                await add_evidence(http, keys, 1)
                await change_status(http, keys, clock, "stalled")
                await add_evidence(http, keys, 2)
                events = await stream.next_events(2)
        return opening, events

    opening, events = asyncio.run(scenario())

    assert opening.comments == ["pledgewatch events after seq 0: evidence.added"]
    assert [event.event for event in events] == ["evidence.added", "evidence.added"]
    assert ids(events) == event_seqs(database, ["evidence.added"])


# --- resuming -------------------------------------------------------------------------------------


def test_reconnecting_with_last_event_id_gives_what_was_missed_in_order_once(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[list[SseMessage], list[SseMessage]]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            async with AsgiStream(app, EVENTS) as stream:
                await stream.next_message()
                await change_status(http, keys, clock, "in_progress")
                before = await stream.next_events(1)
            # Disconnected: several writes of both kinds.
            await add_evidence(http, keys, 1)
            await change_status(http, keys, clock, "stalled")
            await add_evidence(http, keys, 2)
            await change_status(http, keys, clock, "in_progress")
            # The query's after=0 loses to the header, as for a browser reconnecting.
            resume = {"Last-Event-ID": before[-1].id or ""}
            async with AsgiStream(app, EVENTS, headers=resume, params={"after": "0"}) as stream:
                missed = await stream.next_events(4)
                await add_evidence(http, keys, 3)
                missed += await stream.next_events(1)
                # Nothing else, in particular nothing a second time.
                with pytest.raises(TimeoutError):
                    await stream.next_events(1, timeout=0.3)
        return before, missed

    before, missed = asyncio.run(scenario())

    all_events = event_seqs(database)
    resumed_from = int(before[-1].id or "")
    assert ids(missed) == [seq for seq in all_events if seq > resumed_from]
    assert [event.event for event in missed] == [
        "evidence.added",
        "status.changed",
        "evidence.added",
        "status.changed",
        "evidence.added",
    ]
    assert [event.document()["seq"] for event in missed] == ids(missed)


def test_after_starts_a_first_connection_at_a_seq(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> list[SseMessage]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            await change_status(http, keys, clock, "in_progress")
            await change_status(http, keys, clock, "stalled")
            start = str(event_seqs(database)[0])
            async with AsgiStream(app, EVENTS, params={"after": start}) as stream:
                opening = await stream.next_message()
                assert opening.id == start
                return await stream.next_events(2)

    events = asyncio.run(scenario())

    assert ids(events) == event_seqs(database)[1:]
    assert [e.document()["data"]["to_status"] for e in events] == ["in_progress", "stalled"]


def test_without_a_resume_point_the_stream_starts_at_the_head(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[SseMessage, SseMessage]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            await add_evidence(http, keys, 1)
            async with AsgiStream(app, EVENTS) as stream:
                opening = await stream.next_message()
                await change_status(http, keys, clock, "in_progress")
                [event] = await stream.next_events(1)
        return opening, event

    opening, event = asyncio.run(scenario())

    head_before = event_seqs(database)[-2]
    assert int(opening.id or "") >= head_before
    assert event.event == "status.changed"
    assert int(event.id or "") == event_seqs(database)[-1]


# --- bad input, limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "field"),
    [
        ({"Last-Event-ID": "abc"}, {}, "Last-Event-ID"),
        ({"Last-Event-ID": "-1"}, {}, "Last-Event-ID"),
        ({"Last-Event-ID": "1.5"}, {}, "Last-Event-ID"),
        ({"Last-Event-ID": str(2**63)}, {}, "Last-Event-ID"),
        ({}, {"after": "soon"}, "after"),
        ({}, {"after": "-3"}, "after"),
        ({}, {"after": "1" * 30}, "after"),
        ({}, {"events": "status.changed,pledge.created"}, "events"),
        ({}, {"events": "status.changed,,evidence.added"}, "events"),
        ({}, {"events": ""}, "events"),
        ({}, {"events": "status.changed\t"}, "events"),
    ],
)
def test_bad_resume_points_and_filters_are_422_naming_the_field(
    client: TestClient, headers: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = client.get(EVENTS, headers=headers, params=params)

    assert invalid_fields(response) == [field]


def test_an_unknown_event_is_named_in_the_answer(client: TestClient) -> None:
    response = client.get(EVENTS, params={"events": "evidence.added, pledge.created"})

    body = problem(response, 422, "events")
    assert "'pledge.created'" in body["errors"][0]["message"]
    assert "status.changed" in body["errors"][0]["message"]


def test_the_documented_events_pattern_is_what_the_filter_accepts() -> None:
    import re

    pattern = re.compile(EVENTS_PATTERN)
    assert pattern.match("status.changed, evidence.added,proposal.created")
    assert not pattern.match("status.changed,pledge.created")
    assert not pattern.match("")
    assert not pattern.match("status.changed\t")


def test_reads_need_a_key_when_public_read_is_off(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    app = make_app(settings, clock, database, public_read=False)

    async def scenario() -> tuple[httpx.Response, int]:
        async with serving(app) as http:
            refused = await http.get(EVENTS)
            async with AsgiStream(app, EVENTS, headers=keys["viewer"]) as stream:
                return refused, stream.status or 0

    refused, status = asyncio.run(scenario())

    problem(refused, 401)
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert status == 200


def test_beyond_max_clients_a_stream_is_refused_with_503_and_retry_after(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    app = make_app(settings, clock, database, sse_max_clients=2)

    async def scenario() -> tuple[httpx.Response, int, int]:
        async with serving(app) as http:
            async with AsgiStream(app, EVENTS), AsgiStream(app, EVENTS):
                refused = await http.get(EVENTS)
            # Both clients left: their slots are free again.
            left = app.state.events.streams
            async with AsgiStream(app, EVENTS) as again:
                return refused, left, again.status or 0

    refused, left, again = asyncio.run(scenario())

    body = problem(refused, 503)
    assert "2 event streams" in body["detail"]
    assert int(refused.headers["Retry-After"]) > 0
    assert left == 0
    assert again == 200


# --- liveness, memory, the end of a stream -------------------------------------------------------


def test_an_idle_stream_gets_heartbeats(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    app = make_app(settings, clock, database, sse_heartbeat_seconds=0.05)

    async def scenario() -> list[SseMessage]:
        async with serving(app), AsgiStream(app, EVENTS) as stream:
            await stream.next_message()
            return [await stream.next_message(timeout=5) for _ in range(2)]

    beats = asyncio.run(scenario())

    assert [beat.comments for beat in beats] == [["ping"], ["ping"]]
    assert all(not beat.is_event and beat.id is None for beat in beats)


def test_a_client_that_stops_reading_holds_at_most_one_page(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    """While the client reads nothing, its stream reads nothing more; once the shared buffer
    has moved past it, it catches up by itself one page at a time, each read only when the
    previous page is sent."""
    app = make_app(settings, clock, database)
    written = 2 * 250
    # (events the socket had accepted, size of the page) at each page the stream read itself
    own_reads: list[tuple[int, int]] = []
    buffered: list[int] = []

    async def batch(http: httpx.AsyncClient, start: int) -> None:
        links = [{"pledge_id": PLEDGE_ID, "stance": "supports"}]
        items = [{**evidence_body(n), "links": links} for n in range(start, start + 250)]
        await post(http, "/evidence/batch", {"items": items}, keys["collector"])

    async def scenario() -> tuple[int, list[SseMessage]]:
        async with serving(app) as http:
            broadcaster = app.state.events
            # A buffer of one page, so that 500 events leave the stream far behind it.
            broadcaster.recent = stream_module.RecentEvents(PAGE_SIZE)
            real = broadcaster._read_page
            await new_pledge(http, keys)
            async with AsgiStream(app, EVENTS) as stream:

                async def counting(after: int, kinds: Collection[str]) -> Any:
                    page = await real(after, kinds)
                    own_reads.append((stream.chunks_sent - 1, len(page.events)))
                    return page

                broadcaster._read_page = counting
                await stream.next_message()
                stream.accepting.clear()
                await batch(http, 0)
                await batch(http, 250)
                # Both batches are read by the broadcaster (more wake-ups, a poll): the
                # stream, blocked on its first event, must not read on.
                await broadcaster.poll_once()
                await asyncio.sleep(0.2)
                read_while_blocked = len(own_reads)
                stream.on_chunk = lambda: buffered.append(len(broadcaster.recent))
                stream.accepting.set()
                events = await stream.next_events(written)
        return read_while_blocked, events

    read_while_blocked, events = asyncio.run(scenario())

    # At most the page holding the event its socket will not take.
    assert read_while_blocked <= 1
    expected = event_seqs(database, ["evidence.added"])
    assert len(expected) == written
    assert ids(events) == expected
    assert max(buffered) <= PAGE_SIZE
    # It fell behind and caught up by itself, one page at a time: each page was read only
    # once every event before it had been sent.
    assert own_reads
    assert all(size <= PAGE_SIZE for _, size in own_reads)
    for (sent, size), (sent_next, _) in itertools.pairwise(own_reads):
        assert sent_next == sent + size


def test_a_client_leaving_frees_its_slot(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[int, int]:
        async with serving(app):
            stream = AsgiStream(app, EVENTS)
            async with stream:
                await stream.next_message()
                open_streams = app.state.events.streams
            return open_streams, app.state.events.streams

    during, after = asyncio.run(scenario())

    assert (during, after) == (1, 0)


def test_an_open_stream_holds_no_database_connection(
    settings: Settings, clock: FrozenClock, database: Database, keys: Keys
) -> None:
    """Proved by taking every connection slot, and in each a pooled connection, while the
    stream is open and waiting: none can be missing.

    Counting the pool's checked-out connections instead (as this test once did) is a race:
    the app's background readers (the revision watch every 0.1 s, the events reader) hold
    a connection now and then, and on a busy machine they were caught holding one.
    """
    # Authenticated, so that the key lookup happens too. The pool size is the fixture
    # database's (5, with as many more on overflow), as the app's own database would have.
    app = make_app(settings, clock, database, public_read=False, db_pool_size=5)
    slots = 5 * 2

    async def hold_a_slot_and_a_connection(all_held: asyncio.Barrier) -> None:
        async with app.state.gates.admit(write=False):
            connection = await asyncio.to_thread(database.engine.connect)
            try:
                await all_held.wait()
            finally:
                await asyncio.to_thread(connection.close)

    async def scenario() -> list[SseMessage]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            async with AsgiStream(app, EVENTS, headers=keys["viewer"]) as stream:
                await stream.next_message()
                await change_status(http, keys, clock, "in_progress")
                received = await stream.next_events(1)
                # The stream has read (and closed its session) and now waits for news.
                all_held = asyncio.Barrier(slots + 1)
                holders = [
                    asyncio.create_task(hold_a_slot_and_a_connection(all_held))
                    for _ in range(slots)
                ]
                async with asyncio.timeout(30):
                    await all_held.wait()
                    await asyncio.gather(*holders)
                # And it still works: the next change arrives.
                await change_status(http, keys, clock, "stalled")
                received += await stream.next_events(1)
        return received

    received = asyncio.run(scenario())

    assert [event.document()["data"]["to_status"] for event in received] == [
        "in_progress",
        "stalled",
    ]


def test_stopping_the_app_ends_open_streams(
    settings: Settings, clock: FrozenClock, database: Database
) -> None:
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[bool, int]:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        stream = AsgiStream(app, EVENTS)
        await stream.__aenter__()
        await stream.next_message()
        await lifespan.__aexit__(None, None, None)
        await stream.finished()
        return stream.ended, app.state.events.streams

    ended, streams = asyncio.run(scenario())

    assert ended
    assert streams == 0


def test_a_client_that_accepts_nothing_for_too_long_is_dropped(
    settings: Settings,
    clock: FrozenClock,
    database: Database,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_router, "SEND_TIMEOUT_SECONDS", 0.2)
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[bool, int]:
        async with serving(app) as http:
            await new_pledge(http, keys)
            stream = AsgiStream(app, EVENTS)
            async with stream:
                await stream.next_message()
                stream.accepting.clear()
                await change_status(http, keys, clock, "in_progress")
                # The app gives up on the blocked send and returns by itself.
                await stream.finished()
                return stream.ended, app.state.events.streams

    ended, streams = asyncio.run(scenario())

    # Dropped, not ended: the client never took the last chunk, and its slot is free.
    assert not ended
    assert streams == 0


# --- a stream opened with a key ---------------------------------------------------------------


def test_a_stream_opened_with_a_key_ends_once_the_key_is_revoked(
    settings: Settings,
    clock: FrozenClock,
    database: Database,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_router, "KEY_CHECK_SECONDS", 0.05)
    app = make_app(settings, clock, database)

    async def scenario() -> tuple[int | None, int]:
        async with serving(app) as http:
            async with AsgiStream(app, EVENTS, headers=keys["viewer"]) as stream:
                await stream.next_message()
                revoked = await http.post(f"{API}/keys/viewer/revoke", headers=keys["admin"])
                assert revoked.status_code == 200, revoked.text
                await asyncio.wait_for(stream.finished(), timeout=30)
            again = await http.get(EVENTS, headers=keys["viewer"])
        return stream.status, again.status_code

    status, reconnection = asyncio.run(scenario())

    assert status == 200
    assert reconnection == 401


def test_the_key_watch_stops_only_when_the_key_lapses() -> None:
    answers: list[Principal | None] = [Principal(name="job", role="viewer")] * 3 + [None]

    class Directory:
        asked = 0

        async def principal_for(self, secret: str) -> Principal | None:
            answer = answers[self.asked]
            self.asked += 1
            return answer

    directory = Directory()
    stop = anyio.Event()

    async def watch() -> None:
        await events_router.end_when_key_lapses(
            directory,  # type: ignore[arg-type]
            "pw_secret",
            stop,
            every=0,
        )

    asyncio.run(watch())
    assert stop.is_set()
    assert directory.asked == 4
