"""Bad input is never a 500: it is application/problem+json naming what was wrong.

And strings of any content that can be stored are stored and returned exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.factories import (
    PLEDGE_ID,
    Keys,
    evidence_body,
    make_pledge,
    pledge_body,
    problem,
)

P1 = PLEDGE_ID

LIMIT = 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}


def post_raw(
    client: TestClient, path: str, raw: bytes, headers: dict[str, str] | None = None
) -> Response:
    response: Response = client.post(path, content=raw, headers={**JSON_HEADERS, **(headers or {})})
    return response


def evidence_json(**overrides: Any) -> dict[str, Any]:
    return {**evidence_body(), "stance": "supports", **overrides}


# --- malformed JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{bad",
        b'{"title": "x",}',
        b'{"title": "unterminated',
        b'{"title": "x"} trailing',
        b"{'title': 'single quotes'}",
        b'{"title": "x" "summary": "y"}',
        b"\x00\x01\x02",
    ],
)
def test_malformed_json_is_400(client: TestClient, keys: Keys, raw: bytes) -> None:
    make_pledge(client, keys)
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    body = problem(response, 400, "body")
    assert body["title"] == "Malformed JSON"


@pytest.mark.parametrize("raw", [b'{"title": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000])
def test_undecodable_or_absurdly_nested_json_is_400(
    client: TestClient, keys: Keys, raw: bytes
) -> None:
    make_pledge(client, keys)
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    body = problem(response, 400, "body")
    assert body["title"] == "Malformed JSON"


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"42", b'"a string"'])
def test_a_body_that_is_not_an_object_is_422(client: TestClient, keys: Keys, raw: bytes) -> None:
    make_pledge(client, keys)
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    problem(response, 422, "body")


# --- wrong types, unknown fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", 123),
        ("title", ["a"]),
        ("title", {"a": 1}),
        ("title", True),
        ("title", None),
        ("summary", 1.5),
        ("url", 7),
        ("published_at", True),
        ("published_at", [2024, 4, 2]),
        ("published_at", {"year": 2024}),
        ("source_type", 3),
        ("reliability", None),
        ("stance", ["supports"]),
        ("content_hash", 12),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    client: TestClient, keys: Keys, field: str, value: Any
) -> None:
    make_pledge(client, keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_json(**{field: value}),
        headers=keys["collector"],
    )
    problem(response, 422, field)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"made_by": "US"}, "made_by"),
        ({"made_by": ["us"]}, "made_by[0]"),
        ({"topics": [1]}, "topics[0]"),
        ({"review_every_days": "thirty"}, "review_every_days"),
        ({"review_every_days": 1.5}, "review_every_days"),
        ({"review_every_days": 0}, "review_every_days"),
        ({"kind": "promise"}, "kind"),
        ({"source": "a string"}, "source"),
        ({"source": {"title": 5}}, "source.title"),
        ({"id": "Not A Slug"}, "id"),
    ],
)
def test_wrong_types_in_a_pledge_are_422_naming_the_field(
    client: TestClient, keys: Keys, overrides: dict[str, Any], field: str
) -> None:
    response = client.post(
        "/api/v1/pledges", json=pledge_body(**overrides), headers=keys["analyst"]
    )
    problem(response, 422, field)


def test_wrong_types_in_links_are_422_naming_the_field(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    for links, field in (
        ("x", "links"),
        ([1], "links[0]"),
        ([{"pledge_id": 5, "stance": "supports"}], "links[0].pledge_id"),
    ):
        response = client.post(
            "/api/v1/evidence", json={**evidence_body(), "links": links}, headers=keys["collector"]
        )
        problem(response, 422, field)


def test_every_bad_field_is_named(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    body = evidence_json(title=5, source_type="blog", published_at="soon")
    del body["source_name"]
    response = client.post(f"/api/v1/pledges/{P1}/evidence", json=body, headers=keys["collector"])
    found = problem(response, 422, "title", "source_type", "published_at", "source_name")
    assert all(error["message"] for error in found["errors"])


@pytest.mark.parametrize(
    ("path", "role", "body", "field"),
    [
        (f"/api/v1/pledges/{P1}/evidence", "collector", {**evidence_json(), "colour": 1}, "colour"),
        (
            "/api/v1/evidence",
            "collector",
            {**evidence_body(), "links": [{"pledge_id": P1, "stance": "supports"}], "x": 1},
            "x",
        ),
        (
            "/api/v1/evidence",
            "collector",
            {**evidence_body(), "links": [{"pledge_id": P1, "stance": "supports", "why": 1}]},
            "links[0].why",
        ),
        ("/api/v1/evidence/batch", "collector", {"items": [], "dry_run": True}, "dry_run"),
        ("/api/v1/pledges", "analyst", pledge_body(id="other-pledge", colour="red"), "colour"),
        (
            "/api/v1/pledges",
            "analyst",
            pledge_body(id="other-pledge", source={"title": "t", "pages": 3}),
            "source.pages",
        ),
        (
            f"/api/v1/pledges/{P1}/status",
            "analyst",
            {"status": "in_progress", "reason": "r", "urgent": True},
            "urgent",
        ),
    ],
)
def test_unknown_fields_on_writes_are_422(
    client: TestClient, keys: Keys, path: str, role: str, body: dict[str, Any], field: str
) -> None:
    make_pledge(client, keys)
    response = client.post(path, json=body, headers=keys[role])
    found = problem(response, 422, field)
    message = next(e["message"] for e in found["errors"] if e["field"] == field)
    assert "not a field" in message


def test_unknown_field_on_patch_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = client.patch(
        f"/api/v1/pledges/{P1}", json={"status": "kept"}, headers=keys["analyst"]
    )
    problem(response, 422, "status")
    assert client.get(f"/api/v1/pledges/{P1}").json()["status"] == "not_yet_rated"


def test_unknown_field_in_a_batch_item_is_its_own_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    item = {**evidence_body(), "links": [{"pledge_id": P1, "stance": "supports"}], "colour": 1}
    response = client.post(
        "/api/v1/evidence/batch", json={"items": [item]}, headers=keys["collector"]
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == 422
    assert [e["field"] for e in result["problem"]["errors"]] == ["colour"]


# --- impossible dates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "2024-02-30",
        "2023-02-29",
        "2024-04-31",
        "2024-13-01",
        "2024-00-10",
        "2024-02-30T10:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01T10:61:00Z",
        "2024-01-01T10:00:00+25:00",
        "0000-01-01",
        "24-01-01",
        "",
    ],
)
def test_impossible_published_at_is_422(client: TestClient, keys: Keys, value: str) -> None:
    make_pledge(client, keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_json(published_at=value),
        headers=keys["collector"],
    )
    problem(response, 422, "published_at")


@pytest.mark.parametrize("field", ["made_on", "due_on"])
@pytest.mark.parametrize("value", ["2024-02-30", "2023-02-29", "2023-11-31", "2023-1-1"])
def test_impossible_pledge_dates_are_422(
    client: TestClient, keys: Keys, field: str, value: str
) -> None:
    response = client.post(
        "/api/v1/pledges", json=pledge_body(**{field: value}), headers=keys["analyst"]
    )
    problem(response, 422, field)


def test_leap_day_is_possible(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_json(published_at="2024-02-29"),
        headers=keys["collector"],
    )
    assert response.status_code == 201, response.text
    assert response.json()["published_at"] == "2024-02-29T00:00:00Z"


def test_impossible_as_of_is_422(client: TestClient) -> None:
    response = client.get("/api/v1/status", params={"as_of": "2024-02-30"})
    problem(response, 422, "as_of")


# --- oversized bodies -------------------------------------------------------------------------


def _oversized(keys: Keys) -> bytes:
    return json.dumps(evidence_json(summary="x" * (LIMIT + 10))).encode()


def test_body_over_one_mib_with_content_length_is_413(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    raw = _oversized(keys)
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    body = problem(response, 413, "body")
    assert body["title"] == "Payload too large"
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []


def _chunks(raw: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def test_body_over_one_mib_streamed_without_content_length_is_413(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    raw = _oversized(keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        content=_chunks(raw),
        headers={**JSON_HEADERS, **keys["collector"]},
    )
    problem(response, 413, "body")
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []


def test_streamed_oversized_body_with_idempotency_key_is_413(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    raw = _oversized(keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        content=_chunks(raw),
        headers={**JSON_HEADERS, **keys["collector"], "Idempotency-Key": "big-1"},
    )
    problem(response, 413, "body")


def test_oversized_batch_is_413(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    item = {
        **evidence_body(summary="y" * 2000),
        "links": [{"pledge_id": P1, "stance": "supports"}],
    }
    items = [{**item, "title": f"item {n}"} for n in range(600)]
    raw = json.dumps({"items": items}).encode()
    assert len(raw) > LIMIT
    response = post_raw(client, "/api/v1/evidence/batch", raw, keys["collector"])
    problem(response, 413, "body")


def test_body_of_exactly_one_mib_is_accepted(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    raw = json.dumps(evidence_json()).encode()
    raw += b" " * (LIMIT - len(raw))  # JSON allows trailing whitespace
    assert len(raw) == LIMIT
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    assert response.status_code == 201, response.text
    streamed = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        content=_chunks(raw),
        headers={**JSON_HEADERS, **keys["collector"]},
    )
    assert streamed.status_code == 200, streamed.text


def test_small_streamed_body_works(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    raw = json.dumps(evidence_json()).encode()
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        content=_chunks(raw, 16),
        headers={**JSON_HEADERS, **keys["collector"]},
    )
    assert response.status_code == 201, response.text


# --- unknown ids, routes, methods -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "role", "body"),
    [
        ("GET", "/api/v1/pledges/no-such-pledge", None, None),
        ("GET", "/api/v1/pledges/no-such-pledge/evidence", None, None),
        ("GET", "/api/v1/pledges/no-such-pledge/history", None, None),
        ("PATCH", "/api/v1/pledges/no-such-pledge", "analyst", {"title": "x"}),
        ("POST", "/api/v1/pledges/no-such-pledge/evidence", "collector", evidence_json()),
        (
            "POST",
            "/api/v1/pledges/no-such-pledge/status",
            "analyst",
            {"status": "in_progress", "reason": "r"},
        ),
        ("GET", "/api/v1/evidence/987654", None, None),
        (
            "POST",
            "/api/v1/evidence/987654/review",
            "analyst",
            {"pledge_id": P1, "review": "accepted"},
        ),
    ],
)
def test_unknown_ids_are_404(
    client: TestClient,
    keys: Keys,
    method: str,
    path: str,
    role: str | None,
    body: dict[str, Any] | None,
) -> None:
    make_pledge(client, keys)
    headers = keys[role] if role else {}
    response = client.request(method, path, json=body, headers=headers)
    found = problem(response, 404)
    assert found["title"] == "Not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/nothing-here"),
        ("GET", "/api/v2/pledges"),
        ("POST", "/api/v1/nothing-here"),
        ("GET", "/no/such/page"),
        ("DELETE", "/api/v1/pledges/us-cn-test-pledge/evidence/extra"),
    ],
)
def test_unknown_route_is_404_problem(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    found = problem(response, 404)
    assert path in found["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/v1/evidence/1", {"GET"}),
        ("PUT", "/api/v1/pledges", {"GET", "POST"}),
        ("DELETE", f"/api/v1/pledges/{P1}", {"GET", "PATCH"}),
        ("GET", "/api/v1/evidence/batch", {"POST"}),
        ("PATCH", "/api/v1/evidence", {"POST"}),
        ("POST", "/api/v1/status", {"GET"}),
        ("GET", "/api/v1/evidence/1/review", {"POST"}),
    ],
)
def test_wrong_method_is_405_problem(
    client: TestClient, keys: Keys, method: str, path: str, allowed: set[str]
) -> None:
    response = client.request(method, path, headers=keys["admin"])
    found = problem(response, 405)
    assert found["title"] == "Method not allowed"
    listed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= listed
    assert method not in listed


# --- strings the databases cannot store -------------------------------------------------------


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800", "\\udfff", "\\udc00\\ud800"])
@pytest.mark.parametrize("field", ["title", "summary", "source_name", "url"])
def test_nul_and_lone_surrogates_are_422_naming_the_field(
    client: TestClient, keys: Keys, escape: str, field: str
) -> None:
    make_pledge(client, keys)
    body = evidence_json()
    marker = "@@MARK@@"
    body[field] = f"https://news.example.org/{marker}" if field == "url" else f"a{marker}b"
    raw = json.dumps(body).replace(marker, escape).encode()
    assert escape.encode() in raw
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    found = problem(response, 422, field)
    assert [e["field"] for e in found["errors"]] == [field]
    assert client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"] == []


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
def test_unstorable_characters_in_a_pledge_are_422(
    client: TestClient, keys: Keys, escape: str
) -> None:
    marker = "@@MARK@@"
    body = pledge_body(text=f"x{marker}", source={"title": f"t{marker}"})
    raw = json.dumps(body).replace(marker, escape).encode()
    response = post_raw(client, "/api/v1/pledges", raw, keys["analyst"])
    problem(response, 422, "text", "source.title")
    assert client.get(f"/api/v1/pledges/{P1}").status_code == 404


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
def test_unstorable_characters_in_a_batch_item_are_its_own_422(
    client: TestClient, keys: Keys, escape: str
) -> None:
    make_pledge(client, keys)
    marker = "@@MARK@@"
    items = [
        {**evidence_body(1), "links": [{"pledge_id": P1, "stance": "supports"}]},
        {**evidence_body(2, summary=marker), "links": [{"pledge_id": P1, "stance": "supports"}]},
    ]
    raw = json.dumps({"items": items}).replace(marker, escape).encode()
    response = post_raw(client, "/api/v1/evidence/batch", raw, keys["collector"])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 422]
    assert [e["field"] for e in results[1]["problem"]["errors"]] == ["summary"]


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
def test_unstorable_characters_in_a_field_name_are_never_a_500(
    client: TestClient, keys: Keys, escape: str
) -> None:
    make_pledge(client, keys)
    raw = json.dumps({**evidence_json(), "@@MARK@@": 1}).replace("@@MARK@@", escape).encode()
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    found = problem(response, 422)
    assert found["errors"]


def test_nul_in_a_query_parameter_is_422(client: TestClient) -> None:
    response = client.get("/api/v1/pledges", params={"q": "a\x00b"})
    problem(response, 422, "q")


def test_review_note_with_nul_is_422(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    created = client.post(
        f"/api/v1/pledges/{P1}/evidence", json=evidence_json(), headers=keys["collector"]
    ).json()
    raw = b'{"pledge_id": "' + P1.encode() + b'", "review": "accepted", "note": "a\\u0000"}'
    response = post_raw(client, f"/api/v1/evidence/{created['id']}/review", raw, keys["analyst"])
    problem(response, 422, "note")


# --- strings that can be stored come back exactly ---------------------------------------------

ODD_STRINGS = [
    "😀 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽",  # emoji, ZWJ sequences, variation selector, skin tone
    "\u200fשלום\u200e עולם",  # RTL text with direction marks
    "\u202eevil\u202c and \u2066isolate\u2069",  # bidi override and isolates
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffjoiner",
    "cafe\u0301 vs caf\u00e9",  # NFD and NFC must both survive as sent
    "control \x01\x07\x08\x1b\x7f\x9f chars",
    "noncharacters \ufffe\uffff \U0010ffff \U0001f9ff",
    "  leading and trailing spaces  ",
    "line1\r\nline2\n\tindented\rreturn",
    "<script>alert('x')</script> &amp; &lt;",
    "'; DROP TABLE evidence; -- \" \\ %s %(x)s {0} {{}} $1 ?",
    "literal \\u0000 and \\ud800 text",
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ligature Ⅻ",
    "Ελληνικά Русский 中文 日本語 한국어 हिन्दी ไทย",
]


@pytest.mark.parametrize("odd", ODD_STRINGS)
def test_odd_strings_in_evidence_are_stored_and_returned_exactly(
    client: TestClient, keys: Keys, odd: str
) -> None:
    make_pledge(client, keys)
    body = evidence_json(title=f"T {odd}", summary=odd, source_name=f"S {odd}"[:200])
    response = client.post(f"/api/v1/pledges/{P1}/evidence", json=body, headers=keys["collector"])
    assert response.status_code == 201, response.text
    for got in (response.json(), client.get(response.headers["location"]).json()):
        assert got["title"] == f"T {odd}"
        assert got["summary"] == odd
        assert got["source_name"] == f"S {odd}"[:200]
    listed = client.get(f"/api/v1/pledges/{P1}/evidence").json()["items"][0]
    assert listed["summary"] == odd


@pytest.mark.parametrize("odd", ODD_STRINGS)
def test_odd_strings_in_a_pledge_are_stored_and_returned_exactly(
    client: TestClient, keys: Keys, odd: str
) -> None:
    body = pledge_body(
        title=f"P {odd}",
        text=odd,
        venue=odd,
        verification_criteria=f"V {odd}",
        source={"title": f"S {odd}", "quote": odd, "publisher": odd},
    )
    response = client.post("/api/v1/pledges", json=body, headers=keys["analyst"])
    assert response.status_code == 201, response.text
    got = client.get(f"/api/v1/pledges/{P1}").json()
    assert got["title"] == f"P {odd}"
    assert got["text"] == odd
    assert got["venue"] == odd
    assert got["verification_criteria"] == f"V {odd}"
    assert got["source"]["quote"] == odd
    assert got["source"]["publisher"] == odd


def test_odd_strings_in_a_review_note_are_returned_exactly(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    created = client.post(
        f"/api/v1/pledges/{P1}/evidence", json=evidence_json(), headers=keys["collector"]
    ).json()
    note = "".join(ODD_STRINGS)
    response = client.post(
        f"/api/v1/evidence/{created['id']}/review",
        json={"pledge_id": P1, "review": "accepted", "note": note},
        headers=keys["analyst"],
    )
    assert response.status_code == 200, response.text
    assert response.json()["review_note"] == note
    links = client.get(f"/api/v1/evidence/{created['id']}").json()["links"]
    assert links[0]["review_note"] == note


def test_odd_strings_round_trip_as_raw_utf8(client: TestClient, keys: Keys) -> None:
    """Sent unescaped, as UTF-8 bytes, the strings still come back exactly."""
    make_pledge(client, keys)
    odd = "".join(ODD_STRINGS)
    raw = json.dumps(evidence_json(summary=odd), ensure_ascii=False).encode("utf-8")
    response = post_raw(client, f"/api/v1/pledges/{P1}/evidence", raw, keys["collector"])
    assert response.status_code == 201, response.text
    assert response.json()["summary"] == odd
    assert client.get(response.headers["location"]).json()["summary"] == odd


def test_very_long_strings_up_to_the_limits_are_kept(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    title = "🦜" * 1000  # 1,000 characters, 4,000 bytes
    summary = ("é\u0301👩‍👩‍👧 " * 3000)[:20_000]
    source_name = "名" * 200
    url = "https://news.example.org/" + "a" * (2048 - len("https://news.example.org/"))
    body = evidence_json(title=title, summary=summary, source_name=source_name, url=url)
    response = client.post(f"/api/v1/pledges/{P1}/evidence", json=body, headers=keys["collector"])
    assert response.status_code == 201, response.text
    got = client.get(response.headers["location"]).json()
    assert (got["title"], got["summary"], got["source_name"], got["url"]) == (
        title,
        summary,
        source_name,
        url,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "🦜" * 1001),
        ("summary", "x" * 20_001),
        ("source_name", "名" * 201),
        ("url", "https://news.example.org/" + "a" * 2048),
    ],
)
def test_strings_over_the_limits_are_422(
    client: TestClient, keys: Keys, field: str, value: str
) -> None:
    make_pledge(client, keys)
    response = client.post(
        f"/api/v1/pledges/{P1}/evidence",
        json=evidence_json(**{field: value}),
        headers=keys["collector"],
    )
    problem(response, 422, field)


def test_odd_strings_in_the_search_query_are_not_a_500(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    for odd in [*ODD_STRINGS, "%", "_", "\\", "'", '"', "*"]:
        response = client.get("/api/v1/pledges", params={"q": odd[:200]})
        assert response.status_code == 200, (odd, response.text)
        assert response.json()["items"] == []
