"""Operational endpoints outside the API: liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.db import Database
from app.system.schema import inspect_schema

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: the reason is given."}})
def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the migrations' head.

    Not ready is a 503 whose ``reason`` tells an unreachable database from one whose
    schema is behind; then ``schema`` gives the revision found, the head this code needs,
    and the revisions missing (``pledgewatch db upgrade`` applies them).
    """
    database: Database = request.app.state.database
    state = inspect_schema(database.probe)
    if state.ready:
        return JSONResponse({"status": "ok", "schema": state.current})
    body: dict[str, object] = {"status": "unavailable", "reason": state.describe()}
    if state.reachable:
        body["schema"] = {"current": state.current, "head": state.head, "missing": state.missing}
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
