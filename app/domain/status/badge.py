"""The status badge: a small flat SVG, the pledge's short name on the left and its status right.

Pledges have no short-name field, so the label is the title, shortened to fit
``LABEL_MAX_WIDTH`` pixels with an ellipsis (a title is what staff recognise; the
slug is for machines). The full title and status are in ``<title>`` and
``aria-label`` for screen readers and tooltips.

Titles may hold any string, so every text is first made storable in XML 1.0
(characters XML forbids, lone surrogates and bidirectional overrides become
U+FFFD or are dropped) and then escaped. No rendering engine is needed: widths
come from Verdana's advance widths at 11 px (the usual badge font), and
``textLength`` makes the renderer fit each text to the width reserved for it,
so an estimate that is a little off never spills out of the badge.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from xml.sax.saxutils import escape

# Part of the ETag: bump it when the drawing changes, so caches fetch the new look.
BADGE_STYLE = 1
LABEL_MAX_WIDTH = 200.0
TITLE_MAX_CHARS = 500
_PADDING = 6
_HEIGHT = 20
_ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Colours:
    background: str
    text: str


# Each pair has a contrast ratio of at least 4.5:1 (WCAG AA for small text).
LABEL_COLOURS = Colours("#555555", "#ffffff")
STATUS_COLOURS: dict[str, Colours] = {
    "not_yet_rated": Colours("#656d76", "#ffffff"),  # grey
    "in_progress": Colours("#0969da", "#ffffff"),  # blue
    "stalled": Colours("#bc4c00", "#ffffff"),  # orange
    "compromise": Colours("#587a00", "#ffffff"),  # yellow-green
    "kept": Colours("#1a7f37", "#ffffff"),  # green
    "broken": Colours("#cf222e", "#ffffff"),  # red
}
_UNKNOWN_STATUS = Colours("#656d76", "#ffffff")

# Verdana at 11 px: advance widths of the printable ASCII characters, from space to tilde.
_ASCII_WIDTHS = (
    3.87, 4.33, 5.05, 9.0, 6.99, 11.84, 7.99, 2.95, 4.99, 4.99, 6.99, 9.0, 4.0, 4.99, 4.0, 4.99,
    6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 6.99, 4.99, 4.99, 9.0, 9.0, 9.0, 5.99,
    11.0, 7.52, 7.54, 7.68, 8.48, 6.96, 6.32, 8.53, 8.27, 4.61, 5.0, 7.62, 6.12, 9.27, 8.23, 8.66,
    6.63, 8.66, 7.65, 7.52, 6.78, 8.05, 7.52, 10.88, 7.54, 6.77, 7.54, 4.99, 4.99, 4.99, 9.0, 6.99,
    6.99, 6.61, 6.85, 5.73, 6.85, 6.55, 3.87, 6.85, 6.96, 3.02, 3.79, 6.51, 3.02, 10.7, 6.96, 6.68,
    6.85, 6.85, 4.69, 5.73, 4.33, 6.96, 6.51, 8.98, 6.51, 6.51, 5.78, 6.98, 4.99, 6.98, 9.0,
)  # fmt: skip
_WIDE = 11.0
_AVERAGE = 7.0

# What XML 1.0 cannot carry and is not a control character: lone surrogates, U+FFFE and
# U+FFFF. They become U+FFFD, so the document stays well-formed whatever the title holds.
_NOT_XML = re.compile("[^\x00-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ZERO_WIDTH_JOINER = "\u200d"


def status_words(status: str) -> str:
    """``in_progress`` as people write it: ``in progress``."""
    return status.replace("_", " ")


def clean_text(text: str) -> str:
    """``text`` reduced to one line of characters XML can hold and that display as themselves.

    Control characters and invisible format characters (bidirectional overrides
    among them, which could make a label read as something else) are dropped,
    except the joiner inside emoji sequences; whitespace runs become one space.
    """
    visible = "".join(char for char in text if _visible(char))
    return " ".join(_NOT_XML.sub("\ufffd", visible).split())


def _visible(char: str) -> bool:
    if char.isspace() or char == _ZERO_WIDTH_JOINER:
        return True
    return unicodedata.category(char) not in ("Cc", "Cf")


def char_width(char: str) -> float:
    code = ord(char)
    if 32 <= code <= 126:
        return _ASCII_WIDTHS[code - 32]
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0.0
    if unicodedata.east_asian_width(char) in ("W", "F") or code >= 0x1F000:
        return _WIDE
    return _AVERAGE


def text_width(text: str) -> float:
    """How wide ``text`` is in Verdana 11 px, near enough to size the badge."""
    return sum(char_width(char) for char in text)


def _trim_end(text: str) -> str:
    # Never end on half an emoji sequence or a dangling mark, nor on a space or a comma.
    while text and (
        text[-1] == _ZERO_WIDTH_JOINER
        or unicodedata.combining(text[-1])
        or unicodedata.category(text[-1]) in ("Mn", "Me", "Zs", "Pd")
        or text[-1] in ",;:-–—(["
    ):
        text = text[:-1]
    return text


def shorten(text: str, max_width: float = LABEL_MAX_WIDTH) -> str:
    """``text`` cut to ``max_width`` pixels with an ellipsis, at a word break when one is near."""
    if text_width(text) <= max_width:
        return text
    room = max_width - char_width(_ELLIPSIS[0])
    width, cut = 0.0, 0
    for index, char in enumerate(text):
        width += char_width(char)
        if width > room:
            break
        cut = index + 1
    head = text[:cut]
    space = head.rfind(" ")
    if space >= cut * 0.6:
        head = head[:space]
    return _trim_end(head) + _ELLIPSIS


def short_name(title: str, fallback: str) -> str:
    """The badge's label: the title, cleaned and shortened; ``fallback`` if nothing is left."""
    label = shorten(clean_text(title))
    return label if label.strip(_ELLIPSIS + " ") else shorten(fallback)


