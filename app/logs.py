"""Structured logs: one JSON object a line, with the request id when there is one.

Every line goes through ``redact_text`` (app/redact.py) on its way out: a URL in
a message, an ``extra`` field or a traceback loses its credentials and query
values, whichever code logged it (ours, httpx's, uvicorn's).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.clock import Clock, SystemClock
from app.redact import redact_text, redact_value

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _shown(value: Any) -> str:
    # What json cannot encode is written as its str(), which may hold a URL too.
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact_value(value)
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(entry, default=_shown, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain-text lines (``PLEDGEWATCH_LOG_JSON=false``), redacted like the JSON ones."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure_logging(level: str, *, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else TextFormatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would repeat ours without the request id.
    logging.getLogger("uvicorn.access").disabled = True


# A failure repeated by a loop (a poll every second, a job every few) is logged this often.
REPEAT_SECONDS = 60.0


class LogThrottle(logging.Filter):
    """Logs a repeated failure once per interval, not once per attempt.

    A loop that fails on every turn (the database is down, the schema is behind) would
    otherwise write the same traceback ten times a second. The first failure of an
    episode is logged in full; later ones only once ``every_seconds`` have passed since
    the last line, which then says how many were left out (``repeated``) and carries no
    traceback; ``recovered`` ends the episode with one line. Failures are told apart by
    a key the caller chooses.

    It is also a logging ``Filter``: on a logger others write to (APScheduler's, which
    logs every failed job run), it throttles their records, keyed by logger, message
    template and exception type.
    """

    def __init__(self, *, every_seconds: float = REPEAT_SECONDS, clock: Clock | None = None):
        super().__init__()
        self._every = timedelta(seconds=every_seconds)
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # key -> (when last logged, attempts left out since)
        self._failing: dict[Hashable, tuple[datetime, int]] = {}

    def _admit(self, key: Hashable) -> tuple[bool, int | None]:
        """Whether to log this occurrence of ``key``, and how many were left out before it
        (None for the first of an episode)."""
        now = self._clock.now()
        with self._lock:
            last = self._failing.get(key)
            if last is None or now - last[0] >= self._every:
                self._failing[key] = (now, 0)
                return True, None if last is None else last[1]
            self._failing[key] = (last[0], last[1] + 1)
            return False, last[1] + 1

    def failed(
        self,
        logger: logging.Logger,
        key: Hashable,
        message: str,
        *args: object,
        level: int = logging.WARNING,
        exc_info: bool | BaseException = False,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """Log ``message`` for ``key`` unless it was logged less than an interval ago;
        True when it was logged. The traceback (``exc_info``) only comes with the first."""
        logged, left_out = self._admit(key)
        if not logged:
            return False
        details = dict(extra or {})
        if left_out is not None:
            details["repeated"] = left_out
            message += " (still failing: %d more times since the last report)"
            args = (*args, left_out)
            error = exc_info if isinstance(exc_info, BaseException) else None
            if exc_info is True:
                error = sys.exc_info()[1]
            if error is not None:
                details.setdefault("error", f"{type(error).__name__}: {error}")
            exc_info = False
        logger.log(level, message, *args, exc_info=exc_info or None, extra=details)
        return True

    def recovered(self, logger: logging.Logger, key: Hashable, message: str) -> None:
        """End ``key``'s episode of failures, saying so once if there was one."""
        with self._lock:
            episode = self._failing.pop(key, None)
        if episode is not None:
            logger.info(message)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, str(record.msg), type(error).__name__ if error else None)
        logged, left_out = self._admit(key)
        if logged and left_out is not None:
            record.repeated = left_out
            # The first record of the episode had the traceback; the summary needs none.
            record.exc_info = None
            record.exc_text = None
            record.error = f"{type(error).__name__}: {error}" if error else None
        return logged
