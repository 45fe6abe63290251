"""Fan-out of ``/events``: one status change, many open streams, how long until each has it.

The streams are raw sockets held by one asyncio client in this process: each socket's
reader is a callback that notes when a status change's id first arrives, with no HTTP
or SSE parsing, so that the client costs little next to the server on a small machine.
A status change is made through the API; its clock starts when the ``POST`` has
answered ``201`` (the change is committed then) and stops, for each stream, when the
event arrived there (a stream that had it before the answer counts 0). Several changes
are made one after another; the figures are over every stream of every change.

``python -m bench.fanout --streams 50`` runs it on its own, against a new SQLite
database with one pledge, on a server started for it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

API = "/api/v1"
# Files the server and this client may open: a socket each per stream, and some to spare.
SPARE_FILES = 512
# A whole id only: one cut between two reads is matched once the rest has come.
_CHANGE_ID = re.compile(rb'"status_change_id":(\d+)[,}]')
# What one stream keeps of what it received: enough to hold a change id cut between reads.
_TAIL = 64


@dataclass(frozen=True, slots=True)
class FanoutResult:
    """Delays from a change's commit to its arrival on each stream, over every change."""

    streams: int
    changes: int
    median_ms: float
    p99_ms: float
    max_ms: float
    # The slowest stream of each change: when the last client had it.
    last_stream_ms: tuple[float, ...]


class _Round:
    """The change being timed: how many streams still wait for it."""

    def __init__(self) -> None:
        self.change_id: int | None = None
        self.remaining = 0
        self.done = asyncio.Event()

    def arrived(self, change_id: int) -> None:
        if change_id == self.change_id:
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()


class _Stream(asyncio.Protocol):
    """One open ``GET /events``: notes when each status change id first arrives."""

    def __init__(self, opened: asyncio.Future[None]) -> None:
        self.opened = opened
        self.arrivals: dict[int, float] = {}
        self.round: _Round | None = None
        self._tail = b""

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.opened.done():
            if not data.startswith(b"HTTP/1.1 200 "):
                self.opened.set_exception(RuntimeError(f"refused: {data[:200]!r}"))
                return
            self.opened.set_result(None)
        text = self._tail + data
        for match in _CHANGE_ID.finditer(text):
            change_id = int(match.group(1))
            if change_id not in self.arrivals:
                self.arrivals[change_id] = now
                if self.round is not None:
                    self.round.arrived(change_id)
        self._tail = text[-_TAIL:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before answering: {exc}"))


def raise_open_files_limit(streams: int) -> None:
    """Let this process (and the servers it starts, which inherit it) hold ``streams`` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = streams + SPARE_FILES
    if soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def measure(
    base_url: str,
    *,
    analyst_key: str,
    pledge_id: str,
    streams: int = 1000,
    changes: int = 5,
    timeout: float = 60.0,
) -> FanoutResult:
    """Open ``streams`` streams on the server at ``base_url``, make ``changes`` status changes
    of ``pledge_id`` one after another, and time each one's arrival on every stream."""
    raise_open_files_limit(streams)
    return asyncio.run(
        _measure(
            base_url, analyst_key, pledge_id, streams=streams, changes=changes, timeout=timeout
        )
    )


async def _measure(
    base_url: str, analyst_key: str, pledge_id: str, *, streams: int, changes: int, timeout: float
) -> FanoutResult:
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    loop = asyncio.get_running_loop()
    request = (
        f"GET {API}/events?events=status.changed HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    opened: list[_Stream] = []
    transports: list[asyncio.Transport] = []
    try:
        for _ in range(streams):
            transport, stream = await loop.create_connection(
                lambda: _Stream(loop.create_future()), host, port
            )
            transports.append(transport)
            opened.append(stream)
            transport.write(request)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(stream.opened for stream in opened))
        delays: list[float] = []
        last: list[float] = []
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as http:
            for _ in range(changes):
                per_stream = await _one_change(http, opened, analyst_key, pledge_id, timeout)
                delays.extend(per_stream)
                last.append(max(per_stream))
    finally:
        for open_transport in transports:
            open_transport.close()
    ordered = sorted(delays)
    return FanoutResult(
        streams=streams,
        changes=changes,
        median_ms=round(statistics.median(ordered) * 1000, 1),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        max_ms=round(ordered[-1] * 1000, 1),
        last_stream_ms=tuple(round(seconds * 1000, 1) for seconds in last),
    )


async def _one_change(
    http: httpx.AsyncClient,
    streams: list[_Stream],
    analyst_key: str,
    pledge_id: str,
    timeout: float,
) -> list[float]:
    """Change the pledge's status once; each stream's delay from the answer to the event."""
    current = await http.get(f"{API}/pledges/{pledge_id}")
    current.raise_for_status()
    status = "stalled" if current.json()["status"] == "in_progress" else "in_progress"
    timed = _Round()
    for stream in streams:
        stream.round = timed
    written = await http.post(
        f"{API}/pledges/{pledge_id}/status",
        json={"status": status, "reason": "Fan-out benchmark.", "reopen": True},
        headers={"Authorization": f"Bearer {analyst_key}"},
    )
    committed = time.perf_counter()
    if written.status_code != 201:
        raise RuntimeError(f"the change was refused: {written.status_code} {written.text[:300]}")
    change_id = int(written.json()["id"])
    # Streams that had it before the answer came are counted now; the others as it arrives.
    timed.change_id = change_id
    timed.remaining = sum(1 for stream in streams if change_id not in stream.arrivals)
    if timed.remaining:
        async with asyncio.timeout(timeout):
            await timed.done.wait()
    return [max(0.0, stream.arrivals[change_id] - committed) for stream in streams]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=5)
    args = parser.parse_args(argv)
    raise_open_files_limit(args.streams)
    from bench.server import pledgewatch_server

    with tempfile.TemporaryDirectory() as scratch:
        database_url = f"sqlite:///{Path(scratch) / 'fanout.db'}"
        key = _one_pledge(database_url)
        with pledgewatch_server(
            database_url,
            Path(scratch) / "server.log",
            extra_env={"PLEDGEWATCH_SSE_MAX_CLIENTS": str(args.streams + 100)},
        ) as server:
            result = measure(
                server.base_url,
                analyst_key=key,
                pledge_id="fanout-pledge",
                streams=args.streams,
                changes=args.changes,
            )
    print(result)
    return 0


def _one_pledge(database_url: str) -> str:
    """Migrate a new database, record one pledge; an analyst key for the changes."""
    from app.db import Database
    from app.domain.keys.service import create_key
    from app.domain.pledges.schemas import PledgeCreate
    from app.domain.pledges.service import create_pledge
    from app.migrate import upgrade

    upgrade(database_url)
    database = Database(database_url, pool_size=1)
    now = datetime.now(UTC)
    try:
        with database.transaction() as session:
            create_pledge(
                session,
                PledgeCreate.model_validate(
                    {
                        "id": "fanout-pledge",
                        "title": "A pledge to watch",
                        "text": "The parties will do a thing.",
                        "kind": "commitment",
                        "made_by": ["US"],
                        "made_to": ["CN"],
                        "made_on": "2023-11-15",
                        "topics": ["trade"],
                        "verification_criteria": "Readouts.",
                    }
                ),
                actor="key:bench",
                now=now,
            )
            return create_key(session, name="bench-fanout", role="analyst", now=now)
    finally:
        database.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
