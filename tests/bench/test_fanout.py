"""Target 9's part: streams opened on a real server, status changes timed on each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.db import Database
from app.domain.keys.service import create_key
from app.domain.pledges.schemas import PledgeCreate
from app.domain.pledges.service import create_pledge
from bench import fanout
from bench.server import pledgewatch_server
from tests.conftest import NOW
from tests.factories import PLEDGE_ID, pledge_body


def test_a_change_id_cut_between_two_reads_is_noted_once_when_it_is_whole() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        stream = fanout._Stream(loop.create_future())
        stream.data_received(b"HTTP/1.1 200 OK\r\n\r\nretry: 3000\n\n")
        stream.data_received(b'data: {"seq":7,"data":{"status_change_id":12')
        stream.data_received(b'3,"pledge_id":"p"}}\n\n')
        stream.data_received(b'data: {"data":{"status_change_id":123,"pledge_id":"p"}}\n\n')
        return sorted(stream.arrivals)

    # Not 12: that was the first half of 123.
    assert asyncio.run(scenario()) == [123]


@pytest.mark.slow
def test_the_fanout_part_times_every_stream_of_every_change(
    db_url: str, database: Database, tmp_path: Path
) -> None:
    with database.transaction() as session:
        create_pledge(session, PledgeCreate(**pledge_body()), actor="key:test", now=NOW)
        key = create_key(session, name="fanout", role="analyst", now=NOW)

    with pledgewatch_server(db_url, tmp_path / "server.log") as server:
        result = fanout.measure(
            server.base_url, analyst_key=key, pledge_id=PLEDGE_ID, streams=20, changes=2
        )

    assert (result.streams, result.changes) == (20, 2)
    assert len(result.last_stream_ms) == 2
    assert 0 <= result.median_ms <= result.p99_ms <= result.max_ms
    assert max(result.last_stream_ms) == result.max_ms
