"""The status badge: a valid SVG whatever the title, coloured by status, cacheable with ETag.

Rendering is tested on its own (any string at all as a title); the route on both
databases.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from defusedxml.ElementTree import fromstring
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.status.badge import (
    LABEL_COLOURS,
    LABEL_MAX_WIDTH,
    STATUS_COLOURS,
    clean_text,
    render_badge,
    short_name,
    text_width,
)
from app.domain.status.service import STATUSES
from tests.factories import PLEDGE_ID, Keys, make_pledge, pledge_body, problem

SVG = "{http://www.w3.org/2000/svg}"
API = "/api/v1"
DRAWN = {"svg", "title", "rect", "path", "g", "text"}


def parse(svg: str | bytes) -> ElementTree.Element:
    root: ElementTree.Element = fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def local(element: ElementTree.Element) -> str:
    return element.tag.removeprefix(SVG)


def texts(root: ElementTree.Element) -> list[str]:
    return [element.text or "" for element in root.iter(f"{SVG}text")]


def title_of(root: ElementTree.Element) -> str:
    found = root.find(f"{SVG}title")
    assert found is not None
    return found.text or ""


def _luminance(colour: str) -> float:
    channels = [int(colour[index : index + 2], 16) / 255 for index in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# --- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_each_status_has_its_colour_and_its_words(status: str) -> None:
    root = parse(render_badge(pledge_id="p", title="US and China cooperate on AI", status=status))

    background = root.find(f"{SVG}rect")
    assert background is not None
    assert background.get("fill") == STATUS_COLOURS[status].background
    label_part = root.find(f"{SVG}path")
    assert label_part is not None
    assert label_part.get("fill") == LABEL_COLOURS.background
    assert texts(root) == ["US and China cooperate on AI", status.replace("_", " ")]
    assert title_of(root) == f"US and China cooperate on AI: {status.replace('_', ' ')}"
    assert root.get("role") == "img"
    assert root.get("aria-label") == title_of(root)
    assert {local(element) for element in root.iter()} <= DRAWN


def test_the_statuses_look_different_and_their_text_is_readable() -> None:
    backgrounds = [STATUS_COLOURS[status].background for status in STATUSES]
    assert len(set(backgrounds)) == len(STATUSES)
    assert LABEL_COLOURS.background not in backgrounds
    for colours in [LABEL_COLOURS, *STATUS_COLOURS.values()]:
        # WCAG AA for small text.
        assert contrast(colours.background, colours.text) >= 4.5, colours


def test_the_width_follows_the_text() -> None:
    narrow = parse(render_badge(pledge_id="p", title="Ill", status="kept"))
    wide = parse(render_badge(pledge_id="p", title="WWW MMM", status="kept"))
    longer_status = parse(render_badge(pledge_id="p", title="Ill", status="not_yet_rated"))
    assert int(narrow.get("width", "0")) < int(wide.get("width", "0"))
    assert int(narrow.get("width", "0")) < int(longer_status.get("width", "0"))
    for root in (narrow, wide, longer_status):
        width = int(root.get("width", "0"))
        assert root.get("viewBox") == f"0 0 {width} 20"
        label_text, status_text = root.iter(f"{SVG}text")
        # Each text is centred in its own part.
        assert float(label_text.get("x", "0")) < float(status_text.get("x", "0")) < width


def test_a_long_title_is_shortened_at_a_word_with_an_ellipsis() -> None:
    title = "Defense Secretary Lloyd Austin holds a call with China's defence minister"
    label = short_name(title, fallback="p")
    assert label.endswith("…")
    assert title.startswith(label.removesuffix("…"))
    assert not label.removesuffix("…").endswith(" ")
    assert title[len(label) - 1] == " ", "cut between words"
    assert text_width(label) <= LABEL_MAX_WIDTH
    root = parse(render_badge(pledge_id="p", title=title, status="stalled"))
    assert texts(root)[0] == label
    assert title_of(root) == f"{title}: stalled", "the full title stays in <title>"


def test_one_long_word_is_cut_inside_it() -> None:
    label = short_name("x" * 300, fallback="p")
    assert label == "x" * (len(label) - 1) + "…"
    assert text_width(label) <= LABEL_MAX_WIDTH


def test_a_title_with_nothing_to_show_falls_back_to_the_id() -> None:
    for title in ("", "   ", "\u200b\u202e\u2066", "\x00\x01"):
        assert short_name(title, fallback="cn-no-election-interference-2024") == (
            "cn-no-election-interference-2024"
        )


HOSTILE = [
    "<script>alert(1)</script>",
    "</text></g><script>alert(1)</script>",
    "&amp; &lt; & < > &#0; &unknown;",
    "\"double\" and 'single' quotes",
    "]]><![CDATA[x]]>",
    "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>&a;",
    "controls \x00\x01\x08\x0b\x0c\x1f\x7f\x85 end",
    "lone surrogates \ud800 and \udfff",
    "non-characters \ufffe\uffff",
    "emoji 👩\u200d👩\u200d👧\u200d👦 🚀 🇺🇸",
    "bidi \u202eevil\u202c \u2066isolated\u2069",
    "tabs\tnew\nlines\r\nand  spaces",
    "中文标题与美国的承诺 and עברית and العربية",
    "e\u0301 combining accents a\u0308",
    "x" * 5000,
]


@pytest.mark.parametrize("title", HOSTILE)
def test_any_title_makes_a_valid_badge_that_shows_it_as_text(title: str) -> None:
    svg = render_badge(pledge_id="hostile", title=title, status="broken")
    svg.encode("utf-8")  # nothing unencodable is left
    root = parse(svg)
    assert {local(element) for element in root.iter()} <= DRAWN, "no element comes from a title"
    label, status = texts(root)
    assert status == "broken"
    cleaned = clean_text(title)
    assert title_of(root).startswith(cleaned[:100].rstrip("…"))
    assert label.removesuffix("…") in cleaned or label == "hostile"
    assert "\ud800" not in title_of(root)
    assert "\u202e" not in label


@given(st.lists(st.integers(min_value=0, max_value=0x10FFFF).map(chr), max_size=80))
@settings(max_examples=300, deadline=None)
def test_every_string_makes_well_formed_xml(characters: list[str]) -> None:
    title = "".join(characters)
    root = parse(render_badge(pledge_id="p", title=title, status="in_progress").encode("utf-8"))
    assert len(texts(root)) == 2
    assert text_width(texts(root)[0]) <= LABEL_MAX_WIDTH


# --- the route --------------------------------------------------------------------------------


def test_the_badge_is_an_svg_with_an_etag(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)
    response = client.get(f"{API}/status/{PLEDGE_ID}/badge.svg")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    pledge = client.get(f"{API}/pledges/{PLEDGE_ID}").json()
    assert response.headers["etag"] == f'"badge1-{pledge["version"]}-not_yet_rated"'
    root = parse(response.content)
    assert texts(root) == ["A test pledge", "not yet rated"]


def test_a_matching_if_none_match_is_304_and_a_change_makes_a_new_etag(
    client: TestClient, keys: Keys
) -> None:
    make_pledge(client, keys)
    first = client.get(f"{API}/status/{PLEDGE_ID}/badge.svg")
    etag = first.headers["etag"]

    again = client.get(f"{API}/status/{PLEDGE_ID}/badge.svg", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    weak = client.get(
        f"{API}/status/{PLEDGE_ID}/badge.svg", headers={"If-None-Match": f'"x", W/{etag}'}
    )
    assert weak.status_code == 304

    changed = client.post(
        f"{API}/pledges/{PLEDGE_ID}/status",
        json={"status": "broken", "reason": "It did not happen."},
        headers=keys["analyst"],
    )
    assert changed.status_code == 201, changed.text
    after = client.get(f"{API}/status/{PLEDGE_ID}/badge.svg", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert after.headers["etag"] != etag
    assert after.headers["etag"].endswith('-broken"')
    root = parse(after.content)
    rect = root.find(f"{SVG}rect")
    assert rect is not None
    assert rect.get("fill") == STATUS_COLOURS["broken"].background
    assert texts(root)[1] == "broken"

    edited = client.patch(
        f"{API}/pledges/{PLEDGE_ID}", json={"title": "A renamed pledge"}, headers=keys["analyst"]
    )
    assert edited.status_code == 200, edited.text
    renamed = client.get(
        f"{API}/status/{PLEDGE_ID}/badge.svg", headers={"If-None-Match": after.headers["etag"]}
    )
    assert renamed.status_code == 200
    assert texts(parse(renamed.content))[0] == "A renamed pledge"


def test_a_hostile_title_is_escaped_in_the_served_badge(client: TestClient, keys: Keys) -> None:
    title = '</title><script>alert("x")</script> & 🚀 \u202e'
    created = client.post(
        f"{API}/pledges", json=pledge_body(id="hostile", title=title), headers=keys["analyst"]
    )
    assert created.status_code == 201, created.text
    response = client.get(f"{API}/status/hostile/badge.svg")
    assert response.status_code == 200
    assert b"<script" not in response.content
    root = parse(response.content)
    assert title_of(root) == clean_text(title) + ": not yet rated"


def test_an_unknown_pledge_is_a_404_problem(client: TestClient) -> None:
    body = problem(client.get(f"{API}/status/no-such-pledge/badge.svg"), 404)
    assert "no-such-pledge" in body["detail"]


def test_a_malformed_id_is_a_422_problem(client: TestClient) -> None:
    problem(client.get(f"{API}/status/Not_A_Slug/badge.svg"), 422, "pledge_id")
