"""API tests for /api/v1/pledges: create, read, list, edit. Real app, real databases."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.clock import FrozenClock
from tests.factories import PROBLEM, Keys, evidence_body, invalid_fields, pledge_body

API = "/api/v1"


def create(client: TestClient, keys: Keys, **overrides: Any) -> dict[str, Any]:
    response = client.post(f"{API}/pledges", json=pledge_body(**overrides), headers=keys["analyst"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def raw_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


# --- POST /pledges ------------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_derived_fields(
    client: TestClient, keys: Keys
) -> None:
    response = client.post(
        f"{API}/pledges",
        json=pledge_body(venue="Woodside, California", review_every_days=14),
        headers=keys["analyst"],
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == "/api/v1/pledges/us-cn-test-pledge"
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert body["id"] == "us-cn-test-pledge"
    assert body["title"] == "A test pledge"
    assert body["made_by"] == ["US", "CN"]
    assert body["made_to"] == ["US", "CN"]
    assert body["made_on"] == "2023-11-15"
    assert body["due_on"] == "2024-11-15"
    assert body["topics"] == ["narcotics"]
    assert body["venue"] == "Woodside, California"
    assert body["review_every_days"] == 14
    assert body["status"] == "not_yet_rated"
    assert when(body["status_since"]) == datetime(2023, 11, 15, tzinfo=UTC)
    assert body["verification"] == "unverified"
    assert body["evidence_count"] == 0
    assert body["last_evidence_at"] is None
    assert isinstance(body["version"], int)
    assert body["version"] >= 1
    assert when(body["created_at"]) == datetime(2025, 1, 15, 12, 0, tzinfo=UTC)

    location = client.get(response.headers["location"])
    assert location.status_code == 200
    assert location.json() == body


def test_create_applies_defaults(client: TestClient, keys: Keys) -> None:
    body = pledge_body()
    for optional in ("kind", "made_to", "topics", "due_on"):
        del body[optional]
    response = client.post(f"{API}/pledges", json=body, headers=keys["analyst"])

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["kind"] == "commitment"
    assert created["made_to"] == []
    assert created["topics"] == []
    assert created["due_on"] is None
    assert created["venue"] is None
    assert created["source"] is None
    assert created["review_every_days"] == 30


def test_admin_may_create(client: TestClient, keys: Keys) -> None:
    response = client.post(f"{API}/pledges", json=pledge_body(), headers=keys["admin"])
    assert response.status_code == 201, response.text


def test_id_is_made_from_the_title_when_absent(client: TestClient, keys: Keys) -> None:
    body = pledge_body(title="Xi & Biden: AI-risk talks — Café 2024!")
    del body["id"]

    first = client.post(f"{API}/pledges", json=body, headers=keys["analyst"])
    second = client.post(f"{API}/pledges", json=body, headers=keys["analyst"])

    assert first.status_code == 201, first.text
    assert first.json()["id"] == "xi-biden-ai-risk-talks-cafe-2024"
    assert first.headers["location"] == "/api/v1/pledges/xi-biden-ai-risk-talks-cafe-2024"
    # The same title again gets a fresh id rather than a conflict.
    assert second.status_code == 201, second.text
    assert second.json()["id"] == "xi-biden-ai-risk-talks-cafe-2024-2"
    assert client.get(f"{API}/pledges/xi-biden-ai-risk-talks-cafe-2024-2").status_code == 200


def test_id_from_a_title_without_latin_letters_is_still_a_slug(
    client: TestClient, keys: Keys
) -> None:
    body = pledge_body(title="中美元首会晤")
    del body["id"]

    response = client.post(f"{API}/pledges", json=body, headers=keys["analyst"])

    assert response.status_code == 201, response.text
    new_id = response.json()["id"]
    assert new_id
    assert all(ch.islower() or ch.isdigit() or ch == "-" for ch in new_id)
    assert client.get(f"{API}/pledges/{new_id}").json()["title"] == "中美元首会晤"


def test_create_with_an_existing_id_is_409_and_keeps_the_original(
    client: TestClient, keys: Keys
) -> None:
    create(client, keys)

    again = client.post(
        f"{API}/pledges", json=pledge_body(title="A different title"), headers=keys["analyst"]
    )

    assert again.status_code == 409, again.text
    assert again.headers["content-type"].startswith(PROBLEM)
    assert again.json()["status"] == 409
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["title"] == "A test pledge"


def test_create_without_a_key_is_401_with_www_authenticate(client: TestClient) -> None:
    response = client.post(f"{API}/pledges", json=pledge_body())

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith(PROBLEM)
    assert client.get(f"{API}/pledges/us-cn-test-pledge").status_code == 404


@pytest.mark.parametrize(
    "authorization", ["Bearer pw_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer "]
)
def test_create_with_an_unusable_key_is_401(client: TestClient, authorization: str) -> None:
    response = client.post(
        f"{API}/pledges", json=pledge_body(), headers={"Authorization": authorization}
    )

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("role", ["viewer", "collector"])
def test_create_with_too_low_a_role_is_403(client: TestClient, keys: Keys, role: str) -> None:
    response = client.post(f"{API}/pledges", json=pledge_body(), headers=keys[role])

    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert client.get(f"{API}/pledges/us-cn-test-pledge").status_code == 404


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"made_by": ["usa"]}, "made_by[0]"),
        ({"made_by": ["US", "C"]}, "made_by[1]"),
        ({"made_to": ["cn"]}, "made_to[0]"),
        ({"made_by": []}, "made_by"),
        ({"id": "Not_A_Slug"}, "id"),
        ({"id": "-leading-dash"}, "id"),
        ({"id": "trailing-dash-"}, "id"),
        ({"id": "has space"}, "id"),
        ({"made_on": "2025-01-16"}, "made_on"),
        ({"made_on": "2024-02-30"}, "made_on"),
        ({"made_on": "1066-10-14"}, "made_on"),
        ({"made_on": "2023-11-15", "due_on": "2023-11-14"}, "due_on"),
        ({"title": "nul \x00 inside"}, "title"),
        ({"text": "\x00"}, "text"),
        ({"title": ""}, "title"),
        ({"title": "   \t\n"}, "title"),
        ({"title": None}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"kind": "promise"}, "kind"),
        ({"topics": ["Not A Topic"]}, "topics[0]"),
        ({"topics": ["ai", "ai"]}, "topics"),
        ({"review_every_days": 0}, "review_every_days"),
        ({"review_every_days": "often"}, "review_every_days"),
        ({"source": {"url": "https://example.org"}}, "source.title"),
        ({"source": {"title": "Readout", "quote": "a\x00b"}}, "source.quote"),
    ],
)
def test_create_rejects_bad_input_with_422_naming_the_field(
    client: TestClient, keys: Keys, overrides: dict[str, Any], field: str
) -> None:
    response = client.post(f"{API}/pledges", json=pledge_body(**overrides), headers=keys["analyst"])

    assert field in invalid_fields(response)
    assert ids(client.get(f"{API}/pledges")) == []


def test_create_without_required_fields_names_each(client: TestClient, keys: Keys) -> None:
    response = client.post(f"{API}/pledges", json={"id": "bare"}, headers=keys["analyst"])

    assert set(invalid_fields(response)) >= {
        "title",
        "text",
        "made_by",
        "made_on",
        "verification_criteria",
    }


def test_create_with_malformed_json_is_400_not_500(client: TestClient, keys: Keys) -> None:
    response = client.post(
        f"{API}/pledges",
        content=b'{"title": "unterminated',
        headers={**keys["analyst"], "Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


def test_made_on_today_and_due_on_the_same_day_are_accepted(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    today = clock.now().date().isoformat()

    created = create(client, keys, made_on=today, due_on=today)

    assert created["made_on"] == today
    assert created["due_on"] == today


def test_made_on_is_judged_by_the_services_clock(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    refused = client.post(
        f"{API}/pledges", json=pledge_body(made_on="2025-03-01"), headers=keys["analyst"]
    )
    assert invalid_fields(refused) == ["made_on"]

    clock.set(datetime(2025, 3, 1, 0, 0, tzinfo=UTC))
    accepted = client.post(
        f"{API}/pledges",
        json=pledge_body(made_on="2025-03-01", due_on=None),
        headers=keys["analyst"],
    )
    assert accepted.status_code == 201, accepted.text


EXOTIC = {
    "emoji": "Pledge 🤝🇺🇸🇨🇳 — «kept»? 👩🏽‍💻",
    "rtl": "تعهد الطرفين \u202bמחויבות\u202c",
    "quotes": "He said \"no\" and 'maybe' and `never`",
    "backslashes": "C:\\path\\to\\file \\n is not a newline \\\\",
    "like wildcards": "100% of the_pledges",
    "markup": "<script>alert('x')</script> &amp; ${HOME} %s {0}",
    "whitespace": "  leading and trailing\ttabs\r\nand CRLF  ",
    "combining": "e\u0301 vs \u00e9; zero\u200bwidth; \ufeffBOM",
}


@pytest.mark.parametrize("name", sorted(EXOTIC))
def test_strings_are_stored_and_returned_exactly(client: TestClient, keys: Keys, name: str) -> None:
    value = EXOTIC[name]
    created = create(
        client,
        keys,
        title=value,
        text=value + " (text)",
        venue=value,
        verification_criteria=value,
        source={"title": value, "quote": value, "publisher": value},
    )

    fetched = client.get(f"{API}/pledges/us-cn-test-pledge").json()
    listed = client.get(f"{API}/pledges").json()["items"][0]
    status_row = client.get(f"{API}/status").json()["pledges"][0]
    for body in (created, fetched, listed):
        assert body["title"] == value
        assert body["text"] == value + " (text)"
        assert body["venue"] == value
        assert body["verification_criteria"] == value
        assert body["source"]["title"] == value
        assert body["source"]["quote"] == value
        assert body["source"]["publisher"] == value
    assert status_row["title"] == value


def test_exotic_strings_survive_a_patch(client: TestClient, keys: Keys) -> None:
    create(client, keys)
    value = EXOTIC["emoji"] + EXOTIC["rtl"] + EXOTIC["backslashes"]

    patched = client.patch(
        f"{API}/pledges/us-cn-test-pledge", json={"title": value}, headers=keys["analyst"]
    )

    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == value
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["title"] == value


# --- GET /pledges -------------------------------------------------------------------------------


@pytest.fixture
def catalogue(client: TestClient, keys: Keys) -> list[str]:
    """Four pledges that differ in every filterable way; one of them in_progress."""
    create(
        client,
        keys,
        id="alpha-narcotics",
        title="Counternarcotics working group",
        text="Regular meetings on fentanyl precursors.",
        kind="commitment",
        made_by=["US", "CN"],
        made_to=["US", "CN"],
        topics=["narcotics"],
    )
    create(
        client,
        keys,
        id="bravo-ai-talks",
        title="Talks on AI risk",
        text="Government talks on the risks of artificial intelligence.",
        kind="planned_engagement",
        made_by=["US"],
        made_to=["CN"],
        topics=["ai", "military"],
    )
    create(
        client,
        keys,
        id="charlie-elections",
        title="No interference in elections",
        text="Said 100% of the_time, with a backslash \\ here.",
        kind="commitment",
        made_by=["CN"],
        made_to=["US"],
        topics=["elections"],
    )
    create(
        client,
        keys,
        id="delta-russia-concern",
        title="Concern over support to Russia",
        text="Exports of dual-use goods.",
        kind="concern",
        made_by=["US"],
        made_to=["CN", "RU"],
        topics=["military", "trade"],
    )
    changed = client.post(
        f"{API}/pledges/bravo-ai-talks/status",
        json={"status": "in_progress", "reason": "First round of talks held."},
        headers=keys["analyst"],
    )
    assert changed.status_code == 201, changed.text
    return ["alpha-narcotics", "bravo-ai-talks", "charlie-elections", "delta-russia-concern"]


def test_list_returns_everything_in_id_order(client: TestClient, catalogue: list[str]) -> None:
    response = client.get(f"{API}/pledges")

    assert ids(response) == catalogue
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "in_progress"}, ["bravo-ai-talks"]),
        (
            {"status": "not_yet_rated"},
            ["alpha-narcotics", "charlie-elections", "delta-russia-concern"],
        ),
        ({"status": "kept"}, []),
        ({"kind": "commitment"}, ["alpha-narcotics", "charlie-elections"]),
        ({"kind": "planned_engagement"}, ["bravo-ai-talks"]),
        ({"kind": "concern"}, ["delta-russia-concern"]),
        ({"topic": "military"}, ["bravo-ai-talks", "delta-russia-concern"]),
        ({"topic": "narcotics"}, ["alpha-narcotics"]),
        ({"topic": "climate"}, []),
        ({"party": "RU"}, ["delta-russia-concern"]),
        (
            {"party": "CN"},
            ["alpha-narcotics", "bravo-ai-talks", "charlie-elections", "delta-russia-concern"],
        ),
        ({"party": "FR"}, []),
        ({"q": "fentanyl"}, ["alpha-narcotics"]),
        ({"q": "TALKS"}, ["bravo-ai-talks"]),
        ({"q": "russia-concern"}, ["delta-russia-concern"]),
        ({"q": "100%"}, ["charlie-elections"]),
        ({"q": "%"}, ["charlie-elections"]),
        ({"q": "the_time"}, ["charlie-elections"]),
        ({"q": "_"}, ["charlie-elections"]),
        ({"q": "\\"}, ["charlie-elections"]),
        ({"q": "no such words"}, []),
        ({"kind": "commitment", "party": "CN", "topic": "elections"}, ["charlie-elections"]),
        ({"status": "in_progress", "topic": "narcotics"}, []),
    ],
)
def test_list_filters(
    client: TestClient, catalogue: list[str], query: dict[str, str], expected: list[str]
) -> None:
    assert ids(client.get(f"{API}/pledges", params=query)) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"kind": "promise"}, "kind"),
        ({"party": "usa"}, "party"),
        ({"topic": "Not A Topic"}, "topic"),
        ({"q": "x" * 201}, "q"),
        ({"q": "nul\x00"}, "q"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_list_rejects_bad_query_parameters(
    client: TestClient, catalogue: list[str], query: dict[str, str], field: str
) -> None:
    assert field in invalid_fields(client.get(f"{API}/pledges", params=query))


@pytest.mark.parametrize("query", [{}, {"kind": "commitment"}, {"party": "CN"}])
def test_limit_1_walks_every_page(
    client: TestClient, catalogue: list[str], query: dict[str, str]
) -> None:
    everything = ids(client.get(f"{API}/pledges", params=query))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(catalogue) + 2):
        params = {**query, "limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"{API}/pledges", params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 1
        seen += ids(page)
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert cursor is None


def test_an_exact_last_page_has_no_next_cursor(client: TestClient, catalogue: list[str]) -> None:
    first = client.get(f"{API}/pledges", params={"limit": "2"}).json()
    assert [p["id"] for p in first["items"]] == catalogue[:2]
    assert first["next_cursor"] is not None

    second = client.get(
        f"{API}/pledges", params={"limit": "2", "cursor": first["next_cursor"]}
    ).json()
    assert [p["id"] for p in second["items"]] == catalogue[2:]
    assert second["next_cursor"] is None

    whole = client.get(f"{API}/pledges", params={"limit": "4"}).json()
    assert whole["next_cursor"] is None


def test_empty_list(client: TestClient) -> None:
    assert client.get(f"{API}/pledges").json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        "a",
        "x" * 1001,
        raw_cursor({"id": "alpha"}),
        raw_cursor(["alpha", "bravo"]),
        raw_cursor([None]),
        raw_cursor([True]),
        raw_cursor([1.5]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
    ],
)
def test_a_garbage_cursor_is_422_naming_cursor(
    client: TestClient, catalogue: list[str], cursor: str
) -> None:
    assert invalid_fields(client.get(f"{API}/pledges", params={"cursor": cursor})) == ["cursor"]


# --- GET /pledges/{id} --------------------------------------------------------------------------


def test_get_unknown_id_is_404_problem(client: TestClient) -> None:
    response = client.get(f"{API}/pledges/no-such-pledge")

    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == 404
    assert "no-such-pledge" in response.json()["detail"]


@pytest.mark.parametrize("bad_id", ["Not_A_Slug", "UPPER", "-dash", "x" * 101])
def test_get_with_an_impossible_id_is_refused_not_500(client: TestClient, bad_id: str) -> None:
    response = client.get(f"{API}/pledges/{bad_id}")

    assert invalid_fields(response) == ["pledge_id"]


def test_get_has_an_etag_and_honours_if_none_match(client: TestClient, keys: Keys) -> None:
    created = create(client, keys)

    first = client.get(f"{API}/pledges/us-cn-test-pledge")
    etag = first.headers["etag"]
    assert etag == f'"{created["version"]}"'

    not_modified = client.get(f"{API}/pledges/us-cn-test-pledge", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag

    weak = client.get(
        f"{API}/pledges/us-cn-test-pledge", headers={"If-None-Match": f'"999999", W/{etag}'}
    )
    assert weak.status_code == 304

    other = client.get(f"{API}/pledges/us-cn-test-pledge", headers={"If-None-Match": '"999999"'})
    assert other.status_code == 200
    assert other.json()["id"] == "us-cn-test-pledge"


def test_etag_changes_when_the_pledge_changes(client: TestClient, keys: Keys) -> None:
    create(client, keys)
    before = client.get(f"{API}/pledges/us-cn-test-pledge").headers["etag"]

    patched = client.patch(
        f"{API}/pledges/us-cn-test-pledge", json={"venue": "Beijing"}, headers=keys["analyst"]
    )
    assert patched.status_code == 200, patched.text

    after = client.get(f"{API}/pledges/us-cn-test-pledge", headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.headers["etag"] != before
    assert after.headers["etag"] == patched.headers["etag"]


def test_etag_changes_when_evidence_is_linked(client: TestClient, keys: Keys) -> None:
    create(client, keys)
    before = client.get(f"{API}/pledges/us-cn-test-pledge").headers["etag"]

    added = client.post(
        f"{API}/pledges/us-cn-test-pledge/evidence",
        json=evidence_body(stance="supports"),
        headers=keys["analyst"],
    )
    assert added.status_code == 201, added.text

    after = client.get(f"{API}/pledges/us-cn-test-pledge", headers={"If-None-Match": before})
    assert after.status_code == 200
    assert after.json()["evidence_count"] == 1


# --- PATCH /pledges/{id} ------------------------------------------------------------------------


def test_patch_changes_descriptive_fields_and_grows_the_version(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    created = create(client, keys)
    clock.set(datetime(2025, 1, 16, 9, 30, tzinfo=UTC))

    response = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={
            "title": "A better title",
            "text": "Reworded.",
            "kind": "planned_engagement",
            "made_by": ["CN"],
            "made_to": ["US", "RU"],
            "venue": "Lima",
            "topics": ["trade", "ai"],
            "source": {
                "title": "Readout",
                "url": "https://example.org/r",
                "published_on": "2023-11-16",
            },
            "verification_criteria": "New criteria.",
            "due_on": "2025-12-31",
            "review_every_days": 7,
        },
        headers=keys["analyst"],
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] > created["version"]
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert body["title"] == "A better title"
    assert body["text"] == "Reworded."
    assert body["kind"] == "planned_engagement"
    assert body["made_by"] == ["CN"]
    assert body["made_to"] == ["US", "RU"]
    assert body["venue"] == "Lima"
    assert body["topics"] == ["trade", "ai"]
    assert body["source"]["title"] == "Readout"
    assert body["source"]["published_on"] == "2023-11-16"
    assert body["verification_criteria"] == "New criteria."
    assert body["due_on"] == "2025-12-31"
    assert body["review_every_days"] == 7
    # Untouched and derived fields stay as they were.
    assert body["id"] == "us-cn-test-pledge"
    assert body["made_on"] == "2023-11-15"
    assert body["status"] == "not_yet_rated"
    assert body["created_at"] == created["created_at"]
    assert when(body["updated_at"]) == datetime(2025, 1, 16, 9, 30, tzinfo=UTC)

    fetched = client.get(f"{API}/pledges/us-cn-test-pledge").json()
    assert fetched == body
    assert ids(client.get(f"{API}/pledges", params={"party": "RU"})) == ["us-cn-test-pledge"]
    assert ids(client.get(f"{API}/pledges", params={"topic": "narcotics"})) == []


def test_patch_leaves_unmentioned_fields_alone(client: TestClient, keys: Keys) -> None:
    created = create(client, keys, venue="Woodside")

    response = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"title": "Only the title"},
        headers=keys["analyst"],
    )

    assert response.status_code == 200, response.text
    body = response.json()
    for field in ("text", "kind", "made_by", "made_to", "venue", "topics", "due_on"):
        assert body[field] == created[field], field


def test_patch_can_clear_optional_fields_with_null(client: TestClient, keys: Keys) -> None:
    create(client, keys, venue="Woodside", source={"title": "Readout"})

    response = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": None, "due_on": None, "source": None, "topics": None, "made_to": []},
        headers=keys["analyst"],
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["venue"] is None
    assert body["due_on"] is None
    assert body["source"] is None
    assert body["topics"] == []
    assert body["made_to"] == []
    assert body["made_by"] == ["US", "CN"]


def test_every_patch_grows_the_version(client: TestClient, keys: Keys) -> None:
    versions = [create(client, keys)["version"]]
    for venue in ("One", "Two", "Three"):
        response = client.patch(
            f"{API}/pledges/us-cn-test-pledge", json={"venue": venue}, headers=keys["analyst"]
        )
        assert response.status_code == 200, response.text
        versions.append(response.json()["version"])

    assert versions == sorted(set(versions))


def test_patch_if_match_stale_is_412_and_current_is_200(client: TestClient, keys: Keys) -> None:
    created = create(client, keys)
    stale = f'"{created["version"]}"'
    first = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": "First"},
        headers={**keys["analyst"], "If-Match": stale},
    )
    assert first.status_code == 200, first.text
    current = first.headers["etag"]

    refused = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": "Lost update"},
        headers={**keys["analyst"], "If-Match": stale},
    )
    assert refused.status_code == 412, refused.text
    assert refused.headers["content-type"].startswith(PROBLEM)
    assert refused.headers["etag"] == current
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["venue"] == "First"

    accepted = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": "Second"},
        headers={**keys["analyst"], "If-Match": current},
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["venue"] == "Second"


@pytest.mark.parametrize("if_match", ["*", 'W/"{v}"', '"1000000", "{v}"'])
def test_patch_if_match_accepts_star_weak_and_lists(
    client: TestClient, keys: Keys, if_match: str
) -> None:
    version = create(client, keys)["version"]

    response = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": "Anywhere"},
        headers={**keys["analyst"], "If-Match": if_match.format(v=version)},
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("if_match", ['"not-a-version"', "garbage", '""'])
def test_patch_with_an_unmatchable_if_match_is_412(
    client: TestClient, keys: Keys, if_match: str
) -> None:
    create(client, keys)

    response = client.patch(
        f"{API}/pledges/us-cn-test-pledge",
        json={"venue": "Anywhere"},
        headers={**keys["analyst"], "If-Match": if_match},
    )

    assert response.status_code == 412, response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"status": "kept"}, "status"),
        ({"version": 99}, "version"),
        ({"id": "renamed"}, "id"),
        ({"made_on": "2020-01-01"}, "made_on"),
        ({"title": None}, "title"),
        ({"text": None}, "text"),
        ({"kind": None}, "kind"),
        ({"made_by": None}, "made_by"),
        ({"verification_criteria": None}, "verification_criteria"),
        ({"review_every_days": None}, "review_every_days"),
        ({"title": ""}, "title"),
        ({"title": "nul\x00"}, "title"),
        ({"made_by": ["usa"]}, "made_by[0]"),
        ({"made_by": []}, "made_by"),
        ({"due_on": "2023-11-14"}, "due_on"),
        ({"topics": ["ai", "ai"]}, "topics"),
    ],
)
def test_patch_rejects_bad_input_with_422_and_changes_nothing(
    client: TestClient, keys: Keys, body: dict[str, Any], field: str
) -> None:
    created = create(client, keys)

    response = client.patch(f"{API}/pledges/us-cn-test-pledge", json=body, headers=keys["analyst"])

    assert field in invalid_fields(response)
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json() == created


def test_patch_unknown_pledge_is_404(client: TestClient, keys: Keys) -> None:
    response = client.patch(
        f"{API}/pledges/no-such-pledge", json={"venue": "x"}, headers=keys["analyst"]
    )

    assert response.status_code == 404, response.text


def test_patch_needs_an_analyst(client: TestClient, keys: Keys) -> None:
    create(client, keys)

    anonymous = client.patch(f"{API}/pledges/us-cn-test-pledge", json={"venue": "x"})
    collector = client.patch(
        f"{API}/pledges/us-cn-test-pledge", json={"venue": "x"}, headers=keys["collector"]
    )

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert collector.status_code == 403
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["venue"] is None


# --- Idempotency-Key on POST /pledges -------------------------------------------------------------


def test_a_retried_create_with_the_same_idempotency_key_makes_one_pledge(
    client: TestClient, keys: Keys
) -> None:
    body = pledge_body(title="Retried pledge")
    del body["id"]
    headers = {**keys["analyst"], "Idempotency-Key": "create-retried-pledge-1"}

    first = client.post(f"{API}/pledges", json=body, headers=headers)
    retry = client.post(f"{API}/pledges", json=body, headers=headers)

    assert first.status_code == 201, first.text
    assert retry.status_code == 201, retry.text
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    assert ids(client.get(f"{API}/pledges")) == ["retried-pledge"]

    other_body = client.post(
        f"{API}/pledges", json={**body, "title": "Something else"}, headers=headers
    )
    assert other_body.status_code == 422, other_body.text
    assert ids(client.get(f"{API}/pledges")) == ["retried-pledge"]


# --- overdue ------------------------------------------------------------------------------------


def test_overdue_counts_from_made_on_then_from_the_latest_accepted_evidence(
    client: TestClient, keys: Keys, clock: FrozenClock
) -> None:
    create(client, keys, made_on="2025-01-01", due_on=None, review_every_days=10)
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["overdue"] is True

    added = client.post(
        f"{API}/pledges/us-cn-test-pledge/evidence",
        json=evidence_body(published_at="2025-01-10T00:00:00Z", stance="context"),
        headers=keys["analyst"],
    )
    assert added.status_code == 201, added.text
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["overdue"] is False

    clock.set(datetime(2025, 1, 21, 12, 0, tzinfo=UTC))
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["overdue"] is True
    assert client.get(f"{API}/status").json()["pledges"][0]["overdue"] is True


def test_a_final_verdict_is_never_overdue(client: TestClient, keys: Keys) -> None:
    create(client, keys)
    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["overdue"] is True

    kept = client.post(
        f"{API}/pledges/us-cn-test-pledge/status",
        json={"status": "kept", "reason": "Done."},
        headers=keys["analyst"],
    )
    assert kept.status_code == 201, kept.text

    assert client.get(f"{API}/pledges/us-cn-test-pledge").json()["overdue"] is False
