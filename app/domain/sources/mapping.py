"""What a source's ``mapping`` may say: which parts of a JSON feed or a CSV series to read.

A source's mapping is checked when it is created or edited (a 422 naming the offending
key), and checked again by the feed reader before it reads a feed with it.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Final

KINDS: Final = ("rss", "json", "csv")

_JSON_KEYS: Final = {"items", "title", "url", "summary", "published_at"}
_JSON_REQUIRED: Final = ("items", "title", "published_at")
_CSV_KEYS: Final = {"date", "value", "title", "target", "direction"}
_CSV_REQUIRED: Final = ("date", "value")
_DIRECTIONS: Final = ("at_least", "at_most")
_TEMPLATE_FIELDS: Final = frozenset({"date", "value"})
_TEMPLATE_MAX: Final = 500
_PATH_SEGMENT = re.compile(r"^[^.]+$")


def validate_mapping(kind: str, mapping: dict[str, Any] | None) -> None:
    """Check a source's mapping for its kind; raise ``ValueError`` naming the offending key.

    rss takes no mapping. json: ``items`` (dotted path to the list, ``""`` for a top-level
    list), ``title``, ``published_at``, optional ``url`` and ``summary`` (dotted paths within an
    item). csv: ``date`` and ``value`` columns, optional ``title`` (a template using ``{date}``
    and ``{value}``), ``target`` (a number) and ``direction`` (``at_least`` or ``at_most``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    if mapping is not None and not isinstance(mapping, dict):
        raise ValueError("mapping: must be an object")
    if kind == "rss":
        if mapping:
            raise ValueError("mapping: rss sources take no mapping (feedparser reads the fields)")
        return
    allowed, required = (
        (_JSON_KEYS, _JSON_REQUIRED) if kind == "json" else (_CSV_KEYS, _CSV_REQUIRED)
    )
    if not mapping:
        raise ValueError(f"mapping: {kind} sources need a mapping with {', '.join(required)}")
    for key in mapping:
        if key not in allowed:
            raise ValueError(
                f"mapping.{key}: unknown key; {kind} mappings take {', '.join(sorted(allowed))}"
            )
    for key in required:
        if key not in mapping:
            raise ValueError(f"mapping.{key}: is required for {kind} sources")
    if kind == "json":
        _validate_json_mapping(mapping)
    else:
        _validate_csv_mapping(mapping)


def _validate_json_mapping(mapping: dict[str, Any]) -> None:
    for key, value in mapping.items():
        if not isinstance(value, str):
            raise ValueError(f"mapping.{key}: must be a string (a dotted path)")
        if key == "items" and value == "":
            continue  # the document itself is the list
        if not value or not all(_PATH_SEGMENT.match(part) for part in value.split(".")):
            raise ValueError(
                f"mapping.{key}: must be a dotted path such as 'data.items' (no empty parts)"
            )


def _validate_csv_mapping(mapping: dict[str, Any]) -> None:
    for key in ("date", "value"):
        column = mapping[key]
        if not isinstance(column, str) or not column.strip():
            raise ValueError(f"mapping.{key}: must be a column name")
    if "title" in mapping:
        _validate_template(mapping["title"])
    if "target" in mapping:
        target = mapping["target"]
        if (
            isinstance(target, bool)
            or not isinstance(target, (int, float))
            or not math.isfinite(target)
        ):
            raise ValueError("mapping.target: must be a finite number")
    if "direction" in mapping:
        if mapping["direction"] not in _DIRECTIONS:
            raise ValueError(f"mapping.direction: must be one of {', '.join(_DIRECTIONS)}")
        if "target" not in mapping:
            raise ValueError("mapping.direction: only means something with a target")


def _validate_template(template: Any) -> None:
    if not isinstance(template, str) or not template.strip():
        raise ValueError("mapping.title: must be a non-empty template string")
    if len(template) > _TEMPLATE_MAX:
        raise ValueError(f"mapping.title: must be at most {_TEMPLATE_MAX} characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"mapping.title: is not a valid template: {error}") from None
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        # Only the bare names: attribute access or indexing in a format string reaches
        # into objects, and a format spec can ask for a string of any width.
        if field not in _TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                "mapping.title: may only use {date} and {value} (write {{ and }} for braces)"
            )
