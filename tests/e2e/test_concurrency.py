"""Races against a real server process: nothing lost, nothing doubled, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.domain.evidence.models import Evidence, EvidenceLink
from app.domain.pledges.models import Pledge
from app.domain.status.models import StatusChange
from tests.factories import evidence_body, pledge_body

Request = tuple[dict[str, str], dict[str, Any]]


async def _post_many(base: str, path: str, bodies: list[Request]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(path, json=body, headers=headers) for headers, body in bodies)
        )


def test_fifty_simultaneous_posts_of_one_item_make_one_item(
    live_server: str, keys: dict[str, dict[str, str]], database: Database
) -> None:
    created = httpx.post(
        f"{live_server}/api/v1/pledges", json=pledge_body(), headers=keys["analyst"]
    )
    assert created.status_code == 201, created.text
    body = {**evidence_body(7), "stance": "supports"}

    responses = asyncio.run(
        _post_many(
            live_server,
            "/api/v1/pledges/us-cn-test-pledge/evidence",
            [(keys["collector"], body)] * 50,
        )
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    with database.transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Evidence)) == 1
        assert session.scalar(select(func.count()).select_from(EvidenceLink)) == 1
        pledge = session.get_one(Pledge, "us-cn-test-pledge")
        assert pledge.unreviewed_count == 1


def test_batches_racing_on_the_same_items_store_each_once(
    live_server: str, keys: dict[str, dict[str, str]], database: Database
) -> None:
    httpx.post(f"{live_server}/api/v1/pledges", json=pledge_body(), headers=keys["analyst"])
    items = [
        {**evidence_body(n), "links": [{"pledge_id": "us-cn-test-pledge", "stance": "supports"}]}
        for n in range(100)
    ]
    responses = asyncio.run(
        _post_many(live_server, "/api/v1/evidence/batch", [(keys["analyst"], {"items": items})] * 8)
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    created = sum(1 for r in responses for result in r.json()["results"] if result["status"] == 201)
    assert created == 100
    with database.transaction(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Evidence)) == 100
        assert session.scalar(select(func.count()).select_from(EvidenceLink)) == 100
        assert session.get_one(Pledge, "us-cn-test-pledge").evidence_count == 100


def test_two_analysts_with_one_if_match_get_one_201_and_one_412(
    live_server: str, keys: dict[str, dict[str, str]], database: Database
) -> None:
    created = httpx.post(
        f"{live_server}/api/v1/pledges", json=pledge_body(), headers=keys["analyst"]
    )
    etag = created.headers["ETag"]
    headers = {**keys["analyst"], "If-Match": etag}
    first = {"status": "in_progress", "reason": "Analyst one saw progress."}
    second = {"status": "stalled", "reason": "Analyst two saw none."}

    responses = asyncio.run(
        _post_many(
            live_server,
            "/api/v1/pledges/us-cn-test-pledge/status",
            [(headers, first), (headers, second)],
        )
    )

    assert sorted(r.status_code for r in responses) == [201, 412]
    loser = next(r for r in responses if r.status_code == 412)
    assert loser.headers["content-type"].startswith("application/problem+json")
    winner = next(r for r in responses if r.status_code == 201).json()
    with database.transaction(write=False) as session:
        changes = session.scalars(
            select(StatusChange.to_status).where(StatusChange.pledge_id == "us-cn-test-pledge")
        ).all()
        assert sorted(changes) == sorted(["not_yet_rated", winner["to_status"]])
        assert session.get_one(Pledge, "us-cn-test-pledge").status == winner["to_status"]


def test_many_concurrent_writers_make_one_unbroken_chain(
    live_server: str, keys: dict[str, dict[str, str]], database: Database
) -> None:
    """Writers of every kind at once, through the real server: the ledger never forks."""
    pledges = [f"chain-pledge-{n}" for n in range(4)]
    for pledge_id in pledges:
        created = httpx.post(
            f"{live_server}/api/v1/pledges",
            json=pledge_body(id=pledge_id),
            headers=keys["analyst"],
        )
        assert created.status_code == 201, created.text

    async def race() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=live_server, timeout=60, limits=limits) as client:
            calls = [
                client.post(
                    f"/api/v1/pledges/{pledges[n % 4]}/evidence",
                    json={**evidence_body(100 + n), "stance": "supports"},
                    headers=keys["collector"],
                )
                for n in range(40)
            ] + [
                client.patch(
                    f"/api/v1/pledges/{pledges[n % 4]}",
                    json={"title": f"Renamed {n}"},
                    headers=keys["analyst"],
                )
                for n in range(12)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(race())
    assert all(r.status_code in (200, 201) for r in responses), [
        r.text for r in responses if r.status_code >= 300
    ]

    verdict = httpx.get(f"{live_server}/api/v1/ledger/verify").json()
    assert verdict["ok"] is True, verdict
    # 4 pledges (created + first status) + 40 items (item + link) + 12 edits.
    assert verdict["length"] == 4 * 2 + 40 * 2 + 12
    seqs: list[int] = []
    cursor = None
    while True:
        page = httpx.get(
            f"{live_server}/api/v1/ledger",
            params={"limit": 1000, **({"cursor": cursor} if cursor else {})},
        ).json()
        seqs.extend(entry["seq"] for entry in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seqs == list(range(1, verdict["length"] + 1))
