"""``GET /api/v1/ledger/verify`` abandoned by a crowd, against a real server, both databases.

Forty-one anonymous requests arrive over raw sockets and their clients leave. The
server must keep answering ordinary reads meanwhile, and stop verifying once they
have gone. The server pauses between pages of a verification (a setting meant for
busy servers), so the run cannot end by itself while the test looks: what ends it
is the clients leaving. Nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.factories import Keys, pledge_body

pytestmark = pytest.mark.slow

API = "/api/v1"
CROWD = 41
WAIT = 60.0
# Some twenty pages at least (chain, each kind of row, its deletions, the pledges): with
# this pause, well over a minute of verification, whatever the machine.
PAUSE_MS = 5000


@pytest.fixture
def paused_server(db_url: str, tmp_path: Path) -> Iterator[str]:
    settings = {"PLEDGEWATCH_LEDGER_VERIFY_PAUSE_MS": str(PAUSE_MS)}
    with running_server(db_url, tmp_path / "server.log", settings) as base:
        yield base


def metric(base: str, name: str, **labels: str) -> float:
    """A sample of ``name`` with ``labels`` from the server's /metrics (0 when absent)."""
    text = httpx.get(f"{base}/metrics", timeout=WAIT).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = ",".join(sorted((match.group(1) or "").split(","))) if match.group(1) else ""
        if found == wanted:
            return float(match.group(2))
    return 0.0


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def open_verify_requests(base: str, count: int) -> list[socket.socket]:
    """``count`` raw GETs of /ledger/verify, sent and left waiting for their answers."""
    address = urlsplit(base)
    request = (
        f"GET {API}/ledger/verify HTTP/1.1\r\nHost: {address.netloc}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    sockets = []
    for _ in range(count):
        connection = socket.create_connection((address.hostname, address.port), timeout=WAIT)
        connection.sendall(request)
        sockets.append(connection)
    return sockets


def test_an_abandoned_crowd_of_verifications_starves_nothing_and_stops(
    paused_server: str, keys: Keys
) -> None:
    base = paused_server
    created = httpx.post(f"{base}{API}/pledges", json=pledge_body(), headers=keys["analyst"])
    assert created.status_code == 201, created.text

    crowd = open_verify_requests(base, CROWD)
    try:
        eventually(
            lambda: metric(base, "pledgewatch_ledger_verify_waiters") == CROWD,
            f"{CROWD} requests waiting for the verification",
        )
        assert metric(base, "pledgewatch_ledger_verify_running") == 1
        # Ordinary reads answer while the crowd waits (each within the client's timeout).
        with httpx.Client(base_url=base, timeout=10) as reader:
            for path in ("/pledges", "/status", "/pledges?kind=commitment", "/ledger"):
                assert reader.get(f"{API}{path}").status_code == 200, path
            assert reader.get(f"{API}/status", params={"q": "test"}).status_code == 200
    finally:
        for connection in crowd:
            connection.close()

    eventually(
        lambda: metric(base, "pledgewatch_ledger_verify_runs_total", outcome="cancelled") == 1,
        "the verification stopped after its requesters left",
    )
    assert metric(base, "pledgewatch_ledger_verify_running") == 0
    assert metric(base, "pledgewatch_ledger_verify_waiters") == 0
    assert metric(base, "pledgewatch_ledger_verify_runs_total", outcome="ok") == 0
    # Every abandoned request ended at once, none of them with a verdict.
    eventually(
        lambda: (
            metric(
                base,
                "pledgewatch_http_requests_total",
                method="GET",
                route=f"{API}/ledger/verify",
                status="499",
            )
            == CROWD
        ),
        "every abandoned request ended",
    )
    assert metric(base, "pledgewatch_ledger_verify_answers_total", how="gone") == CROWD
