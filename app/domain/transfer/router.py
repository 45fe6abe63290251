"""HTTP for export: the whole state as one streamed JSON document, or a CSV of the pledges."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import ClockDep, DatabaseDep, Reader, SessionDep
from app.domain.transfer import service
from app.domain.transfer.schemas import ExportDocument, ExportFormat, ExportScope
from app.gates import DatabaseGates
from app.problems import READ_ERRORS, problems
from app.redact import NO_STORE_HEADERS

router = APIRouter(tags=["export"])

_EXPORT_RESPONSES = {
    200: {
        "description": "The export: a JSON document (`format=json`) or a CSV file (`format=csv`), "
        "as an attachment.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **problems(*READ_ERRORS),
}


async def _admitted_stream(gates: DatabaseGates, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Stream ``chunks`` (made in worker threads) while holding a database admission.

    The export's snapshot holds a connection for as long as the body takes to send,
    so it is counted like any other request's; it is taken only once the handler's
    own admission is released, so one request never waits for a second slot.
    """
    async with gates.admit(write=False):
        try:
            while True:
                chunk = await run_in_threadpool(next, chunks, b"")
                if not chunk:
                    return
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_close, chunks)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


@router.get(
    "/export",
    response_model=ExportDocument,
    responses=_EXPORT_RESPONSES,
)
def export(
    request: Request,
    session: SessionDep,
    database: DatabaseDep,
    clock: ClockDep,
    principal: Reader,
    export_format: Annotated[
        ExportFormat,
        Query(
            alias="format",
            description="json: everything needed to rebuild the state, ledger included "
            "(`pledgewatch import`); csv: one row per pledge.",
        ),
    ] = "json",
) -> Response:
    """For an admin, everything needed to rebuild this Pledgewatch (`format=json`, streamed
    from one consistent snapshot, webhook secrets included: `"scope": "complete"`); for any
    other reader, the same document with only what every reader may see (`"scope": "public"`:
    no sources, source runs or webhooks, whose URLs may hold credentials; the ledger whole;
    not importable). Or one row per pledge as in `/status` (`format=csv`; cells a spreadsheet
    would run as formulas start with an apostrophe).

    Always left out: API keys, idempotency records, the scheduler's lease, job runs and jobs,
    and webhook deliveries (the document lists what it leaves out under `excluded`)."""
    now = clock.now()
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if export_format == "csv":
        body = service.export_csv(session, now=now)
        return Response(
            body.encode("utf-8"),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="pledgewatch-{stamp}.csv"',
                "Cache-Control": "no-store",
            },
        )
    scope: ExportScope = "complete" if principal.has_role("admin") else "public"
    chunks = service.stream_export(database, now=now, scope=scope)
    return StreamingResponse(
        _admitted_stream(request.app.state.gates, chunks),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="pledgewatch-{stamp}.json"',
            **NO_STORE_HEADERS,
        },
    )
