"""HTTP for the ledger: its entries in order, and a verification anyone can ask for."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.deps import DatabaseDep, Reader, SessionDep
from app.domain.ledger import service
from app.domain.ledger.schemas import LedgerEntryOut, LedgerPage, VerifyProblem, VerifyResult
from app.errors import InvalidInput
from app.pagination import decode_cursor, encode_cursor
from app.problems import READ_ERRORS, problems

router = APIRouter(tags=["ledger"])


@router.get("/ledger", response_model=LedgerPage, responses=problems(*READ_ERRORS))
def list_entries(
    session: SessionDep,
    _: Reader,
    after: Annotated[
        int | None,
        Query(ge=0, le=2**62, description="Entries with a greater seq (0: from the start)."),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> LedgerPage:
    """Ledger entries in ``seq`` order, ``after`` a given seq. Recompute each ``hash`` from
    ``prev_hash`` and the entry to check the chain yourself."""
    if after is not None and cursor is not None:
        raise InvalidInput("cursor", "give either after or cursor, not both")
    start = after or 0
    position = decode_cursor(cursor, 1)
    if position is not None:
        if not isinstance(position[0], int) or position[0] < 0:
            raise InvalidInput("cursor", "is not a cursor this service gave out")
        start = position[0]
    rows = service.entries(session, after=start, limit=limit + 1)
    items = [LedgerEntryOut.model_validate(row, from_attributes=True) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].seq) if len(rows) > limit else None
    return LedgerPage(items=items, next_cursor=next_cursor)


@router.get("/ledger/verify", response_model=VerifyResult, responses=problems(*READ_ERRORS))
def verify(request: Request, database: DatabaseDep, _: Reader) -> VerifyResult:
    """Recompute the whole chain and compare every row with the entry that last recorded it.

    ``ok: false`` names the first bad ``seq`` and the row it concerns: an entry edited
    or removed, or a row changed, deleted or added without the API.
    """
    lock: threading.Lock = request.app.state.ledger_verify_lock
    # One verification at a time: it reads everything, so a crowd of them would only
    # slow each other (and everyone else) down.
    with lock:
        verdict = service.verify_database(database)
    first = verdict.first_bad
    return VerifyResult(
        ok=verdict.ok,
        length=verdict.length,
        head=verdict.head,
        first_bad_seq=first.seq if first else None,
        first_bad_subject=first.subject if first else None,
        problems=[
            VerifyProblem(seq=p.seq, subject=p.subject, reason=p.reason) for p in verdict.problems
        ],
    )