def badge_etag(version: int, status: str) -> str:
    """The badge's ETag: it changes with the pledge's version (every edit), status and style."""
    return f'"badge{BADGE_STYLE}-{version}-{status}"'


def _xml(text: str) -> str:
    return escape(text, {'"': "&quot;", "'": "&apos;"})


def render_badge(*, pledge_id: str, title: str, status: str) -> str:
    """The SVG document (a string) for a pledge with ``title`` in ``status``."""
    label = short_name(title, fallback=pledge_id)
    words = status_words(status)
    colours = STATUS_COLOURS.get(status, _UNKNOWN_STATUS)
    label_text = text_width(label)
    status_text = text_width(words)
    left = round(label_text + 2 * _PADDING)
    right = round(status_text + 2 * _PADDING)
    total = left + right
    full_title = clean_text(title) or pledge_id
    if len(full_title) > TITLE_MAX_CHARS:
        full_title = _trim_end(full_title[: TITLE_MAX_CHARS - 1]) + _ELLIPSIS
    spoken = _xml(f"{full_title}: {words}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{_HEIGHT}" '
        f'viewBox="0 0 {total} {_HEIGHT}" role="img" aria-label="{spoken}">'
        f"<title>{spoken}</title>"
        f'<rect width="{total}" height="{_HEIGHT}" rx="3" fill="{colours.background}"/>'
        f'<path fill="{LABEL_COLOURS.background}" '
        f'd="M3 0h{left - 3}v{_HEIGHT}H3a3 3 0 0 1-3-3V3a3 3 0 0 1 3-3z"/>'
        '<g font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11" '
        'text-anchor="middle">'
        f'<text x="{left / 2:.1f}" y="14" fill="{LABEL_COLOURS.text}" '
        f'textLength="{label_text:.1f}">{_xml(label)}</text>'
        f'<text x="{left + right / 2:.1f}" y="14" fill="{colours.text}" '
        f'textLength="{status_text:.1f}">{_xml(words)}</text>'
        "</g></svg>"
    )
