"""HTTP for ``/events``: the ledger's events as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import WithJsonSchema
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from app.deps import Reader, SettingsDep, bearer_secret
from app.domain.events.service import EVENT_KINDS, Event
from app.domain.events.stream import EventBroadcaster
from app.domain.keys.directory import KeyDirectory
from app.errors import InvalidInput
from app.problems import PROBLEM_JSON, problems

router = APIRouter(tags=["events"])
log = logging.getLogger("pledgewatch.events")

# Ledger seqs are 64-bit integers in both databases; a larger id could not be compared.
MAX_SEQ = 2**63 - 1
# Asks browsers to reconnect this soon after a dropped connection (their default varies).
RETRY_MILLISECONDS = 3000
# A client whose socket accepts nothing for this long has stopped reading: its stream is
# dropped (and its slot freed); it resumes from Last-Event-ID when it comes back.
SEND_TIMEOUT_SECONDS = 60.0
# A stream opened with a key asks this often whether the key still holds.
KEY_CHECK_SECONDS = 5.0
# On shutdown, how long a stream may take to end by itself before it is cut off.
SHUTDOWN_GRACE_SECONDS = 2.0
SEPARATOR = "\n"

_NAME = "(" + "|".join(re.escape(kind) for kind in EVENT_KINDS) + ")"
EVENTS_PATTERN = rf"^ *{_NAME} *(, *{_NAME} *)*$"
EVENTS_MAX_LENGTH = 200
# The pattern is documented, not enforced by FastAPI: parse_kinds checks the same thing and
# names the unknown event in its answer, which a failed pattern match could not.
EventsFilter = Annotated[
    str,
    WithJsonSchema({"type": "string", "pattern": EVENTS_PATTERN, "maxLength": EVENTS_MAX_LENGTH}),
]

_STREAM_DESCRIPTION = (
    "A `text/event-stream` that does not end. The first message carries no data, only `id:` "
    "(where the stream starts) and `retry:`; then one message per event, `id:` its ledger `seq`, "
    "`event:` its kind and `data:` a JSON document "
    '(`{"seq", "event", "at", "subject", "data"}`); comment lines (`: ping`) keep an idle '
    "connection open."
)
_EXAMPLE = (
    ": pledgewatch events after seq 41: status.changed, evidence.added, proposal.created\n"
    "id: 41\nretry: 3000\n\n"
    "id: 42\nevent: status.changed\n"
    'data: {"seq":42,"event":"status.changed","at":"2025-01-15T12:00:00Z",'
    '"subject":"status_change:7","data":{"status_change_id":7,"pledge_id":"...",'
    '"from_status":"not_yet_rated","to_status":"in_progress","...":"..."}}\n\n'
    ": ping\n\n"
)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": _STREAM_DESCRIPTION,
        "content": {
            "text/event-stream": {"schema": {"type": "string"}, "example": _EXAMPLE},
        },
    },
    **problems(401, 403, 422),
    503: {
        "description": "This server already serves its maximum of event streams "
        "(PLEDGEWATCH_SSE_MAX_CLIENTS); retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        },
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


def get_broadcaster(request: Request) -> EventBroadcaster:
    broadcaster: EventBroadcaster = request.app.state.events
    return broadcaster


BroadcasterDep = Annotated[EventBroadcaster, Depends(get_broadcaster)]


async def stream_slot(broadcaster: BroadcasterDep) -> AsyncIterator[None]:
    """One of the process's stream slots, held until the response has ended.

    A dependency with the request's scope is closed after the response has ended: the
    slot is freed whether the client left, the server stopped or the request failed.
    """
    with broadcaster.slot():
        yield


class EventStreamResponse(EventSourceResponse):
    """An SSE response that drops a client which stopped reading instead of failing."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning(
                "events stream dropped: the client accepted nothing for %s seconds",
                self.send_timeout,
                extra={"request_id": scope.get("state", {}).get("request_id")},
            )


# Read by hand, not as a FastAPI parameter: an optional parameter would be documented as
# "integer or null", and a header cannot be null (fuzzers would send the text "null").
_LAST_EVENT_ID: dict[str, Any] = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The id of the last event you received: the stream resumes after it. "
    "Browsers send it themselves when they reconnect; it wins over `after`.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
}
_SEQ = re.compile(r"[0-9]{1,19}")


def parse_last_event_id(value: str | None) -> int | None:
    """The ``Last-Event-ID`` header: a ledger seq, as this service sends event ids."""
    if value is None:
        return None
    text = value.strip()
    if not _SEQ.fullmatch(text) or int(text) > MAX_SEQ:
        raise InvalidInput(
            "Last-Event-ID", "must be a non-negative integer: the id of an event you received"
        )
    return int(text)


