"""No log line shows a secret in a URL, whichever part of the record carries it."""

from __future__ import annotations

import json
import logging
import sys

from app.logs import JsonFormatter, TextFormatter

URL = "https://feeduser-q:hunter2@feeds.example.org/feed?token=tok-9z&page=2"
SHOWN = "https://***@feeds.example.org/feed?token=***&page=***"
SECRETS = ("feeduser-q", "hunter2", "tok-9z")


class _Opaque:
    """A value json cannot encode, written as its str()."""

    def __str__(self) -> str:
        return f"<client for {URL}>"


def _record(exc_info: bool = False) -> logging.LogRecord:
    error = None
    if exc_info:
        try:
            raise ConnectionError(f"could not reach {URL}")
        except ConnectionError:
            error = sys.exc_info()
    return logging.getLogger("pledgewatch.test").makeRecord(
        "pledgewatch.test",
        logging.WARNING,
        __file__,
        1,
        "fetching %s failed",
        (URL,),
        error,
        extra={
            "url": URL,
            "attempts": [{"url": URL, "status": 503}],
            "client": _Opaque(),
            "count": 2,
        },
    )


def test_the_json_formatter_redacts_the_message_every_extra_and_the_traceback() -> None:
    line = JsonFormatter().format(_record(exc_info=True))

    for secret in SECRETS:
        assert secret not in line
    entry = json.loads(line)
    assert entry["message"] == f"fetching {SHOWN} failed"
    assert entry["url"] == SHOWN
    assert entry["attempts"] == [{"url": SHOWN, "status": 503}]
    assert entry["client"] == f"<client for {SHOWN}>"
    assert entry["count"] == 2
    assert f"ConnectionError: could not reach {SHOWN}" in entry["exception"]


def test_the_text_formatter_redacts_the_whole_line() -> None:
    formatter = TextFormatter("%(levelname)s %(name)s %(message)s")
    line = formatter.format(_record(exc_info=True))

    for secret in SECRETS:
        assert secret not in line
    assert line.startswith(f"WARNING pledgewatch.test fetching {SHOWN} failed")
    assert f"ConnectionError: could not reach {SHOWN}" in line
