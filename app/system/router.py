"""Operational endpoints outside the API: liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.db import Database

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: the reason is given."}})
def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the migrations' head."""
    database: Database = request.app.state.database
    expected: str = request.app.state.schema_head
    try:
        with database.probe() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as error:  # any driver error means "not ready", never a 500
        return JSONResponse(
            {"status": "unavailable", "reason": f"database unreachable: {type(error).__name__}"},
            status_code=503,
        )
    if found != expected:
        return JSONResponse(
            {"status": "unavailable", "reason": f"schema at {found}, expected {expected}"},
            status_code=503,
        )
    return JSONResponse({"status": "ok", "schema": found})


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
