"""Dependencies shared by every router, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.clock import Clock
from app.config import Settings
from app.db import Database
from app.domain.idempotency.handover import KeyRules, context_of
from app.domain.keys.directory import KeyDirectory
from app.domain.keys.service import ANONYMOUS, Principal
from app.errors import Forbidden, Unauthorized
from app.gates import DatabaseGates, adopt

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


async def admitted(request: Request) -> AsyncIterator[None]:
    """Wait, without holding a thread, until this request may use the database."""
    gates: DatabaseGates = request.app.state.gates
    async with gates.admit(write=request.method not in _READ_METHODS):
        yield


def bearer_secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <api key>'")
    return secret.strip()


async def get_principal(request: Request) -> Principal:
    """Who is asking: resolved before the request is admitted to the database.

    Every request that opens a transaction authenticates first (``get_session`` depends
    on this), so a key lookup never waits for a database slot while the request holds one.
    """
    secret = bearer_secret(request)
    if secret is None:
        return ANONYMOUS
    directory: KeyDirectory = request.app.state.keys
    principal = await directory.principal_for(secret)
    if principal is None:
        raise Unauthorized("the API key is unknown, revoked or expired")
    request.state.actor = principal.actor
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def _admitted_until_settled(request: Request) -> AsyncIterator[None]:
    """The request's admission; for a keyed POST, held until its answer is committed.

    The idempotency middleware commits a keyed POST's transaction (with the key's answer in
    it) after the handler, and releases the admission only then.
    """
    context = context_of(request.scope)
    admission = asynccontextmanager(admitted)(request)
    if context is None:
        async with admission:
            yield
        return
    adopt(await context.hold(admission))
    try:
        yield
    finally:
        if not context.pending:
            await context.release()


def get_session(
    request: Request,
    principal: PrincipalDep,
    _: Annotated[None, Depends(_admitted_until_settled, scope="function")],
) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, else rolled back.

    Used with ``scope="function"`` so the commit happens before the response is
    sent: a client is never told 201 for a write that did not commit. The request is
    authenticated before it is admitted, so it holds one database slot at most.

    A POST with an ``Idempotency-Key`` from a known principal claims the key in this
    transaction (a settled key answers with its first answer instead), and the transaction
    is committed by the idempotency middleware once the answer is stored in it.
    """
    database: Database = request.app.state.database
    context = context_of(request.scope)
    if context is None or principal.name is None:
        with database.transaction(write=request.method not in _READ_METHODS) as session:
            yield session
        return
    settings: Settings = request.app.state.settings
    clock: Clock = request.app.state.clock
    rules = KeyRules(
        ttl=timedelta(hours=settings.idempotency_ttl_hours),
        stale=timedelta(seconds=settings.idempotency_stale_seconds),
    )
    yield from context.claimed_transaction(
        database, actor=principal.actor, now=clock.now(), rules=rules
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ClockDep = Annotated[Clock, Depends(get_clock)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def require_role(role: str) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        if principal.role is None:
            raise Unauthorized(f"this needs an API key with role {role} or higher")
        if not principal.has_role(role):
            raise Forbidden(f"this needs role {role} or higher; the key has role {principal.role}")
        return principal

    return check


def require_reader(principal: PrincipalDep, settings: SettingsDep) -> Principal:
    if settings.public_read or principal.has_role("viewer"):
        return principal
    raise Unauthorized("reads need an API key while PLEDGEWATCH_PUBLIC_READ is false")


Reader = Annotated[Principal, Depends(require_reader)]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Analyst = Annotated[Principal, Depends(require_role("analyst"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
