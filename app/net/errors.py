"""How an outbound request fails: one exception whose message is fit for a record."""

from __future__ import annotations


class FetchError(Exception):
    """A fetch that failed; ``str(error)`` is a sentence fit for a source's run record.

    ``outcome`` is the metric label (``refused``, ``invalid_url``, ``http_error``, ``timeout``,
    ``network_error``, ``too_large``, ``too_many_redirects``, ``error`` for the unforeseen);
    ``status_code`` is the HTTP status when the failure was an answer from the server;
    ``bytes_read`` how many (decoded) bytes of the body were read when it was cut short.
    """

    def __init__(
        self,
        message: str,
        *,
        outcome: str,
        status_code: int | None = None,
        bytes_read: int | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status_code = status_code
        self.bytes_read = bytes_read


class RetryableError(FetchError):
    """A failure worth another attempt: network errors, timeouts and 5xx answers.

    Only the client's retry loop catches it; past the last attempt it becomes a FetchError.
    """
