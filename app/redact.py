"""Secrets inside URLs, kept out of sight of everyone but an admin.

A URL typed in by staff may carry credentials: ``user:password@`` before the
host, or a token among its query values (``?api_key=…``, ``?sig=…``). Which query
parameters are secret cannot be told from their names (``key``, ``code``, ``t``,
``X-Amz-Signature`` …), so every query value is hidden, and the fragment with
them (OAuth puts tokens there); the parameter names stay, and so do the scheme,
host, port and path, which is what a reader needs to tell feeds apart and to
understand why one failed. A secret written into a URL's *path* is not
recognised: such URLs (webhook URLs of chat services, say) are admin-only.

``redact_text`` finds and redacts every URL in a piece of text (an error
message, a log line); the log formatter runs it over every line it writes, so
that no code path can forget.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# A scheme, "://", then anything up to a space, a quote, an angle bracket or a backslash (the
# end of a quoted URL, or an escape in JSON text: a redaction never touches either).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>\\`]+")
# Punctuation that ends a sentence rather than a URL ("failed at https://host/x.").
_TRAILING = ".,;:!)]}"

# Answers that show a secret (once) must not be kept by any cache on the way, nor by the browser.
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _redact_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if not equals:
        # A bare value (``?abcdef``) is all value.
        return REDACTED if parameter else parameter
    return f"{name}={REDACTED}" if value else parameter


def redact_url(url: str) -> str:
    """``url`` with its userinfo, every query value and its fragment replaced by ``***``.

    Works on the text, so a URL too malformed to parse is redacted all the same.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    ends = [position for position in map(rest.find, "/?#") if position >= 0]
    end = min(ends, default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    tail, hash_sign, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    if query:
        query = "&".join(_redact_parameter(part) for part in query.split("&"))
    shown_fragment = f"#{REDACTED}" if fragment else hash_sign
    return f"{scheme}://{authority}{path}{question_mark}{query}{shown_fragment}"


def _redact_match(match: re.Match[str]) -> str:
    found = match.group()
    url = found.rstrip(_TRAILING)
    return redact_url(url) + found[len(url) :]


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (see ``redact_url``)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def redact_value(value: Any) -> Any:
    """``value`` with every string in it (in lists, tuples and dicts too) run through
    ``redact_text``; other values as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value
