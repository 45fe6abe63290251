"""Reading feeds: RSS 2.0 and Atom, JSON by mapping, CSV series, and every way a feed can be bad.

The sample feeds live in tests/collectors/feeds/ so the collector's own tests can serve them too.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.collectors.feeds import (
    SUMMARY_MAX,
    TITLE_MAX,
    XML_MAX_DEPTH,
    FeedError,
    FeedItem,
    parse_feed,
    read_feed,
)

FEEDS = Path(__file__).parent / "feeds"
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
HEX64 = re.compile(r"^[0-9a-f]{64}$")

JSON_MAPPING: dict[str, Any] = {
    "items": "data.results.items",
    "title": "headline",
    "url": "links.canonical",
    "summary": "body.text",
    "published_at": "dates.issued",
}
CSV_MAPPING: dict[str, Any] = {"date": "date", "value": "soybean_purchases_mt"}


def feed(name: str) -> bytes:
    return (FEEDS / name).read_bytes()


def by_title(items: list[FeedItem]) -> dict[str, FeedItem]:
    return {item.title: item for item in items}


def rss(items_xml: str, *, channel_link: str = "https://example.gov/") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>T</title>'
        f"<link>{channel_link}</link><description>D</description>{items_xml}</channel></rss>"
    ).encode()


def assert_well_formed(item: FeedItem, now: datetime = NOW) -> None:
    """What every item must be, whatever the feed: storable, dated no later than now, hashed."""
    assert item.title.strip()
    assert len(item.title) <= TITLE_MAX
    assert len(item.summary) <= SUMMARY_MAX
    for text in (item.title, item.summary, item.url or ""):
        assert "\x00" not in text
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
    assert item.published_at.tzinfo is UTC
    assert item.published_at <= now
    assert HEX64.match(item.content_hash)
    assert item.url is None or item.url.startswith(("http://", "https://"))


# --- RSS 2.0 -----------------------------------------------------------------------------------


def test_rss2_items_are_read_with_text_link_and_utc_date() -> None:
    items = by_title(parse_feed("rss", feed("rss2.xml"), None, now=NOW))

    tariff = items["Tariff exclusions extended for solar components"]
    # The link as published (normalising it for identity is the evidence service's job).
    assert tariff.url == (
        "https://commerce.example.gov/news/2024/05/tariff-exclusions?utm_source=rss"
    )
    # HTML markup and entities in the description become plain text.
    assert tariff.summary == "The Office extended 77 exclusions & reviewed others."
    # -0400 is converted to UTC.
    assert tariff.published_at == datetime(2024, 5, 14, 13, 30, tzinfo=UTC)
    assert tariff.observed_value is None
    assert tariff.target_met is None
    for item in items.values():
        assert_well_formed(item)


def test_rss2_relative_link_is_resolved_against_the_channel_link() -> None:
    items = by_title(parse_feed("rss", feed("rss2.xml"), None, now=NOW))
    working_group = items["Fentanyl precursor controls: joint working group meets"]
    assert working_group.url == "https://commerce.example.gov/news/2024/01/working-group"


def test_rss2_future_date_is_clamped_to_now() -> None:
    items = by_title(parse_feed("rss", feed("rss2.xml"), None, now=NOW))
    assert items["Scheduled: trade talks next year"].published_at == NOW


def test_rss2_undated_item_is_skipped_but_counted_as_seen() -> None:
    result = read_feed("rss", feed("rss2.xml"), None, now=NOW)
    titles = {item.title for item in result.items}
    assert "An item without any date" not in titles
    assert result.seen == 5
    assert len(result.items) == 4


def test_rss2_item_without_title_takes_its_title_from_the_description() -> None:
    items = parse_feed("rss", feed("rss2.xml"), None, now=NOW)
    untitled = next(item for item in items if item.url and item.url.endswith("/untitled"))
    assert untitled.title == "Only a description, no title: the title is made from it."


def test_rss_item_with_neither_title_nor_text_is_skipped() -> None:
    body = rss(
        "<item><link>https://example.gov/empty</link>"
        "<pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item>"
    )
    result = read_feed("rss", body, None, now=NOW)
    assert result.items == []
    assert result.seen == 1


def test_link_that_is_not_http_becomes_none() -> None:
    body = rss(
        "<item><title>A</title><link>javascript:alert(1)</link>"
        "<pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item>",
        channel_link="not a url",
    )
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.url is None


def test_script_content_is_not_part_of_the_summary() -> None:
    body = rss(
        "<item><title>A</title><description>&lt;script&gt;evil()&lt;/script&gt;Plain words"
        "</description><pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item>"
    )
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.summary == "Plain words"


def test_overlong_title_and_summary_are_shortened_to_what_evidence_accepts() -> None:
    long_title = "word " * 400
    long_summary = "text " * 5000
    body = rss(
        f"<item><title>{long_title}</title><description>{long_summary}</description>"
        "<pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item>"
    )
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert len(item.title) <= TITLE_MAX
    assert len(item.summary) <= SUMMARY_MAX
    assert item.title.endswith("…")


def test_dates_before_1900_are_not_dates() -> None:
    body = rss(
        "<item><title>Epoch zero placeholder</title>"
        "<pubDate>Mon, 01 Jan 1800 00:00:00 GMT</pubDate></item>"
    )
    assert parse_feed("rss", body, None, now=NOW) == []


def test_blank_lines_before_the_xml_declaration_are_tolerated() -> None:
    body = b"\n\r\n  " + rss(
        "<item><title>A</title><pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item>"
    )
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.title == "A"


def test_gb2312_feed_is_transcoded_before_parsing() -> None:
    # expat cannot read multi-byte encodings itself; Chinese government feeds use them.
    body = (
        '<?xml version="1.0" encoding="gb2312"?><rss version="2.0"><channel><title>商务部</title>'
        "<link>https://www.mofcom.example.cn/</link><description>新闻</description>"
        "<item><title>中美经贸磋商</title><link>https://www.mofcom.example.cn/a/1.html</link>"
        "<pubDate>Wed, 01 May 2024 08:00:00 +0800</pubDate></item></channel></rss>"
    ).encode("gb2312")
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.title == "中美经贸磋商"
    assert item.published_at == datetime(2024, 5, 1, 0, 0, tzinfo=UTC)


def test_windows_1252_feed_is_read() -> None:
    body = (
        '<?xml version="1.0" encoding="windows-1252"?><rss version="2.0"><channel><title>T</title>'
        "<item><title>Caf\xe9 \u201ctalks\u201d</title>"
        "<pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item></channel></rss>"
    ).encode("cp1252")
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.title == "Café “talks”"


# --- Atom --------------------------------------------------------------------------------------


def test_atom_entries_are_read() -> None:
    items = by_title(parse_feed("rss", feed("atom.xml"), None, now=NOW))
    assert set(items) == {
        "Biden & Xi hold first call since Woodside summit",
        "Military-to-military talks resume",
    }
    call = items["Biden & Xi hold first call since Woodside summit"]
    assert call.url == "https://wire.example.org/2024/04/02/biden-xi-call"
    assert call.summary == "The two leaders spoke by phone on 2 April 2024."
    # published wins over updated, and +02:00 becomes UTC.
    assert call.published_at == datetime(2024, 4, 2, 16, 0, tzinfo=UTC)
    for item in items.values():
        assert_well_formed(item)


def test_atom_entry_without_summary_uses_its_content_and_updated_date() -> None:
    items = by_title(parse_feed("rss", feed("atom.xml"), None, now=NOW))
    talks = items["Military-to-military talks resume"]
    assert talks.summary == "Defense chiefs spoke by video call."
    assert talks.published_at == datetime(2024, 4, 16, 12, 0, tzinfo=UTC)


# --- content hash ------------------------------------------------------------------------------


def test_the_same_feed_gives_the_same_hashes_on_every_run_even_when_clamped() -> None:
    first = parse_feed("rss", feed("rss2.xml"), None, now=NOW)
    later = parse_feed("rss", feed("rss2.xml"), None, now=NOW + timedelta(days=3))
    assert [item.content_hash for item in first] == [item.content_hash for item in later]
    # The clamped item moved with now, but its hash did not.
    assert {item.published_at for item in first} != {item.published_at for item in later}


def test_hashes_differ_between_items_and_change_with_the_text() -> None:
    items = parse_feed("rss", feed("rss2.xml"), None, now=NOW)
    assert len({item.content_hash for item in items}) == len(items)
    edited = feed("rss2.xml").replace(b"extended 77 exclusions", b"extended 78 exclusions")
    before = by_title(items)["Tariff exclusions extended for solar components"]
    after = by_title(parse_feed("rss", edited, None, now=NOW))[
        "Tariff exclusions extended for solar components"
    ]
    assert before.content_hash != after.content_hash


# --- XML that must be refused ------------------------------------------------------------------


def test_billion_laughs_is_refused_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(FeedError, match="declares an entity"):
        parse_feed("rss", feed("billion_laughs.xml"), None, now=NOW)
    assert time.perf_counter() - started < 1.0


def test_external_entity_is_refused() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<rss version="2.0"><channel><title>&xxe;</title></channel></rss>'
    )
    with pytest.raises(FeedError, match="declares an entity"):
        parse_feed("rss", body, None, now=NOW)


def test_a_harmless_doctype_is_accepted() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"'
        b' "http://my.netscape.com/publish/formats/rss-0.91.dtd">'
        b'<rss version="0.91"><channel><title>T</title><item><title>Old but fine</title>'
        b"<pubDate>Wed, 01 May 2024 08:00:00 GMT</pubDate></item></channel></rss>"
    )
    (item,) = parse_feed("rss", body, None, now=NOW)
    assert item.title == "Old but fine"


def test_malformed_xml_names_line_and_reason() -> None:
    with pytest.raises(FeedError, match=r"^malformed XML at line 3, column \d+: not well-formed"):
        parse_feed("rss", feed("malformed.xml"), None, now=NOW)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "malformed XML at line 1"),
        (b"   ", "malformed XML at line 1"),
        (b"<rss><channel>", "malformed XML"),
        (
            b"<html><body>Not a feed</body></html>",
            "not an RSS or Atom feed: its root element is <html>",
        ),
        (b'<?xml version="1.0" encoding="x-no-such-codec"?><rss/>', "unknown encoding"),
        (b'<?xml version="1.0" encoding="zlib"?><rss/>', "not a text encoding"),
        (b'<?xml version="1.0" encoding="gb2312"?><rss>\xff\xff</rss>', "not valid gb2312"),
        (b"/etc/passwd", "malformed XML"),
    ],
)
def test_bad_xml_is_a_feed_error(body: bytes, message: str) -> None:
    with pytest.raises(FeedError, match=re.escape(message)):
        parse_feed("rss", body, None, now=NOW)


def test_a_file_name_as_body_is_not_opened() -> None:
    # feedparser opens a bytes argument as a file if it can; the body must only ever be data.
    existing = str(FEEDS / "rss2.xml").encode()
    with pytest.raises(FeedError):
        parse_feed("rss", existing, None, now=NOW)


def test_deeply_nested_xml_is_refused_fast() -> None:
    depth = 100_000
    body = b'<rss version="2.0">' + b"<a>" * depth + b"</a>" * depth + b"</rss>"
    started = time.perf_counter()
    with pytest.raises(FeedError, match=f"more than {XML_MAX_DEPTH} deep"):
        parse_feed("rss", body, None, now=NOW)
    assert time.perf_counter() - started < 1.0


# --- JSON --------------------------------------------------------------------------------------


def test_json_items_are_read_from_a_nested_path() -> None:
    result = read_feed("json", feed("nested_items.json"), JSON_MAPPING, now=NOW)
    items = by_title(result.items)
    # Four entries: one has no date, one is not an object; both are seen, neither is an item.
    assert result.seen == 4
    assert set(items) == {"Soybean purchases reach 12 million tonnes", "Monthly trade balance"}

    soy = items["Soybean purchases reach 12 million tonnes"]
    assert soy.url == "https://stats.example.gov/releases/soy-2024-03"
    assert soy.summary == "Cumulative purchases since January."
    assert soy.published_at == datetime(2024, 3, 28, 10, 0, tzinfo=UTC)

    balance = items["Monthly trade balance"]
    assert balance.url is None  # "not a web address"
    assert balance.published_at == datetime(2024, 4, 1, 0, 0, tzinfo=UTC)  # epoch seconds
    for item in result.items:
        assert_well_formed(item)


def test_json_top_level_list_and_optional_fields() -> None:
    body = json.dumps(
        [
            {"t": "Epoch milliseconds", "d": 1711929600000},
            {"t": "Date only", "d": "2024-03-01"},
            {"t": "RFC 2822", "d": "Fri, 01 Mar 2024 10:00:00 +0100"},
            {"t": "Future", "d": "2031-01-01T00:00:00Z"},
            {"t": 42, "d": "2024-03-02"},
            {"t": "Bad date", "d": "sometime soon"},
            {"t": "Boolean date", "d": True},
            {"t": {"nested": "object"}, "d": "2024-03-03"},
        ]
    ).encode()
    result = read_feed("json", body, {"items": "", "title": "t", "published_at": "d"}, now=NOW)
    items = by_title(result.items)
    assert result.seen == 8
    assert items["Epoch milliseconds"].published_at == datetime(2024, 4, 1, tzinfo=UTC)
    assert items["Date only"].published_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert items["RFC 2822"].published_at == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert items["Future"].published_at == NOW
    assert "42" in items  # a number as a title is written out
    assert "Bad date" not in items
    assert "Boolean date" not in items
    assert len(result.items) == 5  # the object title has no text to stand in for it
    for item in result.items:
        assert item.url is None
        assert item.summary == ""
        assert_well_formed(item)


def test_json_path_can_index_into_lists() -> None:
    body = json.dumps(
        {"pages": [{"entries": [{"h": {"text": "First"}, "d": "2024-01-01"}]}]}
    ).encode()
    mapping = {"items": "pages.0.entries", "title": "h.text", "published_at": "d"}
    (item,) = parse_feed("json", body, mapping, now=NOW)
    assert item.title == "First"


def test_json_strings_are_cleaned_of_unstorable_characters() -> None:
    body = b'[{"t": "Nul\\u0000 and lone \\ud800 surrogate", "d": "2024-01-01"}]'
    (item,) = parse_feed("json", body, {"items": "", "title": "t", "published_at": "d"}, now=NOW)
    assert item.title == "Nul and lone surrogate"


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(FeedError, match=r"^malformed JSON at line 4, column 1: Expecting ','"):
        parse_feed("json", feed("malformed.json"), JSON_MAPPING, now=NOW)


@pytest.mark.parametrize(
    ("body", "mapping", "message"),
    [
        (b"", JSON_MAPPING, "malformed JSON at line 1, column 1"),
        (b"\xff\xfe\x00", JSON_MAPPING, "not UTF-8"),
        (b'{"data": {}}', JSON_MAPPING, "nothing at 'data.results.items'"),
        (b'{"data": {"results": {"items": {"a": 1}}}}', JSON_MAPPING, "an object at"),
        (b'{"a": 1}', {"items": "", "title": "t", "published_at": "d"}, "at the top level"),
        (b"[" * 100_000 + b"]" * 100_000, JSON_MAPPING, "nests"),
        (b"1" * 5000, JSON_MAPPING, "cannot be read"),
    ],
)
def test_bad_json_is_a_feed_error(body: bytes, mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(FeedError, match=re.escape(message)):
        parse_feed("json", body, mapping, now=NOW)


def test_json_hash_is_stable_and_ignores_fields_not_mapped() -> None:
    mapping = {"items": "", "title": "t", "published_at": "d"}
    one = parse_feed("json", b'[{"t": "A", "d": "2024-01-01", "views": 1}]', mapping, now=NOW)
    two = parse_feed("json", b'[{"t": "A", "d": "2024-01-01", "views": 2}]', mapping, now=NOW)
    other = parse_feed("json", b'[{"t": "B", "d": "2024-01-01"}]', mapping, now=NOW)
    assert one[0].content_hash == two[0].content_hash
    assert one[0].content_hash != other[0].content_hash


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_rows_become_dated_observations() -> None:
    result = read_feed("csv", feed("indicator.csv"), CSV_MAPPING, now=NOW)
    # Five rows with content (the blank line is not one); the "." row is a missing observation.
    assert result.seen == 5
    values = [(item.published_at.date().isoformat(), item.observed_value) for item in result.items]
    assert values == [
        ("2023-12-01", 8.5),
        ("2024-01-01", 10.25),
        ("2024-03-01", 12.0),
        ("2024-04-01", 13.75),  # "2024-04": a month is dated by its first day
    ]
    first = result.items[0]
    assert first.title == "soybean_purchases_mt: 8.5 (2023-12-01)"
    assert first.summary == "soybean_purchases_mt was 8.5 on 2023-12-01."
    assert first.url is None
    assert first.target_met is None  # no target in the mapping
    for item in result.items:
        assert_well_formed(item)


def test_csv_target_at_least_met_and_unmet() -> None:
    mapping = {**CSV_MAPPING, "target": 10.25, "direction": "at_least"}
    items = parse_feed("csv", feed("indicator.csv"), mapping, now=NOW)
    assert [item.target_met for item in items] == [False, True, True, True]  # 10.25 is met
    assert items[0].summary.endswith("Target: at least 10.25 (not met).")
    assert items[1].summary.endswith("Target: at least 10.25 (met).")


def test_csv_target_at_most_met_and_unmet() -> None:
    mapping = {**CSV_MAPPING, "target": 12, "direction": "at_most"}
    items = parse_feed("csv", feed("indicator.csv"), mapping, now=NOW)
    assert [item.target_met for item in items] == [True, True, True, False]
    assert items[-1].summary.endswith("Target: at most 12 (not met).")


def test_csv_target_defaults_to_at_least() -> None:
    items = parse_feed("csv", feed("indicator.csv"), {**CSV_MAPPING, "target": 11}, now=NOW)
    assert [item.target_met for item in items] == [False, False, True, True]


def test_csv_title_template() -> None:
    mapping = {**CSV_MAPPING, "title": "Soybean purchases {{Mt}}: {value} in {date}"}
    items = parse_feed("csv", feed("indicator.csv"), mapping, now=NOW)
    assert items[0].title == "Soybean purchases {Mt}: 8.5 in 2023-12-01"


def test_csv_semicolons_bom_quotes_thousands_and_case_insensitive_columns() -> None:
    body = (
        "\ufeffPeriod;Value;Comment\n"
        '2024-01-31;"1,234.5";"quoted; with delimiter"\n'
        "2024-02-29;NA;\n"
        "2024-03-31T12:00:00+08:00;-3;\n"
    ).encode()
    result = read_feed("csv", body, {"date": "period", "value": "value"}, now=NOW)
    assert [item.observed_value for item in result.items] == [1234.5, -3.0]
    assert result.items[1].published_at == datetime(2024, 3, 31, 4, 0, tzinfo=UTC)
    assert result.seen == 3


def test_csv_hash_is_stable_and_depends_on_the_columns() -> None:
    same = parse_feed("csv", feed("indicator.csv"), CSV_MAPPING, now=NOW)
    again = parse_feed("csv", feed("indicator.csv"), {**CSV_MAPPING, "target": 3}, now=NOW)
    assert [i.content_hash for i in same] == [i.content_hash for i in again]
    other_series = parse_feed(
        "csv",
        b"date,pork_purchases_mt\n2023-12-01,8.5\n",
        {"date": "date", "value": "pork_purchases_mt"},
        now=NOW,
    )
    assert other_series[0].content_hash != same[0].content_hash


@pytest.mark.parametrize(
    ("period", "first_day"),
    [
        ("2024", "2024-01-01"),
        ("2024-03", "2024-03-01"),
        ("2024/3", "2024-03-01"),
        ("2024-Q2", "2024-04-01"),
        ("2024Q4", "2024-10-01"),
        ("March 2024", "2024-03-01"),
        ("Mar 2024", "2024-03-01"),
        ("2024/03/05", "2024-03-05"),
        ("5 March 2024", "2024-03-05"),
        ("20240305", "2024-03-05"),
    ],
)
def test_csv_periods_are_dated_by_their_first_day(period: str, first_day: str) -> None:
    body = f"date,soybean_purchases_mt\n{period},1\n".encode()
    (item,) = parse_feed("csv", body, CSV_MAPPING, now=NOW)
    assert item.published_at == datetime.fromisoformat(first_day).replace(tzinfo=UTC)


def test_csv_header_only_has_no_items() -> None:
    result = read_feed("csv", b"date,soybean_purchases_mt\n", CSV_MAPPING, now=NOW)
    assert result.items == []
    assert result.seen == 0


def test_bad_csv_names_the_row_and_column() -> None:
    with pytest.raises(
        FeedError,
        match=r"^CSV row 3: 'about twelve' in column 'soybean_purchases_mt' is not a number$",
    ):
        parse_feed("csv", feed("bad.csv"), CSV_MAPPING, now=NOW)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the CSV is empty"),
        (b"\n\n", "the CSV is empty"),
        (
            b"when,what\n2024-01-01,1\n",
            "has no column 'date' (mapping.date); its columns are 'when', 'what'",
        ),
        (b"date,other\n2024-01-01,1\n", "has no column 'soybean_purchases_mt' (mapping.value)"),
        (
            b"date,soybean_purchases_mt\nyesterday,1\n",
            "CSV row 2: cannot read 'yesterday' in column 'date'",
        ),
        (b"date,soybean_purchases_mt\n,1\n", "CSV row 2: cannot read '' in column 'date'"),
        (b"date,soybean_purchases_mt\n2024-01-01,inf\n", "is not a number"),
        (b"date,soybean_purchases_mt\n2024-13,1\n", "cannot read '2024-13'"),
        (b"date,soybean_purchases_mt\n2024-Q5,1\n", "cannot read '2024-Q5'"),
        (b'date,soybean_purchases_mt\n2024-01-01,"1\n', "malformed CSV"),
        (b"date,soybean_purchases_mt\n2024-01-01,1\x00\n", "is not a number"),
        (b"date,soybean_purchases_mt\n\xff\xfe,1\n", "not UTF-8"),
    ],
)
def test_bad_csv_is_a_feed_error(body: bytes, message: str) -> None:
    with pytest.raises(FeedError, match=re.escape(message)):
        parse_feed("csv", body, CSV_MAPPING, now=NOW)


# --- mappings ----------------------------------------------------------------------------------


def test_parse_feed_reports_a_bad_mapping_as_a_feed_error() -> None:
    with pytest.raises(FeedError, match=r"mapping is invalid: mapping\.title: is required"):
        parse_feed("json", b"[]", {"items": "", "published_at": "d"}, now=NOW)
    with pytest.raises(FeedError, match="kind: must be one of"):
        parse_feed("yaml", b"", None, now=NOW)


def test_a_naive_now_is_the_callers_mistake() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_feed("rss", feed("rss2.xml"), None, now=NOW.replace(tzinfo=None))


# --- arbitrary input: only FeedError, never anything else -----------------------------------

KIND_MAPPINGS: list[tuple[str, dict[str, Any] | None]] = [
    ("rss", None),
    ("json", JSON_MAPPING),
    ("json", {"items": "", "title": "t", "url": "u", "summary": "s", "published_at": "d"}),
    ("csv", {**CSV_MAPPING, "title": "{value} {date}", "target": 1, "direction": "at_most"}),
]


def _parse_or_feed_error(kind: str, body: bytes, mapping: dict[str, Any] | None) -> None:
    try:
        items = parse_feed(kind, body, mapping, now=NOW)
    except FeedError as error:
        message = str(error)
    else:
        for item in items:
            assert_well_formed(item)
        return
    assert message  # every failure says something for the run record


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KIND_MAPPINGS), st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_feed_error(
    kind_mapping: tuple[str, dict[str, Any] | None], body: bytes
) -> None:
    kind, mapping = kind_mapping
    _parse_or_feed_error(kind, body, mapping)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """A real feed with a slice cut out, replaced or duplicated: nearly valid input."""
    return st.tuples(st.integers(0, len(seed)), st.integers(0, 64), st.binary(max_size=16)).map(
        lambda cut: seed[: cut[0]] + cut[2] + seed[cut[0] + cut[1] :]
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        _mutations(feed("rss2.xml")).map(lambda body: ("rss", body)),
        _mutations(feed("atom.xml")).map(lambda body: ("rss", body)),
        _mutations(feed("nested_items.json")).map(lambda body: ("json", body)),
        _mutations(feed("indicator.csv")).map(lambda body: ("csv", body)),
    )
)
def test_damaged_real_feeds_raise_only_feed_error(kind_body: tuple[str, bytes]) -> None:
    kind, body = kind_body
    mapping = {"rss": None, "json": JSON_MAPPING, "csv": CSV_MAPPING}[kind]
    _parse_or_feed_error(kind, body, mapping)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        ["2024-01-01", "Fri, 01 Mar 2024 10:00:00 +0100", "9999-12-31T23:59:59-14:00"]
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={"t": _json_values, "u": _json_values, "s": _json_values, "d": _json_values},
        )
        | _json_values,
        max_size=5,
    )
)
def test_arbitrary_json_documents_raise_only_feed_error(entries: list[Any]) -> None:
    body = json.dumps(entries).encode()
    mapping = {"items": "", "title": "t", "url": "u", "summary": "s", "published_at": "d"}
    _parse_or_feed_error("json", body, mapping)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["2024-01-01", "2024-13-01", "2024", "", "1899-12-31", "x"])
            | st.text(max_size=12),
            st.sampled_from(["1", "-2.5", ".", "NA", "1,000", "1e400", "nan", ""])
            | st.text(max_size=8),
        ),
        max_size=6,
    )
)
def test_arbitrary_csv_rows_raise_only_feed_error(rows: list[tuple[str, str]]) -> None:
    lines = ["date,value"] + [
        f'"{d.replace(chr(34), "")}","{v.replace(chr(34), "")}"' for d, v in rows
    ]
    _parse_or_feed_error(
        "csv", "\n".join(lines).encode("utf-8", "surrogatepass"), {"date": "date", "value": "value"}
    )
