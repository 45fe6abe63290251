"""HTTP for the ledger: its entries in order, and a verification anyone can ask for."""

from __future__ import annotations

import hashlib
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response

from app.db import Database
from app.deps import Reader, SessionDep
from app.domain.ledger import service
from app.domain.ledger.schemas import LedgerEntryOut, LedgerPage, VerifyProblem, VerifyResult
from app.domain.ledger.service import Head
from app.domain.ledger.verifier import LedgerVerifier
from app.domain.status.router import LEDGER_HEAD_HEADER, LEDGER_LENGTH_HEADER
from app.domain.status.view_cache import RevisionWatch
from app.errors import InvalidInput
from app.gates import DatabaseGates
from app.metrics import LEDGER_VERIFY_ANSWERS
from app.pagination import decode_cursor, encode_cursor, etag_matches
from app.problems import READ_ERRORS, problems

router = APIRouter(tags=["ledger"])

# Far beyond any ledger, and within every database's 64-bit integers: a seq past it is
# refused as input, never sent to the database (where it would be an error, not a 422).
MAX_SEQ = 2**62


@router.get("/ledger", response_model=LedgerPage, responses=problems(*READ_ERRORS))
def list_entries(
    session: SessionDep,
    _: Reader,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEQ, description="Entries with a greater seq (0: from the start)."),
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
        seq = position[0]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise InvalidInput("cursor", "is not a cursor this service gave out")
        start = seq
    rows = service.entries(session, after=start, limit=limit + 1)
    items = [LedgerEntryOut.model_validate(row, from_attributes=True) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].seq) if len(rows) > limit else None
    return LedgerPage(items=items, next_cursor=next_cursor)


@router.get(
    "/ledger/verify",
    response_model=VerifyResult,
    responses={
        304: {"description": "The verdict named by If-None-Match still stands."},
        **problems(*READ_ERRORS),
    },
)
async def verify(
    request: Request,
    _: Reader,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """Recompute the whole chain, compare every row with the entry that last recorded it,
    and recompute what each pledge shows (status, verification, counts, dated summaries).

    ``ok: false`` names the first bad ``seq`` and the row it concerns: an entry edited
    or removed, a row changed, deleted or added without the API, or a pledge's derived
    state that its history and evidence do not make. A verdict is kept for the ledger
    head it verified (``X-Pledgewatch-Ledger-Length`` and ``-Head``, the ``ETag``): while
    the head stays there, it is answered at once (or ``304``).
    """
    verifier: LedgerVerifier = request.app.state.ledger_verifier
    head = await _current_head(request)
    verdict = verifier.reusable(head)
    how = "reused"
    if verdict is None:
        how = "run"
        verdict = await verifier.verdict(head, until=_client_gone(request))
        if verdict is None:
            LEDGER_VERIFY_ANSWERS.labels("gone").inc()
            # Nobody reads this: the client has gone (the access log shows nginx's 499).
            return Response(status_code=499)
    body = _result(verdict).model_dump_json().encode()
    recorded = verdict.recorded or Head(verdict.length, verdict.head)
    headers = {
        "ETag": f'"{hashlib.sha256(body).hexdigest()[:32]}"',
        "Cache-Control": "no-cache",
        LEDGER_LENGTH_HEADER: str(recorded.length),
        LEDGER_HEAD_HEADER: recorded.hash,
    }
    if etag_matches(headers["ETag"], if_none_match):
        LEDGER_VERIFY_ANSWERS.labels("not_modified").inc()
        return Response(status_code=304, headers=headers)
    LEDGER_VERIFY_ANSWERS.labels(how).inc()
    return Response(body, media_type="application/json", headers=headers)


def _result(verdict: service.Verdict) -> VerifyResult:
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


async def _current_head(request: Request) -> Head:
    """The ledger head now: known without a read most of the time, else one short read
    (admitted like any request's, and let go before the verification is waited for)."""
    watch: RevisionWatch | None = getattr(request.app.state, "revision_watch", None)
    state = watch.current() if watch is not None else None
    if state is not None:
        return Head(state[1], state[2])
    database: Database = request.app.state.database
    gates: DatabaseGates = request.app.state.gates

    def read() -> Head:
        with database.transaction(write=False) as session:
            return service.read_head(session)

    async with gates.admit(write=False):
        return await anyio.to_thread.run_sync(read)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request has no body left to read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
