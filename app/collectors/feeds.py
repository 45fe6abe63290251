"""Reading a fetched feed into dated items: RSS 2.0 and Atom, JSON picked by a mapping, CSV series.

Everything here is pure: bytes in, items out, no I/O and no clock of its own (``now`` is passed
in). A feed that cannot be read raises ``FeedError`` with a sentence fit for the run record, and
nothing else, so a bad feed fails its own run and never the scheduler.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import html
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import ParseError
from xml.parsers import expat

import feedparser  # type: ignore[import-untyped]
from defusedxml import (
    DefusedXmlException,
    EntitiesForbidden,
)
from defusedxml.ElementTree import DefusedXMLParser

from app.domain.sources.mapping import validate_mapping
from app.types import EARLIEST

# The evidence schema's limits: an item we produce must be one the API would accept.
TITLE_MAX: Final = 1000
SUMMARY_MAX: Final = 20_000
URL_MAX: Final = 2048
# A title made up from the summary when the item has none (RSS allows items without one).
_DERIVED_TITLE_MAX: Final = 200
# Real feeds nest a few dozen elements at most (XHTML content included); deeper is an attack on
# the parsers' time, and is refused before feedparser sees it.
XML_MAX_DEPTH: Final = 256

_INDEX = re.compile(r"^[0-9]{1,9}$")

# Statistics offices mark a missing observation in several ways; such a row is not an item.
_MISSING_VALUES: Final = frozenset({"", ".", "..", "-", "na", "n/a", "nan", "null", "none"})
_THOUSANDS = re.compile(r"^[+-]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?$")
# Periods of an indicator series, each dated by its first day: 2024, 2024-03, 2024/03, 2024-Q2.
_PERIOD = re.compile(r"^([0-9]{4})(?:[-/]([0-9]{1,2})|-?[Qq]([1-4]))?$")
_OTHER_DATE_FORMATS: Final = ("%Y/%m/%d", "%B %Y", "%b %Y", "%d %B %Y", "%d %b %Y")
# Numbers this large are milliseconds since the epoch, not seconds (seconds reach it in 5138).
_EPOCH_MS_THRESHOLD: Final = 100_000_000_000

_XML_DECLARATION = re.compile(
    rb"^<\?xml[^>]{0,200}?encoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._:-]*)[\"']"
)
# Encodings expat reads itself; any other declared encoding is transcoded to UTF-8 first (expat
# refuses multi-byte encodings such as GB2312, which Chinese government feeds use).
_EXPAT_ENCODINGS: Final = frozenset({"utf-8", "ascii", "iso8859-1"})
_BOMS: Final = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_SPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]*>")
_BLOCK_TAGS: Final = frozenset(
    {"p", "br", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6"}
)


class FeedError(Exception):
    """A feed that cannot be read; ``str(error)`` is a sentence for the run record."""


@dataclass(frozen=True)
class FeedItem:
    """One dated item read from a feed, ready to become an evidence draft."""

    title: str
    url: str | None
    summary: str
    published_at: datetime  # aware, UTC, never after the ``now`` the feed was read at
    # SHA-256 (hex) of the item as the feed gave it (title, summary, link and date as written,
    # before clean-up or clamping), so an unchanged feed yields the same hashes on every run.
    content_hash: str
    observed_value: float | None = None
    target_met: bool | None = None


@dataclass(frozen=True)
class ParsedFeed:
    """What one read of a feed gave: the usable items, and how many entries the feed held
    (``seen`` counts entries skipped for having no date or no text, too)."""

    items: list[FeedItem]
    seen: int


# --- public entry points -----------------------------------------------------------------------


def parse_feed(
    kind: str, body: bytes, mapping: dict[str, Any] | None, *, now: datetime
) -> list[FeedItem]:
    """Read ``body`` as a feed of ``kind`` (``rss``, ``json`` or ``csv``) into dated items.

    Items without a usable date are skipped (see ``read_feed`` for the count); dates after
    ``now`` (which must be aware) are clamped to ``now``. Raises ``FeedError``, and only
    ``FeedError``, when the body cannot be read or the mapping is invalid.
    """
    return read_feed(kind, body, mapping, now=now).items


def read_feed(
    kind: str, body: bytes, mapping: dict[str, Any] | None, *, now: datetime
) -> ParsedFeed:
    """``parse_feed``, also telling how many entries the feed held (skipped ones included)."""
    try:
        validate_mapping(kind, mapping)
    except ValueError as error:
        raise FeedError(f"the source's mapping is invalid: {error}") from None
    if now.tzinfo is None:  # the caller's mistake, not the feed's: not a FeedError
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    if kind == "rss":
        return _read_xml_feed(body, now)
    if kind == "json":
        return _read_json_feed(body, mapping or {}, now)
    return _read_csv_feed(body, mapping or {}, now)


# --- RSS and Atom ------------------------------------------------------------------------------


class _ShapeCheck:
    """Parser target that keeps no tree: it notes the root element and refuses deep nesting."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.depth = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        self.depth += 1
        if self.depth > XML_MAX_DEPTH:
            raise FeedError(f"the XML nests elements more than {XML_MAX_DEPTH} deep")

    def end(self, tag: str) -> None:
        self.depth -= 1

    def data(self, data: str) -> None:
        pass

    def close(self) -> str | None:
        return self.root


