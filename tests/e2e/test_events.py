"""``GET /api/v1/events`` against real server processes (``pledgewatch serve``), both databases.

Clients read the stream over real sockets with httpx; writes go through the API of
the same or another server process, or straight to the database from this process
(as ``pledgewatch scheduler`` would), which the servers can only learn of by polling.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.clock import SystemClock
from app.config import Settings
from app.db import Database
from app.domain.ledger.service import entries
from app.domain.proposals.rules import run_evaluation
from app.main import create_app
from tests.domain.events.support import SseMessage, parse_lines
from tests.e2e.conftest import running_server
from tests.factories import PLEDGE_ID, Keys, evidence_body, pledge_body, problem

pytestmark = pytest.mark.slow

API = "/api/v1"
EVENT_KINDS = ("status.changed", "evidence.added", "proposal.created")
# How long a client waits for one line before the test fails (heartbeats come far sooner).
READ_TIMEOUT = 10.0


class Stream:
    """An open event stream over a real socket, read message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._messages = parse_lines(response.iter_lines())

    def next_message(self) -> SseMessage:
        return next(self._messages)

    def next_events(self, count: int) -> list[SseMessage]:
        """The next ``count`` events, skipping heartbeats; each must come within the timeout."""
        found: list[SseMessage] = []
        while len(found) < count:
            message = self.next_message()
            if message.is_event:
                found.append(message)
        return found

    def rest(self) -> list[SseMessage]:
        """Everything until the server ends the stream."""
        return list(self._messages)


