"""Which items a source attaches to its pledges: ``any`` / ``all`` / ``none`` lists of words or
phrases, matched case-insensitively on word boundaries."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache


def _fold(text: str) -> str:
    # NFKC first so that ligatures and full-width letters compare as the letters they show;
    # casefold rather than lower so that "STRASSE" finds "Straße".
    return unicodedata.normalize("NFKC", text).casefold()


@lru_cache(maxsize=4096)
def _pattern(phrase: str) -> re.Pattern[str] | None:
    """The compiled pattern for one phrase, or None for a blank phrase (which means nothing)."""
    words = _fold(phrase).split()
    if not words:
        return None
    body = r"\s+".join(re.escape(word) for word in words)
    # A boundary only where the phrase has a word character at its edge: "tariff" must not
    # match inside "tariffs", but "U.S." may be followed by anything.
    start = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    end = r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
    return re.compile(start + body + end)


def _found(folded_text: str, phrase: str) -> bool:
    pattern = _pattern(phrase)
    return pattern is not None and pattern.search(folded_text) is not None


def matches(text: str, *, any_: list[str], all_: list[str], none: list[str]) -> bool:
    """Whether ``text`` passes a source's match rules.

    At least one of ``any_`` must occur (an empty ``any_`` accepts every item), every one of
    ``all_`` must occur, and none of ``none`` may. Words and phrases match case-insensitively,
    on word boundaries, with any run of whitespace between a phrase's words. Blank entries are
    ignored.
    """
    folded = _fold(text)
    wanted_any = [phrase for phrase in any_ if _pattern(phrase) is not None]
    if wanted_any and not any(_found(folded, phrase) for phrase in wanted_any):
        return False
    if not all(_found(folded, phrase) for phrase in all_ if _pattern(phrase) is not None):
        return False
    return not any(_found(folded, phrase) for phrase in none)