def _as_expat_encoding(body: bytes) -> bytes:
    """The body in an encoding expat reads, transcoding a declared multi-byte one to UTF-8."""
    if body.startswith(_BOMS):
        return body
    declared = _XML_DECLARATION.match(body)
    if declared is None:
        return body  # UTF-8 by the XML default, or malformed: expat will say which
    name = declared.group(1).decode("ascii")
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise FeedError(f"the XML declares an unknown encoding {name!r}") from None
    if codec.name in _EXPAT_ENCODINGS:
        return body
    if not getattr(codec, "_is_text_encoding", True):
        raise FeedError(f"the XML declares {name!r}, which is not a text encoding")
    try:
        text = body.decode(codec.name)
    except (UnicodeError, LookupError) as error:
        raise FeedError(f"the feed is not valid {name} text: {error}") from None
    start, end = declared.span(1)
    declaration = declared.group(0).decode("ascii")
    if text.startswith(declaration):
        # The declaration must now say what the bytes are, or expat would decode them again.
        text = declaration[:start] + "utf-8" + declaration[end:] + text[len(declaration) :]
    return text.encode("utf-8", "replace")


def _check_xml(body: bytes) -> str:
    """Parse the body with defusedxml, keeping nothing; return the root element's local name.

    feedparser recovers from malformed XML and expands what a DTD declares, so this strict,
    entity-refusing pass decides first whether the body is a well-formed feed at all.
    """
    shape = _ShapeCheck()
    parser = DefusedXMLParser(
        target=shape, forbid_dtd=False, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(body)
        parser.close()
    except ParseError as error:
        line, column = error.position
        reason = expat.ErrorString(error.code) if isinstance(error.code, int) else str(error)
        raise FeedError(f"malformed XML at line {line}, column {column + 1}: {reason}") from None
    except EntitiesForbidden as error:
        raise FeedError(
            f"the XML declares an entity ({error.name!r}); entity declarations are refused, "
            "as they are how entity-expansion attacks (billion laughs) work"
        ) from None
    except DefusedXmlException as error:
        raise FeedError(
            f"the XML refers to external resources, which are refused: {error}"
        ) from None
    except ValueError as error:  # expat's own refusals, such as an encoding it cannot read
        raise FeedError(f"the XML cannot be read: {error}") from None
    if shape.root is None:  # pragma: no cover - expat insists on a root element
        raise FeedError("the XML has no root element")
    return shape.root.rpartition("}")[2]


def _read_xml_feed(body: bytes, now: datetime) -> ParsedFeed:
    # Many feeds (WordPress plugins notoriously) send blank lines before the XML declaration,
    # which expat calls malformed; nothing is lost by dropping them.
    stripped = body.lstrip(b" \t\r\n")
    if stripped.startswith(b"<?xml"):
        body = stripped
    body = _as_expat_encoding(body)
    root = _check_xml(body)
    if root not in ("rss", "feed", "RDF"):
        raise FeedError(f"the XML is not an RSS or Atom feed: its root element is <{root}>")
    try:
        # A stream, never bytes: feedparser treats a bytes argument as a file name first.
        parsed = feedparser.parse(io.BytesIO(body), sanitize_html=True, resolve_relative_uris=True)
    except Exception as error:  # feedparser's own failures on odd input must fail only this run
        raise FeedError(f"feedparser could not read the feed: {error}") from None
    channel_link = _web_url(_text_field(_raw_get(parsed, "feed"), "link"))
    entries: list[Any] = list(_raw_get(parsed, "entries") or [])
    items: list[FeedItem] = []
    for entry in entries:
        item = _rss_item(entry, channel_link, now)
        if item is not None:
            items.append(item)
    return ParsedFeed(items=items, seen=len(entries))


def _rss_item(entry: Any, channel_link: str | None, now: datetime) -> FeedItem | None:
    raw_title = _text_field(entry, "title")
    raw_summary = _text_field(entry, "summary")
    if not raw_summary:
        contents = _raw_get(entry, "content") or []
        if contents and isinstance(contents[0], dict):
            raw_summary = str(contents[0].get("value") or "")
    raw_link = _text_field(entry, "link")
    published_at: datetime | None = None
    raw_date = ""
    for key in ("published", "updated", "created"):
        published_at = _from_struct_time(_raw_get(entry, f"{key}_parsed"))
        if published_at is not None:
            raw_date = _text_field(entry, key)
            break
    if published_at is None:
        return None
    url = _web_url(raw_link)
    if url is None and raw_link and channel_link is not None:
        url = _web_url(urljoin(channel_link, raw_link))
    return _make_item(
        raw=[raw_title, raw_summary, raw_link, raw_date],
        title=_to_text(raw_title, html_markup=True),
        summary=_to_text(raw_summary, html_markup=True),
        url=url,
        published_at=published_at,
        now=now,
    )


def _raw_get(entry: Any, key: str) -> Any:
    # dict.get, not FeedParserDict.get: the latter maps keys onto others (updated onto
    # published, with a DeprecationWarning), and the fallbacks here are made explicitly.
    return dict.get(entry, key) if isinstance(entry, dict) else None


def _text_field(entry: Any, key: str) -> str:
    value = _raw_get(entry, key)
    return value if isinstance(value, str) else ""


def _from_struct_time(value: Any) -> datetime | None:
    # feedparser gives UTC struct_times; a leap second is not a datetime, so it becomes :59.
    try:
        year, month, day, hour, minute, second = (int(part) for part in tuple(value)[:6])
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


# --- JSON --------------------------------------------------------------------------------------

_MISSING: Final = object()


def _read_json_feed(body: bytes, mapping: dict[str, Any], now: datetime) -> ParsedFeed:
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise FeedError(
            f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise FeedError(f"the JSON is not UTF-8, UTF-16 or UTF-32 text: {error.reason}") from None
    except RecursionError:
        raise FeedError("the JSON nests arrays or objects too deeply to read") from None
    except ValueError as error:  # e.g. an integer with more digits than Python will convert
        raise FeedError(f"the JSON cannot be read: {error}") from None
    path: str = mapping["items"]
    entries = _at_path(document, path)
    where = f"at {path!r}" if path else "at the top level"
    if entries is _MISSING:
        raise FeedError(f"the JSON has nothing {where} (the mapping's items path)")
    if not isinstance(entries, list):
        raise FeedError(f"the JSON has {_json_type(entries)} {where}, not a list of items")
    items: list[FeedItem] = []
    for entry in entries:
        item = _json_item(entry, mapping, now)
        if item is not None:
            items.append(item)
    return ParsedFeed(items=items, seen=len(entries))


def _json_item(entry: Any, mapping: dict[str, Any], now: datetime) -> FeedItem | None:
    raw_title = _at_path(entry, mapping["title"])
    raw_date = _at_path(entry, mapping["published_at"])
    raw_url = _at_path(entry, mapping["url"]) if "url" in mapping else _MISSING
    raw_summary = _at_path(entry, mapping["summary"]) if "summary" in mapping else _MISSING
    published_at = _json_datetime(raw_date)
    if published_at is None:
        return None
    link = raw_url if isinstance(raw_url, str) else ""
    return _make_item(
        raw=[_json_raw(raw_title), _json_raw(raw_summary), _json_raw(raw_url), _json_raw(raw_date)],
        title=_to_text(_scalar_text(raw_title), html_markup=True),
        summary=_to_text(_scalar_text(raw_summary), html_markup=True),
        url=_web_url(link),
        published_at=published_at,
        now=now,
    )


def _at_path(document: Any, path: str) -> Any:
    """The value at a dotted path (numeric parts index lists), or ``_MISSING``."""
    if path == "":
        return document
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and _INDEX.match(part) and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def _json_raw(value: Any) -> Any:
    """What the hash is taken of: the value as the feed gave it (a missing field is null)."""
    if value is _MISSING:
        return None
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, sort_keys=True, ensure_ascii=False)
        except (RecursionError, ValueError):
            return "<unreadable>"
    return value


def _json_datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        return _parse_datetime_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            return None
        if abs(seconds) >= _EPOCH_MS_THRESHOLD:
            seconds /= 1000
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        except OverflowError:
            return None
    return None


# --- CSV ---------------------------------------------------------------------------------------


def _read_csv_feed(body: bytes, mapping: dict[str, Any], now: datetime) -> ParsedFeed:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise FeedError(
            f"the CSV is not UTF-8 text (byte {error.start} cannot be decoded)"
        ) from None
    if not text.strip():
        raise FeedError("the CSV is empty: no header row")
    delimiter = _guess_delimiter(text)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as error:
        raise FeedError(f"malformed CSV: {error}") from None
    header = [cell.strip() for cell in rows[0]]
    date_at = _column(header, mapping["date"], "date")
    value_at = _column(header, mapping["value"], "value")
    date_name, value_name = header[date_at], header[value_at]
    template: str | None = mapping.get("title")
    target: float | None = float(mapping["target"]) if "target" in mapping else None
    direction: str = mapping.get("direction", "at_least")
    items: list[FeedItem] = []
    seen = 0
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line, not an observation
        seen += 1
        raw_date = row[date_at].strip() if date_at < len(row) else ""
        raw_value = row[value_at].strip() if value_at < len(row) else ""
        if raw_value.casefold() in _MISSING_VALUES:
            continue  # no observation for this date
        published_at = _parse_datetime_text(raw_date)
        if published_at is None:
            raise FeedError(
                f"CSV row {line}: cannot read {raw_date[:40]!r} in column {date_name!r} as a date"
            )
        value = _parse_number(raw_value)
        if value is None:
            raise FeedError(
                f"CSV row {line}: {raw_value[:40]!r} in column {value_name!r} is not a number"
            )
        target_met: bool | None = None
        summary = f"{value_name} was {raw_value} on {raw_date}."
        if target is not None:
            target_met = value >= target if direction == "at_least" else value <= target
            wanted = "at least" if direction == "at_least" else "at most"
            verdict = "met" if target_met else "not met"
            summary += f" Target: {wanted} {_format_number(target)} ({verdict})."
        title = (
            template.format(date=raw_date, value=raw_value)
            if template
            else f"{value_name}: {raw_value} ({raw_date})"
        )
        item = _make_item(
            # The columns' names are part of the hash, so that two series in one file (or two
            # files) with the same date and value are still two observations.
            raw=[date_name, raw_date, value_name, raw_value],
            title=_to_text(title, html_markup=False),
            summary=_to_text(summary, html_markup=False),
            url=None,
            published_at=published_at,
            now=now,
            observed_value=value,
            target_met=target_met,
        )
        if item is not None:
            items.append(item)
    return ParsedFeed(items=items, seen=seen)


def _guess_delimiter(text: str) -> str:
    # Statistics offices in much of the world write ';' (their decimal point is ','), some tabs.
    header = text.lstrip().split("\n", 1)[0]
    return max((",", ";", "\t"), key=header.count)


def _column(header: list[str], name: str, key: str) -> int:
    wanted = name.strip()
    for position, column in enumerate(header):
        if column == wanted:
            return position
    folded = [
        position for position, column in enumerate(header) if column.casefold() == wanted.casefold()
    ]
    if folded:
        return folded[0]
    shown = ", ".join(repr(column[:40]) for column in header[:20])
    raise FeedError(f"the CSV has no column {wanted!r} (mapping.{key}); its columns are {shown}")


def _parse_number(raw: str) -> float | None:
    cleaned = raw.replace(",", "") if _THOUSANDS.match(raw) else raw
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


# --- shared ------------------------------------------------------------------------------------


def _parse_datetime_text(raw: str) -> datetime | None:
    """ISO 8601 (a date alone means 00:00 UTC), RFC 2822, or a bare year-month or year."""
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    parsed = _iso_or_partial(text)
    if parsed is None:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _iso_or_partial(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    period = _PERIOD.match(text)
    if period is not None:
        year, month, quarter = period.groups()
        first_month = int(month) if month else (int(quarter) - 1) * 3 + 1 if quarter else 1
        try:
            return datetime(int(year), first_month, 1)
        except ValueError:
            return None
    for form in _OTHER_DATE_FORMATS:
        try:
            return datetime.strptime(text, form)
        except ValueError:
            continue
    return None


def _make_item(
    *,
    raw: list[Any],
    title: str,
    summary: str,
    url: str | None,
    published_at: datetime | None,
    now: datetime,
    observed_value: float | None = None,
    target_met: bool | None = None,
) -> FeedItem | None:
    """The item, or None when it has no usable date or no text at all."""
    if published_at is None or published_at.date() < EARLIEST:
        return None
    if not title:
        title = _shorten(summary, _DERIVED_TITLE_MAX)
    if not title:
        return None
    encoded = json.dumps(raw, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return FeedItem(
        title=_shorten(title, TITLE_MAX),
        url=url,
        summary=_shorten(summary, SUMMARY_MAX),
        # A date in the future is a feed's mistake (or a scheduled post); evidence cannot be
        # dated after it was seen.
        published_at=min(published_at, now),
        content_hash=hashlib.sha256(encoded).hexdigest(),
        observed_value=observed_value,
        target_met=target_met,
    )


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_to_text(markup: str) -> str:
    extractor = _TextExtractor()
    try:
        extractor.feed(markup)
        extractor.close()
    except Exception:  # html.parser asserts on some broken declarations; fall back to a regex
        return html.unescape(_TAG.sub(" ", markup))
    return "".join(extractor.parts)


def _to_text(value: str, *, html_markup: bool) -> str:
    """Plain, storable, single-spaced text: markup and entities resolved, control characters
    (NUL, lone surrogates) dropped, since neither database stores them."""
    if html_markup and ("<" in value or "&" in value):
        value = _html_to_text(value)
    return _SPACE.sub(" ", _UNSTORABLE.sub("", value)).strip()


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _web_url(value: str) -> str | None:
    """The URL if it is an absolute http(s) URL the evidence schema accepts, else None."""
    url = value.strip()
    if not url or len(url) > URL_MAX or any(ch.isspace() for ch in url) or _UNSTORABLE.search(url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url