@contextmanager
def open_stream(
    base: str, *, headers: dict[str, str] | None = None, params: dict[str, str] | None = None
) -> Iterator[Stream]:
    timeout = httpx.Timeout(READ_TIMEOUT, connect=5.0)
    with (
        httpx.Client(base_url=base, timeout=timeout) as http,
        http.stream("GET", f"{API}/events", headers=headers, params=params) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        opening = stream.next_message()
        assert opening.retry is not None
        assert opening.id is not None
        yield stream


def post(base: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    response = httpx.post(f"{base}{API}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code in (200, 201), response.text
    return response.json()


def new_pledge(base: str, keys: Keys, **overrides: Any) -> None:
    post(base, "/pledges", pledge_body(**overrides), keys["analyst"])


def change_status(base: str, keys: Keys, status: str) -> dict[str, Any]:
    body = {"status": status, "reason": f"Seen: {status}."}
    change: dict[str, Any] = post(base, f"/pledges/{PLEDGE_ID}/status", body, keys["analyst"])
    return change


def add_evidence(base: str, keys: Keys, n: int) -> int:
    body = {**evidence_body(n), "stance": "supports"}
    created = post(base, f"/pledges/{PLEDGE_ID}/evidence", body, keys["collector"])
    evidence_id: int = created["id"]
    return evidence_id


def ledger_events(database: Database, after: int = 0) -> list[tuple[int, str]]:
    """(seq, kind) of every event in the ledger after ``after``, in order."""
    with database.transaction(write=False) as session:
        return [
            (entry.seq, entry.kind)
            for entry in entries(session, after=after, limit=10_000)
            if entry.kind in EVENT_KINDS
        ]


def seq_kind(messages: list[SseMessage]) -> list[tuple[int, str]]:
    return [(int(message.id or ""), message.event or "") for message in messages]


@pytest.fixture
def fast_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started from here poll the ledger often and beat their heart often."""
    monkeypatch.setenv("PLEDGEWATCH_EVENTS_POLL_SECONDS", "0.2")
    monkeypatch.setenv("PLEDGEWATCH_SSE_HEARTBEAT_SECONDS", "0.5")


# --- delivery -------------------------------------------------------------------------------------


def test_a_status_change_and_new_evidence_reach_a_streaming_client(
    live_server: str, keys: Keys, database: Database
) -> None:
    new_pledge(live_server, keys)

    with open_stream(live_server) as stream:
        change = change_status(live_server, keys, "in_progress")
        [changed] = stream.next_events(1)
        evidence_id = add_evidence(live_server, keys, 1)
        [added] = stream.next_events(1)

    assert seq_kind([changed, added]) == ledger_events(database)[-2:]
    assert changed.event == "status.changed"
    change_document = changed.document()
    assert change_document["seq"] == int(changed.id or "")
    assert change_document["data"]["status_change_id"] == change["id"]
    assert change_document["data"]["to_status"] == "in_progress"
    assert change_document["data"]["actor"] == "key:analyst"
    assert added.event == "evidence.added"
    added_document = added.document()
    assert added_document["data"]["evidence_id"] == evidence_id
    assert added_document["data"]["links"] == [{"pledge_id": PLEDGE_ID, "stance": "supports"}]
    assert added_document["data"]["collected_by"] == "key:collector"


def test_reconnecting_with_last_event_id_receives_what_was_missed_once_in_order(
    live_server: str, keys: Keys, database: Database
) -> None:
    new_pledge(live_server, keys)
    with open_stream(live_server) as stream:
        change_status(live_server, keys, "in_progress")
        [last_seen] = stream.next_events(1)

    # While no one listens: several writes of both kinds.
    add_evidence(live_server, keys, 1)
    change_status(live_server, keys, "stalled")
    add_evidence(live_server, keys, 2)
    add_evidence(live_server, keys, 3)
    change_status(live_server, keys, "in_progress")
    missed = ledger_events(database, after=int(last_seen.id or ""))
    assert len(missed) == 5

    resume = {"Last-Event-ID": last_seen.id or ""}
    with open_stream(live_server, headers=resume) as stream:
        received = stream.next_events(len(missed))
        change_status(live_server, keys, "stalled")
        [live] = stream.next_events(1)

    assert seq_kind(received) == missed
    assert seq_kind([live]) == ledger_events(database)[-1:]
    assert len({message.id for message in [*received, live]}) == len(missed) + 1


def test_an_idle_stream_receives_heartbeats(
    db_url: str, tmp_path: Path, fast_servers: None
) -> None:
    with running_server(db_url, tmp_path / "server.log") as base, open_stream(base) as stream:
        started = time.monotonic()
        beats = [stream.next_message() for _ in range(2)]
        waited = time.monotonic() - started

    assert [beat.comments for beat in beats] == [["ping"], ["ping"]]
    assert not any(beat.is_event for beat in beats)
    # Two beats at 0.5 s; far less than the default 15 s.
    assert waited < 5


def test_a_write_through_one_server_reaches_the_clients_of_another(
    db_url: str, tmp_path: Path, keys: Keys, database: Database, fast_servers: None
) -> None:
    with (
        running_server(db_url, tmp_path / "a.log") as server_a,
        running_server(db_url, tmp_path / "b.log") as server_b,
    ):
        new_pledge(server_a, keys)
        with open_stream(server_b) as stream:
            started = time.monotonic()
            change_status(server_a, keys, "in_progress")
            [event] = stream.next_events(1)
            delay = time.monotonic() - started

    assert seq_kind([event]) == ledger_events(database)[-1:]
    assert event.document()["data"]["to_status"] == "in_progress"
    assert delay < 5


def test_a_proposal_made_by_the_rules_elsewhere_reaches_the_stream(
    db_url: str, tmp_path: Path, keys: Keys, database: Database, fast_servers: None
) -> None:
    with running_server(db_url, tmp_path / "server.log") as base:
        # Due on 2024-11-15 and never kept: the due-date rule proposes "broken".
        new_pledge(base, keys)
        with open_stream(base, params={"events": "proposal.created"}) as stream:
            # As the scheduler process would: the rules run against the database directly.
            report = run_evaluation(database, SystemClock().now())
            [event] = stream.next_events(1)

    assert report.proposals == {"due-date-passed": 1}
    assert event.event == "proposal.created"
    assert seq_kind([event]) == [e for e in ledger_events(database) if e[1] == "proposal.created"]
    data = event.document()["data"]
    assert data["pledge_id"] == PLEDGE_ID
    assert data["proposed_status"] == "broken"
    assert data["rule"] == "due-date-passed"


# --- refusals -------------------------------------------------------------------------------------


def open_streams(base: str) -> float:
    """The ``pledgewatch_sse_streams`` gauge of the server at ``base``."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    [value] = [
        line.split()[1] for line in text.splitlines() if line.startswith("pledgewatch_sse_streams ")
    ]
    return float(value)


def test_beyond_max_clients_a_stream_gets_503_with_retry_after(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLEDGEWATCH_SSE_MAX_CLIENTS", "2")
    with running_server(db_url, tmp_path / "server.log") as base:
        with open_stream(base), open_stream(base):
            full = open_streams(base)
            refused = httpx.get(f"{base}{API}/events", timeout=10)
        # The clients left: the server hears of it and frees their slots.
        deadline = time.monotonic() + 5
        while open_streams(base) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        with open_stream(base), open_stream(base):
            reopened = open_streams(base)

    assert full == 2
    problem(refused, 503)
    assert int(refused.headers["Retry-After"]) > 0
    assert reopened == 2


def test_bad_resume_points_are_422_naming_the_field(live_server: str) -> None:
    bad_header = httpx.get(
        f"{live_server}{API}/events", headers={"Last-Event-ID": "yesterday"}, timeout=10
    )
    bad_query = httpx.get(f"{live_server}{API}/events", params={"after": "-1"}, timeout=10)
    bad_filter = httpx.get(f"{live_server}{API}/events", params={"events": "x"}, timeout=10)

    problem(bad_header, 422, "Last-Event-ID")
    problem(bad_query, 422, "after")
    problem(bad_filter, 422, "events")


# --- the end of a stream --------------------------------------------------------------------------


def test_the_server_stops_promptly_with_streams_open(db_url: str, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with ExitStack() as server:
        base = server.enter_context(running_server(db_url, log_path))
        with open_stream(base) as first, open_stream(base, params={"after": "0"}) as second:
            started = time.monotonic()
            # running_server stops its process with SIGTERM, then waits up to 10 s.
            server.close()
            stopped_in = time.monotonic() - started
            # The streams end as streams do (the last chunk), not with a reset connection.
            leftovers = first.rest() + second.rest()

    assert stopped_in < 5
    assert not any(message.is_event for message in leftovers)
    errors = [line for line in log_path.read_text().splitlines() if '"level": "error"' in line]
    assert errors == []


# --- bursts: no stream holds the database, and a burst never wedges the server ------------------

# More streams arriving at once than the server has database slots (20 by default): each
# once held a slot while it waited for a second, and every database endpoint hung for ever.
BURST = 45


def event_requests(
    base: str, count: int, headers: dict[str, str] | None = None
) -> list[socket.socket]:
    """``count`` raw ``GET /events`` requests, connected first, then all sent within a few ms."""
    url = httpx.URL(base)
    lines = [f"GET {API}/events HTTP/1.1", f"Host: {url.host}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    sockets = [
        socket.create_connection((url.host, url.port or 80), timeout=READ_TIMEOUT)
        for _ in range(count)
    ]
    for sock in sockets:
        sock.sendall(request)
    return sockets


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the socket sends until ``marker`` (or its end); each read within the timeout."""
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@contextmanager
def closing_all(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_burst_of_event_streams_leaves_every_database_endpoint_answering(
    live_server: str, keys: Keys, database: Database
) -> None:
    new_pledge(live_server, keys)
    anonymous = event_requests(live_server, BURST)
    # Authenticated ones too: their key is looked up before they are admitted.
    viewers = event_requests(live_server, BURST // 3, headers=keys["viewer"])

    with closing_all(anonymous + viewers) as streams:
        # A liveness check, not a timing one: a wedged server never answers these.
        listing = httpx.get(f"{live_server}{API}/pledges", timeout=10)
        body = {"status": "in_progress", "reason": "Seen during a burst."}
        written = httpx.post(
            f"{live_server}{API}/pledges/{PLEDGE_ID}/status",
            json=body,
            headers=keys["analyst"],
            timeout=10,
        )
        received = [read_until(sock, b"event: status.changed") for sock in streams]

    assert listing.status_code == 200, listing.text
    assert [pledge["id"] for pledge in listing.json()["items"]] == [PLEDGE_ID]
    assert written.status_code == 201, written.text
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in received)
    # Every stream is live: each received the change.
    [(seq, _)] = ledger_events(database)[-1:]
    assert all(f"id: {seq}\nevent: status.changed".encode() in answer for answer in received)


def test_sigterm_stops_the_server_promptly_with_many_streams_open_and_arriving(
    db_url: str, tmp_path: Path, keys: Keys
) -> None:
    log_path = tmp_path / "server.log"
    with ExitStack() as server:
        base = server.enter_context(running_server(db_url, log_path))
        new_pledge(base, keys)
        with closing_all(event_requests(base, BURST)) as streams:
            opened = [read_until(sock, b"retry: ") for sock in streams]
            # And more, still being answered when the signal comes.
            with closing_all(event_requests(base, BURST, headers=keys["viewer"])):
                started = time.monotonic()
                # running_server stops its process with SIGTERM, then waits up to 10 s
                # before it kills it: far longer than a clean stop takes.
                server.close()
                stopped_in = time.monotonic() - started

    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in opened)
    assert stopped_in < 8
    errors = [line for line in log_path.read_text().splitlines() if '"level": "error"' in line]
    assert errors == []


# --- generated requests ---------------------------------------------------------------------------

# The stream never ends, so the generic schemathesis test (tests/e2e/test_schemathesis.py) leaves
# this operation out: it would wait for the end of every 200. Here, the same generated requests
# (valid and invalid) are sent; a 200 is read up to its first message and closed, everything
# else is read whole, and the answer is checked against the schema. Only checks that judge the
# answer are used: the others send more requests of their own, which would not end either.
events_schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi()).include(
    path=f"{API}/events"
)
ANSWER_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.positive_data_acceptance,
]


@events_schema.parametrize()
@settings(
    max_examples=int(os.environ.get("PLEDGEWATCH_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_events_answers_every_generated_request_as_documented(
    case: schemathesis.Case[Any], live_server: str
) -> None:
    request = case.as_transport_kwargs(base_url=live_server)
    with (
        httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT, connect=5.0)) as http,
        http.stream(
            request["method"],
            request["url"],
            params=request.get("params"),
            headers=request.get("headers"),
        ) as response,
    ):
        if response.status_code == 200:
            content = b""
            for chunk in response.iter_bytes():
                content += chunk
                if b"\n\n" in content:
                    break
            assert b"retry: " in content
        else:
            content = response.read()
    answer = httpx.Response(
        response.status_code, headers=response.headers, content=content, request=response.request
    )
    answer.elapsed = response.elapsed

    case.validate_response(answer, checks=ANSWER_CHECKS)
