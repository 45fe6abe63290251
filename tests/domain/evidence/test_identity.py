"""Unit tests for what makes two evidence items one: the normalised URL and the content hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.evidence.identity import content_hash, normalise_url, url_key

WHEN = datetime(2024, 4, 2, 18, 0, tzinfo=UTC)


# --- normalise_url ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("HTTPS://EXAMPLE.COM/a", "https://example.com/a"),
        ("Https://News.Example.Org/a", "https://news.example.org/a"),
        ("https://example.com./a", "https://example.com/a"),
        ("  https://example.com/a  ", "https://example.com/a"),
    ],
)
def test_scheme_and_host_are_lower_cased(given_url: str, expected: str) -> None:
    assert normalise_url(given_url) == expected


def test_path_case_is_kept() -> None:
    # Paths are case-sensitive on most servers: /A and /a are different pages.
    assert normalise_url("https://example.com/Report/A") == "https://example.com/Report/A"
    assert normalise_url("https://example.com/A") != normalise_url("https://example.com/a")


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("HTTP://EXAMPLE.COM:80", "http://example.com/"),
    ],
)
def test_default_ports_are_dropped(given_url: str, expected: str) -> None:
    assert normalise_url(given_url) == expected


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        # 443 is only the default for https, 80 only for http.
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
    ],
)
def test_other_ports_are_kept(given_url: str, expected: str) -> None:
    assert normalise_url(given_url) == expected


def test_fragment_is_dropped() -> None:
    assert normalise_url("https://example.com/a#section-2") == "https://example.com/a"
    assert normalise_url("https://example.com/a?x=1#top") == "https://example.com/a?x=1"


@pytest.mark.parametrize(
    "tracking",
    [
        "utm_source=feed",
        "utm_medium=email",
        "utm_campaign=spring",
        "utm_term=x",
        "utm_content=y",
        "UTM_Source=Feed",
        "fbclid=abc",
        "gclid=def",
        "mc_cid=1",
        "mc_eid=2",
    ],
)
def test_tracking_parameters_are_dropped(tracking: str) -> None:
    assert normalise_url(f"https://example.com/a?{tracking}") == "https://example.com/a"
    assert normalise_url(f"https://example.com/a?id=7&{tracking}") == "https://example.com/a?id=7"
    assert normalise_url(f"https://example.com/a?{tracking}&id=7") == "https://example.com/a?id=7"


def test_parameters_that_only_look_like_tracking_are_kept() -> None:
    assert normalise_url("https://example.com/a?utm=1") == "https://example.com/a?utm=1"
    assert normalise_url("https://example.com/a?xutm_source=1") == (
        "https://example.com/a?xutm_source=1"
    )


def test_query_parameters_are_sorted() -> None:
    assert normalise_url("https://example.com/a?b=2&a=1&c=3") == "https://example.com/a?a=1&b=2&c=3"
    assert normalise_url("https://example.com/a?b=2&a=1") == normalise_url(
        "https://example.com/a?a=1&b=2"
    )


def test_repeated_and_blank_parameters_are_kept() -> None:
    assert normalise_url("https://example.com/a?a=2&a=1") == "https://example.com/a?a=1&a=2"
    assert normalise_url("https://example.com/a?flag=&a=1") == "https://example.com/a?a=1&flag="


def test_query_values_are_not_merged() -> None:
    assert normalise_url("https://example.com/a?id=1") != normalise_url(
        "https://example.com/a?id=2"
    )


def test_query_encoding_is_canonical() -> None:
    assert normalise_url("https://example.com/a?q=a%20b") == normalise_url(
        "https://example.com/a?q=a+b"
    )


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://example.com/a/", "https://example.com/a"),
        ("https://example.com/a/b//", "https://example.com/a/b"),
        ("https://example.com/", "https://example.com/"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com//", "https://example.com/"),
        ("https://example.com/a/?x=1", "https://example.com/a?x=1"),
    ],
)
def test_trailing_slash_of_the_path_is_removed(given_url: str, expected: str) -> None:
    assert normalise_url(given_url) == expected


def test_everything_at_once() -> None:
    messy = "HTTPS://News.Example.ORG:443/2024/04/02/call/?utm_source=rss&b=2&a=1#comments"
    assert normalise_url(messy) == "https://news.example.org/2024/04/02/call?a=1&b=2"


def test_password_is_not_kept_but_user_is() -> None:
    assert normalise_url("https://user:secret@example.com/a") == "https://user@example.com/a"


def test_ipv6_hosts_keep_their_brackets() -> None:
    # Without brackets "[::1]:8080" and "[::1:8080]" would become the same string.
    assert normalise_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert normalise_url("http://[::1]:8080/x") != normalise_url("http://[::1:8080]/x")
    assert normalise_url("HTTP://[FE80::1]:80/x") == "http://[fe80::1]/x"


def test_url_key_is_a_sha256_of_the_normalised_url() -> None:
    assert url_key(None) is None
    key = url_key("https://example.com/a")
    assert key is not None
    assert len(key) == 64
    assert all(ch in "0123456789abcdef" for ch in key)
    assert url_key("HTTPS://EXAMPLE.COM:443/a/?utm_source=x#f") == key
    assert url_key("https://example.com/b") != key


# Hypothesis: URLs built from parts that vary in exactly the ways normalisation should absorb.

_host_labels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=1,
    max_size=10,
)
_hosts = st.lists(_host_labels, min_size=1, max_size=3).map(".".join)
_segments = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_.~%", max_size=8)
_paths = st.lists(_segments, max_size=4).map(lambda parts: "/" + "/".join(parts))
_param_names = st.sampled_from(["a", "b", "id", "page", "q", "utm_source", "utm_medium", "fbclid"])
_param_values = st.text(alphabet="abcXYZ019 +%&=é/?", max_size=6)
_params = st.lists(st.tuples(_param_names, _param_values), max_size=5)


def _query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in params)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    host = draw(_hosts)
    port = draw(st.sampled_from(["", ":80", ":443", ":8080"]))
    path = draw(_paths)
    params = draw(_params)
    bare_question_mark: bool = draw(st.booleans())
    query = f"?{_query(params)}" if params or bare_question_mark else ""
    fragment = draw(st.sampled_from(["", "#", "#top", "#a/b?c"]))
    return f"{scheme}://{host}{port}{path}{query}{fragment}"


@settings(max_examples=300, deadline=None)
@given(_urls())
def test_normalise_url_is_idempotent(url: str) -> None:
    once = normalise_url(url)
    assert normalise_url(once) == once


@settings(max_examples=200, deadline=None)
@given(_urls())
def test_normalised_url_has_no_fragment_no_tracking_and_lower_case_host(url: str) -> None:
    parts = urlsplit(normalise_url(url))
    assert parts.fragment == ""
    assert parts.scheme in ("http", "https")
    assert parts.netloc == parts.netloc.lower()
    default = {"http": 80, "https": 443}[parts.scheme]
    assert parts.port != default
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    assert not [name for name in names if name.startswith("utm_") or name == "fbclid"]
    assert names == sorted(names)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_query_order_does_not_matter(data: st.DataObject) -> None:
    host = data.draw(_hosts)
    params = data.draw(_params)
    shuffled = data.draw(st.permutations(params))
    first = f"https://{host}/p?{_query(params)}"
    second = f"https://{host}/p?{_query(list(shuffled))}"
    assert normalise_url(first) == normalise_url(second)


# --- content_hash -----------------------------------------------------------------------------


def test_content_hash_is_sha256_hex() -> None:
    digest = content_hash("A title", "A summary", WHEN)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == content_hash("A title", "A summary", WHEN)


def test_content_hash_ignores_case() -> None:
    assert content_hash("Biden And Xi Speak", "THE LEADERS SPOKE", WHEN) == content_hash(
        "biden and xi speak", "the leaders spoke", WHEN
    )


def test_content_hash_ignores_unicode_case_folding() -> None:
    assert content_hash("Straße", "x", WHEN) == content_hash("STRASSE", "x", WHEN)


def test_content_hash_ignores_whitespace_runs_and_edges() -> None:
    assert content_hash("  Biden   and\tXi\n speak ", "one\r\ntwo", WHEN) == content_hash(
        "Biden and Xi speak", "one two", WHEN
    )
    assert content_hash("a\u00a0b", "c\u3000d", WHEN) == content_hash("a b", "c d", WHEN)


def test_content_hash_ignores_unicode_normal_form() -> None:
    composed = "caf\u00e9"
    decomposed = "cafe\u0301"
    assert content_hash(composed, "", WHEN) == content_hash(decomposed, "", WHEN)


def test_content_hash_changes_with_the_words() -> None:
    base = content_hash("A title", "A summary", WHEN)
    assert content_hash("A title!", "A summary", WHEN) != base
    assert content_hash("A title", "Another summary", WHEN) != base
    assert content_hash("Atitle", "A summary", WHEN) != base


def test_content_hash_keeps_title_and_summary_apart() -> None:
    assert content_hash("a b", "c", WHEN) != content_hash("a", "b c", WHEN)


def test_content_hash_changes_with_the_time() -> None:
    base = content_hash("A title", "A summary", WHEN)
    assert content_hash("A title", "A summary", WHEN + timedelta(seconds=1)) != base
    assert content_hash("A title", "A summary", WHEN + timedelta(days=1)) != base


def test_content_hash_of_the_same_instant_in_utc_is_stable() -> None:
    # Callers hand over UTC datetimes (the schema converts); the same UTC instant is one hash.
    other = datetime(2024, 4, 2, 20, 0, tzinfo=timezone(timedelta(hours=2))).astimezone(UTC)
    assert content_hash("t", "s", other) == content_hash("t", "s", WHEN)


_words = st.lists(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs"), blacklist_characters="\x85"
        ),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=6,
)
_spaces = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000\x0b\x0c", min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(title=_words, summary=_words, data=st.data())
def test_content_hash_is_stable_under_whitespace_changes(
    title: list[str], summary: list[str], data: st.DataObject
) -> None:
    def respace(words: list[str]) -> str:
        lead = data.draw(st.one_of(st.just(""), _spaces))
        trail = data.draw(st.one_of(st.just(""), _spaces))
        gaps = [data.draw(_spaces) for _ in words[1:]]
        out = lead + words[0]
        for gap, word in zip(gaps, words[1:], strict=True):
            out += gap + word
        return out + trail

    plain = content_hash(" ".join(title), " ".join(summary), WHEN)
    assert content_hash(respace(title), respace(summary), WHEN) == plain


@settings(max_examples=200, deadline=None)
@given(
    title=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"),
    summary=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"),
)
def test_content_hash_is_stable_under_ascii_case_changes(title: str, summary: str) -> None:
    expected = content_hash(title, summary, WHEN)
    assert content_hash(title.upper(), summary.swapcase(), WHEN) == expected
    assert content_hash(title.lower(), summary.title(), WHEN) == expected
