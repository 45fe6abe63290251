"""Secrets in URLs: userinfo, query values and fragments are hidden; the rest stays readable."""

from __future__ import annotations

import pytest

from app.redact import redact_text, redact_url, redact_value


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pass@host.example/feed?token=abc",
            "https://***@host.example/feed?token=***",
        ),
        ("https://user@host.example:8443/x", "https://***@host.example:8443/x"),
        # An unencoded "@" in a password: the host is what follows the last one.
        ("https://me:p@ss@host.example/", "https://***@host.example/"),
        (
            "http://host.example/a/b.csv?key=k1&format=csv&empty=&bare",
            "http://host.example/a/b.csv?key=***&format=***&empty=&***",
        ),
        ("https://host.example/cb#access_token=xyz", "https://host.example/cb#***"),
        ("https://host.example/cb?#", "https://host.example/cb?#"),
        ("https://host.example/feed.xml", "https://host.example/feed.xml"),
        ("https://host.example", "https://host.example"),
        (
            "postgresql+psycopg://postgres:hunter2@db:5432/pw?sslpassword=x",
            "postgresql+psycopg://***@db:5432/pw?sslpassword=***",
        ),
        # Too broken to parse (an unclosed IPv6 bracket): redacted all the same.
        ("http://u:p@[::1/feed?t=s", "http://***@[::1/feed?t=***"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_url_in_a_text_is_redacted_and_the_sentence_kept() -> None:
    text = (
        "fetching 'https://user:pass@a.example/f?token=abc' failed; then "
        "http://b.example/x?sig=s3cr3t answered 500 (see https://c.example/doc?page=2)."
    )
    assert redact_text(text) == (
        "fetching 'https://***@a.example/f?token=***' failed; then "
        "http://b.example/x?sig=*** answered 500 (see https://c.example/doc?page=***)."
    )


def test_a_url_inside_json_text_keeps_the_json_intact() -> None:
    # A backslash (a JSON escape) ends a URL: a redaction never eats into an escape.
    text = '{"said": "\\"https://u:p@h.example/?t=1\\""}'
    assert redact_text(text) == '{"said": "\\"https://***@h.example/?t=***\\""}'


def test_redact_value_reaches_into_containers() -> None:
    value = {
        "url": "https://u:p@h.example/?t=1",
        "attempts": [1, "see https://h.example/?t=2"],
        "pair": ("https://h.example/#frag", None),
        "count": 3,
    }
    assert redact_value(value) == {
        "url": "https://***@h.example/?t=***",
        "attempts": [1, "see https://h.example/?t=***"],
        "pair": ["https://h.example/#***", None],
        "count": 3,
    }
