"""The ceilings ``/status`` is benchmarked against, mounted only in bench mode (bench/).

``GET /bench/reference/status`` answers the bytes of a ``/status`` body copied
beforehand (``PUT /bench/reference/status``): the fastest this process can send that
many bytes. ``GET /bench/reference/empty`` answers an empty ``204``: the fastest it can
answer at all. Both pass through the same middleware as every request.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(prefix="/bench/reference", tags=["bench"], include_in_schema=False)


@router.put("/status", status_code=204)
async def copy_status(request: Request) -> Response:
    """Keep the request's body (the benchmark sends a ``/status`` body it just read)."""
    request.app.state.reference_status = await request.body()
    return Response(status_code=204)


@router.get("/status")
async def reference_status(request: Request) -> Response:
    """The copied body, precomputed: nothing is read or rendered per request."""
    body: bytes = getattr(request.app.state, "reference_status", b"")
    return Response(body, media_type="application/json")


@router.get("/empty", status_code=204)
async def reference_empty() -> Response:
    """Nothing at all: the cost of a request itself."""
    return Response(status_code=204)