def parse_kinds(value: str | None) -> tuple[str, ...]:
    """The ``events`` filter: a comma-separated subset of the event kinds."""
    if value is None:
        return EVENT_KINDS
    # Spaces only, as the documented pattern allows: a tab or newline is not a separator.
    names = {name.strip(" ") for name in value.split(",")}
    if names == {""}:
        raise InvalidInput("events", f"must name one or more of {', '.join(EVENT_KINDS)}")
    unknown = sorted(names - set(EVENT_KINDS))
    if unknown:
        raise InvalidInput(
            "events",
            f"{unknown[0]!r} is not an event; choose from {', '.join(EVENT_KINDS)}",
        )
    return tuple(kind for kind in EVENT_KINDS if kind in names)


def event_message(event: Event) -> ServerSentEvent:
    data = json.dumps(event.document(), ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=data, event=event.kind, id=str(event.seq), sep=SEPARATOR)


async def end_when_key_lapses(
    directory: KeyDirectory, secret: str, stop: anyio.Event, *, every: float = KEY_CHECK_SECONDS
) -> None:
    """Set ``stop`` once the stream's key is revoked, rotated away or expired.

    A key is refused at once on every new request; a stream is one request that lasts, so
    it asks again every ``every`` seconds (the directory answers from memory for most).
    """
    while not stop.is_set():
        await asyncio.sleep(every)
        try:
            principal = await directory.principal_for(secret)
        except Exception as error:  # the database busy or away: ask again next time
            log.debug("cannot check an events stream's key: %s", error)
            continue
        if principal is None:
            stop.set()


async def messages(
    broadcaster: EventBroadcaster,
    *,
    start: int,
    kinds: Collection[str],
    stop: anyio.Event,
    key_watch: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    watching = asyncio.ensure_future(key_watch()) if key_watch is not None else None
    try:
        # The id-only first message pins where this stream starts: a browser that loses the
        # connection before any event arrives still resumes from here, not from a later head.
        yield ServerSentEvent(
            comment=f"pledgewatch events after seq {start}: {', '.join(kinds)}",
            id=str(start),
            retry=RETRY_MILLISECONDS,
            sep=SEPARATOR,
        )
        async for event in broadcaster.follow(after=start, kinds=kinds, stop=stop):
            yield event_message(event)
    finally:
        if watching is not None:
            watching.cancel()


@router.get(
    "/events",
    response_class=EventStreamResponse,
    response_model=None,
    responses=_RESPONSES,
    openapi_extra={"parameters": [_LAST_EVENT_ID]},
)
async def stream_events(
    request: Request,
    _: Reader,
    __: Annotated[None, Depends(stream_slot)],
    settings: SettingsDep,
    broadcaster: BroadcasterDep,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_SEQ,
            description="Start after this ledger seq (for a first connection, which cannot "
            "send Last-Event-ID). With neither, the stream starts at the ledger's head: "
            "only new events.",
        ),
    ] = None,
    events: Annotated[
        EventsFilter | None,
        Query(
            max_length=EVENTS_MAX_LENGTH,
            description="Only these events, comma-separated: "
            "`status.changed`, `evidence.added`, `proposal.created`. Default: all.",
        ),
    ] = None,
) -> EventStreamResponse:
    """Server-Sent Events: `status.changed`, `evidence.added`, `proposal.created`.

    Each event's `id` is its ledger `seq`. Reconnecting with `Last-Event-ID` (or `after`)
    gives every event after it, in order, nothing twice. New events arrive as they are
    committed, by any process on the same database. Streams are counted: beyond
    `PLEDGEWATCH_SSE_MAX_CLIENTS` per process the answer is `503` with `Retry-After`.
    """
    kinds = parse_kinds(events)
    last_event_id = parse_last_event_id(request.headers.get("last-event-id"))
    start = last_event_id if last_event_id is not None else after
    if start is None:
        start = await broadcaster.current_head()
    # Set by sse-starlette when the server shuts down: the stream then ends as a stream
    # ends (its last chunk sent), instead of being cut off mid-response, and the client
    # reconnects with its Last-Event-ID to whichever server is up.
    shutting_down = anyio.Event()
    # A stream opened with a key ends the same way once the key lapses; the client's
    # reconnection is then refused (401) like any request with that key.
    secret = bearer_secret(request)
    key_watch = (
        partial(end_when_key_lapses, request.app.state.keys, secret, shutting_down)
        if secret is not None
        else None
    )
    return EventStreamResponse(
        messages(broadcaster, start=start, kinds=kinds, stop=shutting_down, key_watch=key_watch),
        shutdown_event=shutting_down,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
        ping=settings.sse_heartbeat_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep=SEPARATOR),
        sep=SEPARATOR,
        send_timeout=SEND_TIMEOUT_SECONDS,
    )
