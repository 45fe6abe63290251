"""HTTP for API keys (admin only). Rules live in the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Path, Request, Response
from sqlalchemy import event
from sqlalchemy.orm import Session
from starlette.convertors import Convertor, register_url_convertor

from app.deps import Admin, ClockDep, SessionDep
from app.domain.keys import service
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.schemas import KeyCreate, KeyIssued, KeyOut, KeyRotate, key_out
from app.domain.pledges.router import Cursor, Limit
from app.pagination import Page
from app.problems import READ_ERRORS, WRITE_ERRORS, problems
from app.redact import NO_STORE_HEADERS

router = APIRouter(tags=["keys"])


class _KeyNameConvertor(Convertor[str]):
    """A key's name in a URL. Names may hold any printable character, "/" included (sent
    percent-encoded, but decoded before routing), so a name may span path segments; it may
    not end in ``/revoke`` or ``/rotate``, so that ``GET`` never claims those actions' URLs."""

    regex = r"(?:(?!/(?:revoke|rotate)$).)+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("key_name", _KeyNameConvertor())

KeyName = Annotated[str, Path(min_length=1, max_length=100, description="The key's name.")]


def _after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once this request's transaction has committed (never if it rolls back).

    The cache is told only after the commit: a lookup in between would read the old row.
    """
    event.listen(session, "after_commit", lambda _session: action(), once=True)


def _directory(request: Request) -> KeyDirectory:
    directory: KeyDirectory = request.app.state.keys
    return directory


@router.get("/keys", response_model=Page[KeyOut], responses=problems(*READ_ERRORS))
def list_keys(
    session: SessionDep, clock: ClockDep, _: Admin, limit: Limit = 50, cursor: Cursor = None
) -> Page[KeyOut]:
    """Every key by name, revoked and expired ones included. Never a secret or a hash."""
    rows, next_cursor = service.list_keys(session, limit=limit, cursor=cursor)
    now = clock.now()
    return Page[KeyOut](items=[key_out(row, now=now) for row in rows], next_cursor=next_cursor)


@router.post("/keys", status_code=201, response_model=KeyIssued, responses=problems(*WRITE_ERRORS))
def create_key(
    body: KeyCreate, session: SessionDep, clock: ClockDep, principal: Admin, response: Response
) -> KeyIssued:
    """Create a key (``expires_in`` like ``90d``, or ``expires_at``; never expires without
    either). The secret is in this answer only (``Cache-Control: no-store``); a name in use
    is a 409."""
    now = clock.now()
    expires_at = service.expiry(now, expires_in=body.expires_in, expires_at=body.expires_at)
    issued = service.issue_key(
        session, name=body.name, role=body.role, now=now, expires_at=expires_at
    )
    _after_commit(
        session, lambda: service.log_key_event("created", issued.key, actor=principal.actor)
    )
    response.headers["Location"] = f"/api/v1/keys/{quote(issued.key.name, safe='')}"
    response.headers.update(NO_STORE_HEADERS)
    return KeyIssued(**key_out(issued.key, now=now).model_dump(), secret=issued.secret)


@router.get("/keys/{name:key_name}", response_model=KeyOut, responses=problems(*READ_ERRORS, 404))
def get_key(name: KeyName, session: SessionDep, clock: ClockDep, _: Admin) -> KeyOut:
    """One key (without its secret)."""
    return key_out(service.get_key(session, name), now=clock.now())


@router.post(
    "/keys/{name:path}/revoke", response_model=KeyOut, responses=problems(*WRITE_ERRORS, 404)
)
def revoke_key(
    name: KeyName, session: SessionDep, clock: ClockDep, principal: Admin, request: Request
) -> KeyOut:
    """Revoke a key for good: it is a 401 at once in this process, and within a few seconds
    in every other. Revoking it again changes nothing. A key cannot revoke itself (409), so
    the admin revoking keys here keeps a working key; `pledgewatch keys revoke` can revoke
    any key."""
    now = clock.now()
    key = service.revoke_key(session, name, now=now, requested_by=principal.name)
    directory = _directory(request)
    key_hash = key.key_hash

    def committed() -> None:
        directory.forget(key_hash)
        service.log_key_event("revoked", key, actor=principal.actor)

    _after_commit(session, committed)
    return key_out(key, now=now)


@router.post(
    "/keys/{name:path}/rotate", response_model=KeyIssued, responses=problems(*WRITE_ERRORS, 404)
)
def rotate_key(
    name: KeyName,
    session: SessionDep,
    clock: ClockDep,
    principal: Admin,
    request: Request,
    response: Response,
    body: Annotated[KeyRotate | None, Body()] = None,
) -> KeyIssued:
    """Give the key a new secret, same name and role; the old secret stops working (at once
    here, within a few seconds in every other process). Without an expiry in the body an
    expiring key keeps its lifetime. A revoked key is a 409. The secret is in this answer
    only (``Cache-Control: no-store``)."""
    now = clock.now()
    wanted = body or KeyRotate()
    expires_at = service.expiry(now, expires_in=wanted.expires_in, expires_at=wanted.expires_at)
    issued = service.rotate_key(session, name, now=now, expires_at=expires_at)
    directory = _directory(request)

    def committed() -> None:
        directory.forget(issued.replaced_hash)
        service.log_key_event("rotated", issued.key, actor=principal.actor)

    _after_commit(session, committed)
    response.headers.update(NO_STORE_HEADERS)
    return KeyIssued(**key_out(issued.key, now=now).model_dump(), secret=issued.secret)
