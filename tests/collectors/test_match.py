"""Matching rules: any / all / none, case-insensitive, whole words and phrases."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.collectors.match import matches

TEXT = "Treasury extends tariff exclusions on Chinese solar panels; U.S. and China resume talks."


def check(
    text: str,
    any_: list[str] | None = None,
    all_: list[str] | None = None,
    none: list[str] | None = None,
) -> bool:
    return matches(text, any_=any_ or [], all_=all_ or [], none=none or [])


def test_no_rules_accepts_every_item() -> None:
    assert check(TEXT)
    assert check("")


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("tariff", True),
        ("TARIFF", True),
        ("Tariff Exclusions", True),
        ("tariff   exclusions", True),  # any run of spaces in the rule
        ("tariffs", False),  # not a word in the text
        ("tariff exclusion", False),  # "exclusion" is only part of "exclusions"
        ("solar", True),
        ("sol", False),  # inside a word
        ("panels", True),  # before a semicolon
        ("talks", True),  # before the full stop
        ("U.S.", True),
        ("u.s.", True),
        ("china", True),
        ("chin", False),
        ("chinese solar", True),
        ("solar chinese", False),  # order matters in a phrase
    ],
)
def test_any_matches_words_and_phrases_on_word_boundaries(phrase: str, expected: bool) -> None:
    assert check(TEXT, any_=[phrase]) is expected


def test_any_needs_one_of_the_list() -> None:
    assert check(TEXT, any_=["soybeans", "fentanyl", "solar"])
    assert not check(TEXT, any_=["soybeans", "fentanyl"])


def test_all_needs_every_one() -> None:
    assert check(TEXT, all_=["tariff", "china"])
    assert not check(TEXT, all_=["tariff", "soybeans"])


def test_none_vetoes() -> None:
    assert check(TEXT, any_=["tariff"], none=["soybeans"])
    assert not check(TEXT, any_=["tariff"], none=["Solar Panels"])
    assert not check(TEXT, none=["talks"])


def test_rules_combine() -> None:
    assert check(TEXT, any_=["solar", "wind"], all_=["china"], none=["opinion"])
    assert not check(TEXT, any_=["wind"], all_=["china"], none=["opinion"])
    assert not check(TEXT, any_=["solar"], all_=["india"], none=["opinion"])


def test_case_folding_goes_beyond_ascii() -> None:
    assert check("Die STRASSE wurde gesperrt", any_=["straße"])
    assert check("ÉCONOMIE française", any_=["économie"])
    assert check("中美经贸磋商取得进展", any_=["中美经贸磋商取得进展"])


def test_full_width_and_ligature_letters_match_plain_ones() -> None:
    assert check("ＷＴＯ ruling", any_=["wto"])
    assert check("the ﬁnal deal", any_=["final"])


def test_line_breaks_and_non_breaking_spaces_between_words() -> None:
    assert check("trade\ndeal", any_=["trade deal"])
    assert check("trade\u00a0deal", any_=["trade deal"])


def test_regex_characters_in_rules_are_literal() -> None:
    assert check("a (b) c", any_=["(b)"])
    assert not check("abc", any_=["a.c"])
    assert check("C++ and C#", any_=["c++"])
    assert check("Section 301 [tariffs]", any_=["[tariffs]"])


def test_blank_rules_are_ignored() -> None:
    assert check(TEXT, any_=["", "  "])
    assert check(TEXT, all_=[""])
    assert check(TEXT, none=["", "\t"])


# --- properties --------------------------------------------------------------------------------

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
phrases = st.lists(words, min_size=1, max_size=3).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(words, min_size=1, max_size=12), st.data())
def test_every_word_and_run_of_words_in_a_text_matches_in_any_case(
    text_words: list[str], data: st.DataObject
) -> None:
    text = " ".join(text_words)
    start = data.draw(st.integers(0, len(text_words) - 1))
    end = data.draw(st.integers(start + 1, len(text_words)))
    phrase = " ".join(text_words[start:end])
    assert check(text, any_=[phrase])
    assert check(text.upper(), any_=[phrase])
    assert check(text, any_=[phrase.upper()])
    assert check(text, all_=[phrase])
    assert not check(text, none=[phrase])


@settings(max_examples=300, deadline=None)
@given(words, words, st.lists(words, max_size=5))
def test_a_word_never_matches_inside_a_longer_word(
    word: str, affix: str, others: list[str]
) -> None:
    assume(word not in others)
    assert not check(" ".join([*others, affix + word, *others]), any_=[word])
    assert not check(" ".join([*others, word + affix, *others]), any_=[word])
    assert check(" ".join([*others, affix, word, *others]), any_=[word])


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60),
    st.lists(phrases | st.text(max_size=6), max_size=4),
    st.lists(phrases | st.text(max_size=6), max_size=4),
    st.lists(phrases | st.text(max_size=6), max_size=4),
)
def test_the_lists_combine_as_any_all_and_not_any(
    text: str, any_: list[str], all_: list[str], none: list[str]
) -> None:
    def one(phrase: str) -> bool:
        return check(text, any_=[phrase])

    given_any = [phrase for phrase in any_ if phrase.strip()]
    expected = (
        (not given_any or any(one(phrase) for phrase in given_any))
        and all(one(phrase) for phrase in all_ if phrase.strip())
        and not any(one(phrase) for phrase in none if phrase.strip())
    )
    assert matches(text, any_=any_, all_=all_, none=none) is expected


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.text(), max_size=4), st.lists(st.text(), max_size=4))
def test_any_text_and_rules_give_an_answer_without_error(
    text: str, any_: list[str], none: list[str]
) -> None:
    assert isinstance(matches(text, any_=any_, all_=any_, none=none), bool)
    # A text that contains all of its "all" rules still passes when more text is added.
    if matches(text, any_=[], all_=any_, none=[]):
        assert matches(f"{text} extra words", any_=[], all_=any_, none=[])
