"""A repeated failure is logged once per interval, not once per attempt (on a clock we move)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from app.clock import FrozenClock
from app.domain.status.view_cache import RevisionWatch
from app.logs import LogThrottle
from tests.conftest import NOW

LOGGER = "pledgewatch.test.throttle"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def throttle(clock: FrozenClock) -> LogThrottle:
    return LogThrottle(every_seconds=60, clock=clock)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def _fail(throttle: LogThrottle, key: str = "db") -> bool:
    try:
        raise ConnectionError("database is down")
    except ConnectionError:
        return throttle.failed(
            logging.getLogger(LOGGER), key, "cannot read %s", "the head", exc_info=True
        )


def test_the_first_failure_is_logged_in_full_and_repeats_are_left_out(
    throttle: LogThrottle, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)

    logged = [_fail(throttle)]
    for _ in range(50):  # ten a second for five seconds
        clock.advance(timedelta(milliseconds=100))
        logged.append(_fail(throttle))

    assert logged == [True] + [False] * 50
    (line,) = _lines(caplog)
    assert line.getMessage() == "cannot read the head"
    assert line.levelno == logging.WARNING
    assert line.exc_info is not None, "the first report carries the traceback"


def test_once_per_interval_a_line_says_how_many_were_left_out(
    throttle: LogThrottle, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    _fail(throttle)
    for _ in range(599):  # a minute at ten a second
        clock.advance(timedelta(milliseconds=100))
        _fail(throttle)
    clock.advance(timedelta(milliseconds=100))  # now a minute since the first line
    assert _fail(throttle)

    _first, second = _lines(caplog)
    assert second.getMessage() == (
        "cannot read the head (still failing: 599 more times since the last report)"
    )
    assert second.__dict__["repeated"] == 599
    assert second.__dict__["error"] == "ConnectionError: database is down"
    assert second.exc_info is None, "no second traceback"


def test_recovery_is_said_once_and_the_next_failure_is_reported_at_once(
    throttle: LogThrottle, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    log = logging.getLogger(LOGGER)
    throttle.recovered(log, "db", "reading again")  # nothing was failing: nothing to say
    _fail(throttle)
    _fail(throttle)
    throttle.recovered(log, "db", "reading again")
    throttle.recovered(log, "db", "reading again")
    clock.advance(timedelta(seconds=1))

    assert _fail(throttle), "a new outage is news"
    assert [line.getMessage() for line in _lines(caplog)] == [
        "cannot read the head",
        "reading again",
        "cannot read the head",
    ]


def test_failures_of_different_keys_are_reported_apart(
    throttle: LogThrottle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    assert _fail(throttle, "evaluate")
    assert _fail(throttle, "deliver")
    assert not _fail(throttle, "evaluate")
    assert len(_lines(caplog)) == 2


def test_as_a_filter_it_throttles_another_library_s_records(
    throttle: LogThrottle, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    library = logging.getLogger(LOGGER)
    library.addFilter(throttle)
    try:
        for attempt in range(30):
            try:
                raise TimeoutError(f"attempt {attempt}")
            except TimeoutError:
                library.exception('Job "%s" raised an exception', f"evaluate #{attempt}")
            clock.advance(timedelta(seconds=5))
        library.warning("something else")  # another message is another key
    finally:
        library.removeFilter(throttle)

    lines = _lines(caplog)
    # Attempt 0 in full, attempt 12 (60 s later) as a summary of the 11 between; then news.
    assert [line.getMessage() for line in lines] == [
        'Job "evaluate #0" raised an exception',
        'Job "evaluate #12" raised an exception',
        'Job "evaluate #24" raised an exception',
        "something else",
    ]
    assert lines[0].exc_info is not None
    assert lines[1].exc_info is None
    assert lines[1].__dict__["repeated"] == 11
    assert lines[1].__dict__["error"] == "TimeoutError: attempt 12"


def test_the_revision_watch_reports_an_outage_once_not_per_poll(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "pledgewatch.status")
    attempts = 0

    async def failing_read() -> tuple[int, int, str]:
        nonlocal attempts
        attempts += 1
        if attempts == 100:
            raise asyncio.CancelledError  # ends the poll, as the lifespan does
        raise ConnectionError("no such table: revision")

    async def watch() -> None:
        with pytest.raises(asyncio.CancelledError):
            await RevisionWatch(poll_seconds=0).poll(failing_read)

    asyncio.run(watch())

    assert attempts == 100
    reports = [r for r in caplog.records if r.name == "pledgewatch.status"]
    assert [r.getMessage() for r in reports] == ["reading the revision failed; retrying"]
