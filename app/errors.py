"""Domain errors carry their HTTP status; one place renders them as problem+json."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def field_path(loc: Sequence[int | str]) -> str:
    """A validation location as clients write it: ``links[0].pledge_id``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path


def describe(error: Mapping[str, Any]) -> str:
    """The message for one pydantic error, in the service's words where pydantic's mislead."""
    if error.get("type") == "extra_forbidden":
        return "is not a field of this request"
    return str(error.get("msg", "is invalid"))


def field_errors(errors: Iterable[Mapping[str, Any]], *, whole: str) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field", "message"}``; ``whole`` names an error of the whole value."""
    return [
        {"field": field_path(e.get("loc", ())) or whole, "message": describe(e)} for e in errors
    ]


class DomainError(Exception):
    """A rule of the service was not met. Rendered as RFC 9457 problem details."""

    status: int = 400
    title: str = "Bad request"
    type_suffix: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return f"https://pledgewatch.dev/problems/{self.type_suffix}"


class NotFound(DomainError):
    status = 404
    title = "Not found"
    type_suffix = "not-found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"
    type_suffix = "conflict"


class PreconditionFailed(DomainError):
    status = 412
    title = "Precondition failed"
    type_suffix = "precondition-failed"


class InvalidInput(DomainError):
    status = 422
    title = "Invalid input"
    type_suffix = "validation"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", errors=[{"field": field, "message": message}])


class Unauthorized(DomainError):
    status = 401
    title = "Unauthorized"
    type_suffix = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"
    type_suffix = "forbidden"


class DatabaseBusy(DomainError):
    """Too many requests already wait for the database, or this one waited too long: the
    request is shed (503) so that overload costs bounded memory and time."""

    status = 503
    title = "Service unavailable"
    type_suffix = "database-busy"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})
