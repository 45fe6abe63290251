"""The evidence API: ingest (one, multi-link, batch), read, list, review and the review queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from app.clock import FrozenClock
from tests.factories import (
    PLEDGE_ID,
    Keys,
    evidence_body,
    make_pledge,
    problem,
    problem_fields,
)

P1 = PLEDGE_ID

P2 = "us-cn-second-pledge"
P3 = "us-cn-third-pledge"


def add_to_pledge(
    client: TestClient,
    headers: dict[str, str],
    n: int = 1,
    *,
    pledge_id: str = P1,
    stance: str = "supports",
    **overrides: Any,
) -> Response:
    response: Response = client.post(
        f"/api/v1/pledges/{pledge_id}/evidence",
        json=evidence_body(n, stance=stance, **overrides),
        headers=headers,
    )
    return response


def multi(n: int, links: list[tuple[str, str]], **overrides: Any) -> dict[str, Any]:
    body = evidence_body(n, **overrides)
    body["links"] = [{"pledge_id": pid, "stance": stance} for pid, stance in links]
    return body


def pledge(client: TestClient, pledge_id: str = P1) -> dict[str, Any]:
    response = client.get(f"/api/v1/pledges/{pledge_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def pledge_evidence(client: TestClient, pledge_id: str = P1, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/v1/pledges/{pledge_id}/evidence", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def all_pages(client: TestClient, path: str, headers: dict[str, str], limit: int) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert page["items"], "a non-final page must not be empty"
    raise AssertionError("pagination did not end")


# --- POST /pledges/{id}/evidence --------------------------------------------------------------


def test_add_new_item_is_201_with_location(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/api/v1/evidence/{body['id']}"
    assert body["title"] == "Evidence item 1"
    assert body["url"] == "https://news.example.org/items/1"
    assert body["published_at"] == "2024-04-02T18:00:00Z"
    assert body["source_name"] == "Example Wire"
    assert body["source_type"] == "independent"
    assert body["reliability"] == "high"
    assert body["collected_by"] == "key:collector"
    assert body["recorded_at"] == "2025-01-15T12:00:00Z"
    assert body["fetched_at"] is None
    assert len(body["content_hash"]) == 64
    assert [(link["pledge_id"], link["stance"], link["review"]) for link in body["links"]] == [
        (P1, "supports", "unreviewed")
    ]
    assert body["links"][0]["linked_by"] == "key:collector"
    assert body["links"][0]["reviewed_by"] is None

    again = client.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json() == body


def test_url_is_stored_as_given_not_normalised(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    url = "HTTPS://News.Example.org:443/items/1/?utm_source=rss#top"
    response = add_to_pledge(client, keys["collector"], url=url)
    assert response.status_code == 201, response.text
    assert response.json()["url"] == url


@pytest.mark.parametrize(
    "same_url",
    [
        "https://news.example.org/items/1",
        "HTTPS://NEWS.EXAMPLE.ORG/items/1",
        "https://news.example.org:443/items/1/",
        "https://news.example.org/items/1#comments",
        "https://news.example.org/items/1?utm_source=rss&utm_medium=feed",
    ],
)
def test_same_normalised_url_is_200_and_the_same_item(
    client: TestClient, keys: Keys, same_url: str
) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], 1)
    assert first.status_code == 201
    # Different words and date: only the URL makes it the same item.
    second = add_to_pledge(
        client,
        keys["collector"],
        2,
        url=same_url,
        published_at="2024-05-01T00:00:00Z",
    )
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert second.json()["title"] == "Evidence item 1"  # the first is kept, not overwritten
    assert len(second.json()["links"]) == 1
    assert len(pledge_evidence(client)["items"]) == 1


def test_different_url_query_is_a_different_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], 1, url="https://e.example/a?id=1")
    second = add_to_pledge(client, keys["collector"], 2, url="https://e.example/a?id=2")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


def test_same_content_hash_is_200_and_the_same_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], 1, url=None, title="Leaders Spoke")
    assert first.status_code == 201
    # Case and spacing do not make a new item; nor does another URL with the same content.
    again = add_to_pledge(
        client,
        keys["collector"],
        1,
        url="https://mirror.example.net/copy",
        title="  leaders   SPOKE ",
        summary="something   RELEVANT happened (1).",
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["content_hash"] == first.json()["content_hash"]
    assert again.json()["url"] is None
    assert len(pledge_evidence(client)["items"]) == 1


def test_same_instant_in_another_zone_is_the_same_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], 1, url=None)
    again = add_to_pledge(
        client, keys["collector"], 1, url=None, published_at="2024-04-02T20:00:00+02:00"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


def test_given_content_hash_identifies_the_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    digest = "AB" * 32
    first = add_to_pledge(client, keys["collector"], 1, url=None, content_hash=digest)
    assert first.status_code == 201, first.text
    assert first.json()["content_hash"] == digest.lower()
    other_words = add_to_pledge(client, keys["collector"], 2, url=None, content_hash=digest)
    assert other_words.status_code == 200, other_words.text
    assert other_words.json()["id"] == first.json()["id"]


def test_bad_content_hash_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], content_hash="not-a-hash")
    problem(response, 422, "content_hash")


def test_existing_item_posted_to_another_pledge_is_linked_not_copied(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    first = add_to_pledge(client, keys["collector"], 1, pledge_id=P1, stance="supports")
    second = add_to_pledge(client, keys["collector"], 1, pledge_id=P2, stance="undermines")
    assert (first.status_code, second.status_code) == (201, 200)
    evidence_id = first.json()["id"]
    assert second.json()["id"] == evidence_id
    assert [(link["pledge_id"], link["stance"]) for link in second.json()["links"]] == [
        (P1, "supports"),
        (P2, "undermines"),
    ]
    full = client.get(f"/api/v1/evidence/{evidence_id}").json()
    assert [link["pledge_id"] for link in full["links"]] == [P1, P2]
    assert [item["id"] for item in pledge_evidence(client, P2)["items"]] == [evidence_id]
    assert pledge_evidence(client, P2)["items"][0]["stance"] == "undermines"
    assert client.get(f"/api/v1/evidence/{evidence_id + 1}").status_code == 404


def test_posting_again_to_the_same_pledge_changes_nothing(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], stance="supports")
    before = pledge(client)
    again = add_to_pledge(client, keys["collector"], stance="undermines")
    assert again.status_code == 200
    assert again.json()["links"] == first.json()["links"]  # the first stance stays
    after = pledge(client)
    assert after["unreviewed_evidence_count"] == before["unreviewed_evidence_count"] == 1
    assert after["version"] == before["version"]


def test_add_to_unknown_pledge_is_404(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], pledge_id="no-such-pledge")
    problem(response, 404)
    assert client.get("/api/v1/evidence/1").status_code == 404


def test_add_needs_a_collector_key(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    anonymous = add_to_pledge(client, {})
    problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    problem(add_to_pledge(client, keys["viewer"]), 403)
    bogus = add_to_pledge(client, {"Authorization": "Bearer pw_not-a-key"})
    problem(bogus, 401)
    assert pledge_evidence(client)["items"] == []


def test_bad_stance_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    problem(add_to_pledge(client, keys["collector"], stance="maybe"), 422, "stance")
    missing = client.post(
        f"/api/v1/pledges/{P1}/evidence", json=evidence_body(), headers=keys["collector"]
    )
    problem(missing, 422, "stance")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_type", "blog"),
        ("reliability", "very"),
        ("url", "ftp://example.org/x"),
        ("url", "not a url"),
        ("url", "https://example.org:99999/x"),
        ("url", "https://example.org:port/x"),
        ("title", "   "),
        ("title", "x" * 1001),
        ("source_name", ""),
        ("published_at", "yesterday"),
        ("fetched_at", "2024-13-01T00:00:00Z"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    client: TestClient, keys: Keys, field: str, value: str
) -> None:
    make_pledge(client, keys)
    overrides: dict[str, Any] = {field: value}
    response = add_to_pledge(client, keys["collector"], **overrides)
    problem(response, 422, field)
    assert pledge_evidence(client)["items"] == []


def test_fetched_at_is_kept(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], fetched_at="2025-01-15T11:00:00+01:00")
    assert response.status_code == 201, response.text
    assert response.json()["fetched_at"] == "2025-01-15T10:00:00Z"


# --- dates against the clock ------------------------------------------------------------------


def test_published_in_the_future_is_422_naming_published_at(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], published_at="2025-01-16T12:00:00Z")
    body = problem(response, 422, "published_at")
    assert problem_fields(body) == ["published_at"]
    assert pledge_evidence(client)["items"] == []


def test_future_tolerance_is_a_few_minutes(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    near = add_to_pledge(client, keys["collector"], 1, published_at="2025-01-15T12:04:00Z")
    assert near.status_code == 201, near.text
    far = add_to_pledge(client, keys["collector"], 2, published_at="2025-01-15T12:06:00Z")
    problem(far, 422, "published_at")


def test_future_is_judged_by_the_service_clock(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    make_pledge(client, keys)
    problem(
        add_to_pledge(client, keys["collector"], published_at="2025-02-01T00:00:00Z"),
        422,
        "published_at",
    )
    clock.advance(timedelta(days=30))
    assert (
        add_to_pledge(client, keys["collector"], published_at="2025-02-01T00:00:00Z").status_code
        == 201
    )


def test_fetched_in_the_future_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], fetched_at="2026-01-01T00:00:00Z")
    problem(response, 422, "fetched_at")


def test_date_only_published_at_is_midnight_utc(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], published_at="2024-04-02")
    assert response.status_code == 201, response.text
    assert response.json()["published_at"] == "2024-04-02T00:00:00Z"
    listed = pledge_evidence(client)["items"][0]
    assert listed["published_at"] == "2024-04-02T00:00:00Z"


def test_date_only_today_is_accepted_and_tomorrow_is_not(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    today = add_to_pledge(client, keys["collector"], 1, published_at="2025-01-15")
    assert today.status_code == 201, today.text
    assert today.json()["published_at"] == "2025-01-15T00:00:00Z"
    tomorrow = add_to_pledge(client, keys["collector"], 2, published_at="2025-01-16")
    problem(tomorrow, 422, "published_at")


def test_date_only_is_the_same_item_as_its_midnight(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    first = add_to_pledge(client, keys["collector"], url=None, published_at="2024-04-02")
    again = add_to_pledge(
        client, keys["collector"], url=None, published_at="2024-04-02T00:00:00+00:00"
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


def test_offsets_are_converted_to_utc(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], published_at="2024-04-02T08:00:00-05:00")
    assert response.status_code == 201, response.text
    assert response.json()["published_at"] == "2024-04-02T13:00:00Z"


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1899-12-31"]
)
def test_out_of_range_datetimes_are_422(client: TestClient, keys: Keys, value: str) -> None:
    make_pledge(client, keys)
    response = add_to_pledge(client, keys["collector"], published_at=value)
    problem(response, 422, "published_at")


# --- POST /evidence (several links) -----------------------------------------------------------


def test_one_item_with_several_links_and_stances(client: TestClient, keys: Keys) -> None:
    for pid in (P1, P2, P3):
        make_pledge(client, keys, pid)
    body = multi(1, [(P1, "supports"), (P2, "undermines"), (P3, "context")])
    response = client.post("/api/v1/evidence", json=body, headers=keys["collector"])
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/api/v1/evidence/{created['id']}"
    assert [(link["pledge_id"], link["stance"], link["review"]) for link in created["links"]] == [
        (P1, "supports", "unreviewed"),
        (P2, "undermines", "unreviewed"),
        (P3, "context", "unreviewed"),
    ]
    for pid, stance in ((P1, "supports"), (P2, "undermines"), (P3, "context")):
        items = pledge_evidence(client, pid)["items"]
        assert [(item["id"], item["stance"]) for item in items] == [(created["id"], stance)]
        assert pledge(client, pid)["unreviewed_evidence_count"] == 1


def test_multi_link_by_analyst_starts_accepted(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    body = multi(1, [(P1, "supports"), (P2, "undermines")])
    response = client.post("/api/v1/evidence", json=body, headers=keys["analyst"])
    assert response.status_code == 201, response.text
    assert {link["review"] for link in response.json()["links"]} == {"accepted"}
    assert pledge(client, P1)["evidence_count"] == 1
    assert pledge(client, P2)["evidence_count"] == 1


def test_multi_link_with_an_unknown_pledge_is_422_naming_the_link(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys, P1)
    body = multi(1, [(P1, "supports"), ("no-such-pledge", "supports")])
    response = client.post("/api/v1/evidence", json=body, headers=keys["collector"])
    refused = problem(response, 422, "links[1].pledge_id")
    assert "no-such-pledge" in refused["errors"][0]["message"]
    # Nothing was stored: not the item, not the link to the pledge that does exist.
    assert pledge_evidence(client, P1)["items"] == []
    assert client.get("/api/v1/evidence/1").status_code == 404


def test_multi_link_naming_the_same_pledge_twice_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    body = multi(1, [(P1, "supports"), (P2, "supports"), (P1, "undermines")])
    response = client.post("/api/v1/evidence", json=body, headers=keys["collector"])
    problem(response, 422, "links[2].pledge_id")
    assert pledge_evidence(client, P1)["items"] == []


@pytest.mark.parametrize(
    ("links", "field"),
    [
        ([], "links"),
        ([{"pledge_id": P1}], "links[0].stance"),
        ([{"pledge_id": "Not A Slug", "stance": "supports"}], "links[0].pledge_id"),
        ([{"pledge_id": P1, "stance": "supports", "extra": 1}], "links[0].extra"),
    ],
)
def test_bad_links_are_422_naming_the_field(
    client: TestClient, keys: Keys, links: list[dict[str, Any]], field: str
) -> None:
    make_pledge(client, keys, P1)
    body = {**evidence_body(), "links": links}
    response = client.post("/api/v1/evidence", json=body, headers=keys["collector"])
    problem(response, 422, field)


def test_multi_link_adds_new_links_to_a_known_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    first = add_to_pledge(client, keys["collector"], pledge_id=P1)
    response = client.post(
        "/api/v1/evidence",
        json=multi(1, [(P1, "supports"), (P2, "supports")]),
        headers=keys["collector"],
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == first.json()["id"]
    assert [link["pledge_id"] for link in response.json()["links"]] == [P1, P2]
    assert pledge(client, P1)["unreviewed_evidence_count"] == 1
    assert pledge(client, P2)["unreviewed_evidence_count"] == 1


def test_multi_link_needs_a_collector(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = client.post(
        "/api/v1/evidence", json=multi(1, [(P1, "supports")]), headers=keys["viewer"]
    )
    problem(response, 403)


# --- POST /evidence/batch ---------------------------------------------------------------------


def batch(client: TestClient, headers: dict[str, str], items: list[Any]) -> Response:
    response: Response = client.post(
        "/api/v1/evidence/batch", json={"items": items}, headers=headers
    )
    return response


def test_batch_results_are_in_order_with_their_own_status(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    known = add_to_pledge(client, keys["collector"], 100).json()["id"]
    items: list[Any] = [
        multi(1, [(P1, "supports")]),
        multi(2, [(P1, "supports")], published_at="2024-02-30T00:00:00Z"),
        multi(100, [(P1, "supports")]),
        {**multi(3, [(P1, "supports")]), "colour": "blue"},
        multi(4, [(P1, "supports"), ("no-such-pledge", "undermines")]),
        multi(5, [(P1, "supports")], published_at="2030-01-01T00:00:00Z"),
        multi(6, [(P1, "undermines")]),
        {**multi(7, [(P1, "supports")]), "title": 42},
        multi(8, [(P1, "supports"), (P1, "supports")]),
    ]
    response = batch(client, keys["collector"], items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [201, 422, 200, 422, 422, 422, 201, 422, 422]
    expected_fields = {
        1: "published_at",
        3: "colour",
        4: "links[1].pledge_id",
        5: "published_at",
        7: "title",
        8: "links[1].pledge_id",
    }
    for index, field in expected_fields.items():
        item_problem = results[index]["problem"]
        assert item_problem is not None, results[index]
        assert field in problem_fields(item_problem), (index, item_problem)
        assert item_problem["title"] == "Invalid input"
        assert field in item_problem["detail"]
        assert results[index]["id"] is None
    assert results[2]["id"] == known
    assert results[0]["id"] not in (None, known)
    assert results[6]["id"] not in (None, known, results[0]["id"])
    assert results[0]["links"][0]["pledge_id"] == P1
    assert results[0]["problem"] is None
    # Only the three good items are linked; the bad ones left nothing behind.
    listed = {item["id"] for item in pledge_evidence(client)["items"]}
    assert listed == {known, results[0]["id"], results[6]["id"]}


@pytest.mark.parametrize("odd", ["not an object", 42, None, [1, 2]])
def test_batch_item_that_is_not_an_object_is_422_naming_it(
    client: TestClient, keys: Keys, odd: Any
) -> None:
    make_pledge(client, keys, P1)
    response = batch(client, keys["collector"], [multi(1, [(P1, "supports")]), odd])
    # The contract promises one result per item: the odd one gets its own 422.
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 422]
    assert results[1]["problem"]["errors"]
    assert len(pledge_evidence(client)["items"]) == 1


def test_batch_unknown_pledge_rejects_the_whole_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    response = batch(
        client, keys["collector"], [multi(1, [(P1, "supports"), ("ghost-pledge", "supports")])]
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == 422
    assert problem_fields(result["problem"]) == ["links[1].pledge_id"]
    assert pledge_evidence(client)["items"] == []


def test_batch_duplicates_collapse_to_one_item(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    items = [
        multi(1, [(P1, "supports")]),
        # same URL, normalised differently
        multi(2, [(P1, "supports")], url="HTTPS://news.example.org/items/1/?utm_source=x"),
        # same content, no URL
        multi(1, [(P2, "undermines")], url=None, title="  EVIDENCE item 1"),
        # the very same body again
        multi(1, [(P1, "supports")]),
    ]
    response = batch(client, keys["collector"], items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 200, 200, 200]
    ids = {r["id"] for r in results}
    assert len(ids) == 1
    (evidence_id,) = ids
    full = client.get(f"/api/v1/evidence/{evidence_id}").json()
    assert [(link["pledge_id"], link["stance"]) for link in full["links"]] == [
        (P1, "supports"),
        (P2, "undermines"),
    ]
    assert [link["pledge_id"] for link in results[2]["links"]] == [P2]
    assert pledge(client, P1)["unreviewed_evidence_count"] == 1
    assert pledge(client, P2)["unreviewed_evidence_count"] == 1
    assert client.get(f"/api/v1/evidence/{evidence_id + 1}").status_code == 404


def test_batch_of_a_thousand_items_in_one_request(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    items = [
        multi(n, [(P1, "supports"), (P2, "context")], source_name=f"Source {n % 7}")
        for n in range(1000)
    ]
    response = batch(client, keys["analyst"], items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1000
    assert [r["index"] for r in results] == list(range(1000))
    assert {r["status"] for r in results} == {201}
    assert len({r["id"] for r in results}) == 1000
    assert all([link["review"] for link in r["links"]] == ["accepted", "accepted"] for r in results)
    assert pledge(client, P1)["evidence_count"] == 1000
    assert pledge(client, P2)["evidence_count"] == 1000
    assert pledge(client, P1)["verification"] == "verified"

    # Sent again: every item is already known.
    again = batch(client, keys["analyst"], items)
    assert again.status_code == 200, again.text
    assert {r["status"] for r in again.json()["results"]} == {200}
    assert [r["id"] for r in again.json()["results"]] == [r["id"] for r in results]
    assert pledge(client, P1)["evidence_count"] == 1000


def test_batch_over_a_thousand_items_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    items = [multi(n, [(P1, "supports")], summary="") for n in range(1001)]
    response = batch(client, keys["collector"], items)
    problem(response, 422, "items")
    assert pledge_evidence(client)["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({}, "items"),
        ({"items": "x"}, "items"),
        ({"items": [evidence_body()], "extra": True}, "extra"),
    ],
)
def test_bad_batch_envelope_is_422(
    client: TestClient, keys: Keys, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/evidence/batch", json=body, headers=keys["collector"])
    problem(response, 422, field)


def test_batch_needs_a_collector(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    problem(batch(client, keys["viewer"], [multi(1, [(P1, "supports")])]), 403)
    problem(batch(client, {}, [multi(1, [(P1, "supports")])]), 401)
    assert pledge_evidence(client)["items"] == []


def test_batch_is_one_transaction(client: TestClient, keys: Keys) -> None:
    """Every pledge a batch touches moves to one and the same new version: one commit."""
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    make_pledge(client, keys, P3)
    before = {pid: pledge(client, pid)["version"] for pid in (P1, P2, P3)}
    items = [multi(n, [(P1 if n % 2 else P2, "supports")]) for n in range(20)]
    response = batch(client, keys["collector"], items)
    assert response.status_code == 200, response.text
    after = {pid: pledge(client, pid)["version"] for pid in (P1, P2, P3)}
    assert after[P1] == after[P2]
    assert after[P1] > max(before.values())
    assert after[P3] == before[P3]
    assert pledge(client, P1)["unreviewed_evidence_count"] == 10
    assert pledge(client, P2)["unreviewed_evidence_count"] == 10


def test_batch_of_only_invalid_items_changes_nothing(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    before = pledge(client)
    items = [
        multi(1, [(P1, "supports")], published_at="not a date"),
        multi(2, [("ghost", "supports")]),
    ]
    response = batch(client, keys["collector"], items)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [422, 422]
    assert pledge(client) == before


def test_batch_by_collector_starts_unreviewed(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    response = batch(client, keys["collector"], [multi(1, [(P1, "supports")])])
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == 201
    assert result["links"][0]["review"] == "unreviewed"
    assert result["links"][0]["linked_by"] == "key:collector"


# --- GET /evidence/{id} -----------------------------------------------------------------------


def test_get_evidence_with_all_its_links(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    created = client.post(
        "/api/v1/evidence",
        json=multi(1, [(P2, "undermines"), (P1, "supports")]),
        headers=keys["analyst"],
    ).json()
    response = client.get(f"/api/v1/evidence/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body == created
    assert {(link["pledge_id"], link["stance"]) for link in body["links"]} == {
        (P1, "supports"),
        (P2, "undermines"),
    }
    for link in body["links"]:
        assert link["review"] == "accepted"
        assert link["linked_by"] == "key:analyst"
        assert link["created_at"] == "2025-01-15T12:00:00Z"


def test_get_unknown_evidence_is_404(client: TestClient) -> None:
    problem(client.get("/api/v1/evidence/12345"), 404)
    problem(client.get("/api/v1/evidence/0"), 422, "evidence_id")
    problem(client.get("/api/v1/evidence/2147483648"), 422, "evidence_id")
    # Not a number: no route matches, as for any other unknown path.
    problem(client.get("/api/v1/evidence/abc"), 404)


# --- GET /pledges/{id}/evidence ---------------------------------------------------------------


def test_pledge_evidence_is_newest_published_first(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    dates = ["2024-03-01", "2024-06-01T10:00:00Z", "2023-12-01", "2024-06-01T09:00:00Z"]
    for n, published in enumerate(dates):
        assert (
            add_to_pledge(client, keys["collector"], n, published_at=published).status_code == 201
        )
    items = pledge_evidence(client)["items"]
    assert [item["published_at"] for item in items] == [
        "2024-06-01T10:00:00Z",
        "2024-06-01T09:00:00Z",
        "2024-03-01T00:00:00Z",
        "2023-12-01T00:00:00Z",
    ]
    assert {item["stance"] for item in items} == {"supports"}
    assert {item["review"] for item in items} == {"unreviewed"}
    assert pledge_evidence(client)["next_cursor"] is None


def test_pledge_evidence_pages_with_a_cursor(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    # Seven items, several sharing one published_at, so pages must break ties stably.
    dates = [
        "2024-01-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        "2024-03-01T12:30:00.250000Z",
        "2024-03-01T12:30:00.250000Z",
        "2024-04-01T00:00:00Z",
    ]
    ids = []
    for n, published in enumerate(dates):
        response = add_to_pledge(client, keys["collector"], n, published_at=published)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    full = pledge_evidence(client, limit=100)["items"]
    assert len(full) == 7
    for limit in (1, 2, 3, 7):
        paged = all_pages(client, f"/api/v1/pledges/{P1}/evidence", {}, limit)
        assert [item["id"] for item in paged] == [item["id"] for item in full]
    order = [item["published_at"] for item in full]
    assert order == sorted(order, reverse=True)
    assert sorted(item["id"] for item in full) == sorted(ids)
    first_page = pledge_evidence(client, limit=7)
    assert first_page["next_cursor"] is None


def test_pledge_evidence_of_unknown_pledge_is_404(client: TestClient) -> None:
    problem(client.get("/api/v1/pledges/no-such-pledge/evidence"), 404)


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "abc"},
        {"cursor": "WyJ4IiwxXQ"},  # ["x", 1]
        {"cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwieCJd"},  # [date, "x"]
        {"cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwxMDAwMDAwMDAwMDAwMDAwMDAwMDBd"},
        {"cursor": "WyI5OTk5LTEyLTMxVDIzOjU5OjU5LTE0OjAwIiwxXQ"},  # a date past UTC's end
        {"cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwxXQ"},  # a date without a zone
        {"limit": 0},
        {"limit": 501},
    ],
)
def test_bad_paging_of_pledge_evidence_is_422(
    client: TestClient, keys: Keys, params: dict[str, Any]
) -> None:
    make_pledge(client, keys)
    response = client.get(f"/api/v1/pledges/{P1}/evidence", params=params)
    problem(response, 422, next(iter(params)))


# --- review -----------------------------------------------------------------------------------


def review(client: TestClient, headers: dict[str, str], evidence_id: int, **body: Any) -> Response:
    response: Response = client.post(
        f"/api/v1/evidence/{evidence_id}/review", json=body, headers=headers
    )
    return response


def test_accept_a_link(client: TestClient, keys: Keys, clock: FrozenClock) -> None:
    make_pledge(client, keys)
    evidence_id = add_to_pledge(client, keys["collector"]).json()["id"]
    assert pledge(client)["unreviewed_evidence_count"] == 1
    assert pledge(client)["evidence_count"] == 0
    clock.advance(timedelta(hours=1))
    response = review(
        client, keys["analyst"], evidence_id, pledge_id=P1, review="accepted", note="Checked."
    )
    assert response.status_code == 200, response.text
    link = response.json()
    assert link["pledge_id"] == P1
    assert link["review"] == "accepted"
    assert link["review_note"] == "Checked."
    assert link["reviewed_by"] == "key:analyst"
    assert link["reviewed_at"] == "2025-01-15T13:00:00Z"
    assert link["linked_by"] == "key:collector"
    after = pledge(client)
    assert after["evidence_count"] == 1
    assert after["unreviewed_evidence_count"] == 0
    assert after["last_evidence_at"] == "2024-04-02T18:00:00Z"
    assert after["verification"] == "corroborated"
    stored = client.get(f"/api/v1/evidence/{evidence_id}").json()["links"][0]
    assert stored == link
    assert pledge_evidence(client)["items"][0]["review"] == "accepted"


def test_reject_a_link(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    evidence_id = add_to_pledge(client, keys["collector"]).json()["id"]
    response = review(client, keys["analyst"], evidence_id, pledge_id=P1, review="rejected")
    assert response.status_code == 200, response.text
    assert response.json()["review"] == "rejected"
    assert response.json()["review_note"] is None
    after = pledge(client)
    assert after["evidence_count"] == 0
    assert after["unreviewed_evidence_count"] == 0
    assert after["verification"] == "unverified"


def test_review_can_change_its_mind(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    evidence_id = add_to_pledge(client, keys["analyst"]).json()["id"]
    assert pledge(client)["evidence_count"] == 1
    rejected = review(client, keys["analyst"], evidence_id, pledge_id=P1, review="rejected")
    assert rejected.json()["review"] == "rejected"
    assert pledge(client)["evidence_count"] == 0
    assert pledge(client)["last_evidence_at"] is None
    accepted = review(client, keys["admin"], evidence_id, pledge_id=P1, review="accepted")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["reviewed_by"] == "key:admin"
    assert pledge(client)["evidence_count"] == 1
    # The same review twice changes nothing further.
    version = pledge(client)["version"]
    again = review(client, keys["admin"], evidence_id, pledge_id=P1, review="accepted")
    assert again.status_code == 200
    assert pledge(client)["evidence_count"] == 1
    assert pledge(client)["version"] == version


def test_review_only_touches_one_link(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    created = client.post(
        "/api/v1/evidence",
        json=multi(1, [(P1, "supports"), (P2, "supports")]),
        headers=keys["collector"],
    ).json()
    review(client, keys["analyst"], created["id"], pledge_id=P2, review="accepted")
    links = {
        link["pledge_id"]: link["review"]
        for link in client.get(f"/api/v1/evidence/{created['id']}").json()["links"]
    }
    assert links == {P1: "unreviewed", P2: "accepted"}
    assert pledge(client, P1)["evidence_count"] == 0
    assert pledge(client, P2)["evidence_count"] == 1


def test_review_needs_an_analyst(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    evidence_id = add_to_pledge(client, keys["collector"]).json()["id"]
    problem(review(client, keys["collector"], evidence_id, pledge_id=P1, review="accepted"), 403)
    problem(review(client, keys["viewer"], evidence_id, pledge_id=P1, review="accepted"), 403)
    problem(review(client, {}, evidence_id, pledge_id=P1, review="accepted"), 401)
    assert pledge(client)["unreviewed_evidence_count"] == 1


def test_review_of_an_unlinked_pledge_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    evidence_id = add_to_pledge(client, keys["collector"], pledge_id=P1).json()["id"]
    response = review(client, keys["analyst"], evidence_id, pledge_id=P2, review="accepted")
    problem(response, 422, "pledge_id")
    response = review(client, keys["analyst"], evidence_id, pledge_id="ghost", review="accepted")
    problem(response, 422, "pledge_id")
    assert pledge(client, P1)["unreviewed_evidence_count"] == 1


def test_review_of_unknown_evidence_is_404(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    problem(review(client, keys["analyst"], 999, pledge_id=P1, review="accepted"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pledge_id": P1, "review": "unreviewed"}, "review"),
        ({"pledge_id": P1, "review": "maybe"}, "review"),
        ({"pledge_id": P1}, "review"),
        ({"review": "accepted"}, "pledge_id"),
        ({"pledge_id": P1, "review": "accepted", "note": 5}, "note"),
        ({"pledge_id": P1, "review": "accepted", "extra": 5}, "extra"),
    ],
)
def test_bad_review_bodies_are_422(
    client: TestClient, keys: Keys, body: dict[str, Any], field: str
) -> None:
    make_pledge(client, keys)
    evidence_id = add_to_pledge(client, keys["collector"]).json()["id"]
    problem(review(client, keys["analyst"], evidence_id, **body), 422, field)


# --- GET /review-queue ------------------------------------------------------------------------


def test_collector_links_start_unreviewed_and_analyst_links_accepted(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    collected = add_to_pledge(client, keys["collector"], 1).json()
    analysed = add_to_pledge(client, keys["analyst"], 2).json()
    admin = add_to_pledge(client, keys["admin"], 3).json()
    assert collected["links"][0]["review"] == "unreviewed"
    assert analysed["links"][0]["review"] == "accepted"
    assert admin["links"][0]["review"] == "accepted"
    queue = client.get("/api/v1/review-queue", headers=keys["analyst"]).json()
    assert [item["evidence_id"] for item in queue["items"]] == [collected["id"]]
    assert pledge(client)["evidence_count"] == 2
    assert pledge(client)["unreviewed_evidence_count"] == 1


def test_review_queue_is_oldest_first_and_paginated(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    make_pledge(client, keys, P1)
    make_pledge(client, keys, P2)
    expected: list[tuple[int, str]] = []
    for n in range(5):
        # published_at goes backwards while the links are made forwards: the queue follows
        # the order links were made in, not the items' dates.
        pid = P1 if n % 2 == 0 else P2
        response = add_to_pledge(
            client,
            keys["collector"],
            n,
            pledge_id=pid,
            published_at=f"2024-0{9 - n}-01T00:00:00Z",
        )
        assert response.status_code == 201
        expected.append((response.json()["id"], pid))
        clock.advance(timedelta(minutes=5))
    first = client.get("/api/v1/review-queue", params={"limit": 2}, headers=keys["analyst"])
    assert first.status_code == 200, first.text
    assert len(first.json()["items"]) == 2
    assert first.json()["next_cursor"]
    items = all_pages(client, "/api/v1/review-queue", keys["analyst"], 2)
    assert [(item["evidence_id"], item["pledge_id"]) for item in items] == expected
    created = [item["created_at"] for item in items]
    assert created == sorted(created)
    assert items[0]["linked_by"] == "key:collector"
    assert items[0]["title"] == "Evidence item 0"
    assert items[0]["stance"] == "supports"

    review(client, keys["analyst"], expected[0][0], pledge_id=P1, review="accepted")
    review(client, keys["analyst"], expected[1][0], pledge_id=P2, review="rejected")
    remaining = all_pages(client, "/api/v1/review-queue", keys["analyst"], 50)
    assert [(item["evidence_id"], item["pledge_id"]) for item in remaining] == expected[2:]


def test_review_queue_is_for_analysts(client: TestClient, keys: Keys) -> None:
    problem(client.get("/api/v1/review-queue", headers=keys["collector"]), 403)
    problem(client.get("/api/v1/review-queue", headers=keys["viewer"]), 403)
    problem(client.get("/api/v1/review-queue"), 401)
    for role in ("analyst", "admin"):
        response = client.get("/api/v1/review-queue", headers=keys[role])
        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "cursor",
    # abc, ["x"], [1, 2], [true], [10**20], [-5]
    ["abc", "WyJ4Il0", "WzEsMl0", "W3RydWVd", "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMF0", "Wy01XQ"],
)
def test_review_queue_bad_cursor_is_422(client: TestClient, keys: Keys, cursor: str) -> None:
    response = client.get(
        "/api/v1/review-queue", params={"cursor": cursor}, headers=keys["analyst"]
    )
    problem(response, 422, "cursor")
