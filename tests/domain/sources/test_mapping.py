"""A source's mapping: the shapes each kind of source takes, and the key named when one is wrong."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.domain.sources.mapping import validate_mapping

JSON_MAPPING: dict[str, Any] = {
    "items": "data.results.items",
    "title": "headline",
    "url": "links.canonical",
    "summary": "body.text",
    "published_at": "dates.issued",
}
CSV_MAPPING: dict[str, Any] = {"date": "date", "value": "soybean_purchases_mt"}


@pytest.mark.parametrize(
    ("kind", "mapping"),
    [
        ("rss", None),
        ("rss", {}),
        ("json", {"items": "", "title": "t", "published_at": "d"}),
        ("json", JSON_MAPPING),
        ("csv", CSV_MAPPING),
        ("csv", {**CSV_MAPPING, "title": "{value} on {date}", "target": 5, "direction": "at_most"}),
        ("csv", {**CSV_MAPPING, "target": 2.5}),
    ],
)
def test_valid_mappings(kind: str, mapping: dict[str, Any] | None) -> None:
    validate_mapping(kind, mapping)


@pytest.mark.parametrize(
    ("kind", "mapping", "names"),
    [
        ("atom", None, "kind"),
        ("rss", {"title": "x"}, "mapping"),
        ("json", None, "mapping"),
        ("json", {"items": "a"}, "mapping.title"),
        ("json", {"title": "t", "published_at": "d"}, "mapping.items"),
        ("json", {"items": "", "title": "t"}, "mapping.published_at"),
        ("json", {"items": "", "title": "t", "published_at": "d", "link": "u"}, "mapping.link"),
        ("json", {"items": 3, "title": "t", "published_at": "d"}, "mapping.items"),
        ("json", {"items": "a..b", "title": "t", "published_at": "d"}, "mapping.items"),
        ("json", {"items": "", "title": "", "published_at": "d"}, "mapping.title"),
        ("json", {"items": "", "title": "t", "published_at": "d."}, "mapping.published_at"),
        ("json", {"items": "", "title": "t", "published_at": "d", "url": None}, "mapping.url"),
        ("csv", None, "mapping"),
        ("csv", {"date": "d"}, "mapping.value"),
        ("csv", {"value": "v"}, "mapping.date"),
        ("csv", {"date": " ", "value": "v"}, "mapping.date"),
        ("csv", {"date": "d", "value": 1}, "mapping.value"),
        ("csv", {"date": "d", "value": "v", "unit": "t"}, "mapping.unit"),
        ("csv", {"date": "d", "value": "v", "target": "ten"}, "mapping.target"),
        ("csv", {"date": "d", "value": "v", "target": True}, "mapping.target"),
        ("csv", {"date": "d", "value": "v", "target": float("nan")}, "mapping.target"),
        ("csv", {"date": "d", "value": "v", "target": 1, "direction": "up"}, "mapping.direction"),
        ("csv", {"date": "d", "value": "v", "direction": "at_most"}, "mapping.direction"),
        ("csv", {"date": "d", "value": "v", "title": ""}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{value"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{unit}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{value.__class__}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{date[0]}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{value:>999999999}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{value!r}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "{}"}, "mapping.title"),
        ("csv", {"date": "d", "value": "v", "title": "x" * 501}, "mapping.title"),
    ],
)
def test_invalid_mappings_name_the_key(
    kind: str, mapping: dict[str, Any] | None, names: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(names)}: "):
        validate_mapping(kind, mapping)
