"""Every route of the app, called with a valid request: none takes a second database slot
while it holds one.

A request that waits for a second slot while holding one waits for itself as soon as
every slot is held that way: twenty ``/events`` requests once wedged the whole server
like this. Here every route (every method, API or not) is called on gates of one
slot, where such a request would hang, and the calls are watched:

- the gates refuse a second admission of one task (``NestedAdmission``, logged): none
  may be logged, and no answer may be a 5xx;
- every pooled connection a call checks out must be taken under an admission, one at a
  time per admission (two would exhaust the pool before the gates, which count one);
- no call may hang.

A route added without a request here fails the test: add one to ``requests_for``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import event, select

from app import main as main_module
from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.deps import DatabaseDep, Reader, SessionDep
from app.domain.events.router import BroadcasterDep
from app.domain.ledger.service import verify_database
from app.domain.proposals.rules import run_evaluation
from app.gates import DatabaseGates, current_admission
from app.main import create_app
from tests.domain.events.support import AsgiStream
from tests.factories import Keys, evidence_body, pledge_body

DOOMED_KEY = "walk-doomed-key"
ROTATED_KEY = "walk-rotated-key"
API = "/api/v1"
# A liveness bound, not a timing assertion: a call that nests on one slot never ends.
CALL_TIMEOUT = 20.0


@dataclass(frozen=True)
class Call:
    """One request: ``role`` names the key it is sent with (None: anonymous)."""

    method: str
    path: str
    role: str | None = "viewer"
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    stream: bool = False


@dataclass
class Seeded:
    """Rows the calls refer to, made through the API before the walk."""

    pledge: str = "walk-pledge"
    evidence: int = 0
    pending: int = 0
    proposals: list[int] = field(default_factory=list)
    source: str = "walk-source"
    doomed_source: str = "walk-source-doomed"
    webhook: int = 0
    doomed_webhook: int = 0


def requests_for(seed: Seeded) -> dict[tuple[str, str], list[Call]]:
    """A valid request (or several) for every route, keyed by method and route path."""
    return {**_outside_the_api(), **_pledges_and_evidence(seed), **_the_rest_of_the_api(seed)}


def _outside_the_api() -> dict[tuple[str, str], list[Call]]:
    table: dict[tuple[str, str], list[Call]] = {}
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"):
        table[("GET", path)] = [Call("GET", path, role=None)]
        table[("HEAD", path)] = [Call("HEAD", path, role=None)]
    return table | {
        ("PUT", "/bench/reference/status"): [
            Call("PUT", "/bench/reference/status", role=None, content=b'{"pledges": []}')
        ],
        ("GET", "/bench/reference/status"): [Call("GET", "/bench/reference/status", role=None)],
        ("GET", "/bench/reference/empty"): [Call("GET", "/bench/reference/empty", role=None)],
        ("GET", "/healthz"): [Call("GET", "/healthz", role=None)],
        ("GET", "/readyz"): [Call("GET", "/readyz", role=None)],
        ("GET", "/metrics"): [Call("GET", "/metrics", role=None)],
        ("GET", "/demo/feed.xml"): [Call("GET", "/demo/feed.xml", role=None)],
    }


def _pledges_and_evidence(seed: Seeded) -> dict[tuple[str, str], list[Call]]:
    pledge = f"{API}/pledges/{seed.pledge}"
    link = [{"pledge_id": seed.pledge, "stance": "supports"}]
    return {
        ("GET", f"{API}/pledges"): [Call("GET", f"{API}/pledges"), Call("GET", f"{API}/pledges")],
        ("POST", f"{API}/pledges"): [
            Call("POST", f"{API}/pledges", "analyst", pledge_body(id="walk-new")),
            # Through the idempotency middleware, which admits on its own around the app.
            Call(
                "POST",
                f"{API}/pledges",
                "analyst",
                pledge_body(id="walk-new-2"),
                headers={"Idempotency-Key": "walk-1"},
            ),
        ],
        ("GET", f"{API}/pledges/{{pledge_id}}"): [Call("GET", pledge)],
        ("PATCH", f"{API}/pledges/{{pledge_id}}"): [
            Call("PATCH", pledge, "analyst", {"topics": ["trade"]})
        ],
        ("GET", f"{API}/pledges/{{pledge_id}}/evidence"): [Call("GET", f"{pledge}/evidence")],
        ("POST", f"{API}/pledges/{{pledge_id}}/evidence"): [
            Call("POST", f"{pledge}/evidence", "analyst", evidence_body(101, stance="supports"))
        ],
        ("POST", f"{API}/evidence"): [
            Call("POST", f"{API}/evidence", "analyst", {**evidence_body(102), "links": link})
        ],
        ("POST", f"{API}/evidence/batch"): [
            Call(
                "POST",
                f"{API}/evidence/batch",
                "collector",
                {"items": [{**evidence_body(n), "links": link} for n in (103, 104)]},
            )
        ],
        ("GET", f"{API}/evidence/{{evidence_id}}"): [
            Call("GET", f"{API}/evidence/{seed.evidence}")
        ],
        ("POST", f"{API}/evidence/{{evidence_id}}/review"): [
            Call(
                "POST",
                f"{API}/evidence/{seed.pending}/review",
                "analyst",
                {"pledge_id": seed.pledge, "review": "accepted"},
            )
        ],
        ("GET", f"{API}/review-queue"): [Call("GET", f"{API}/review-queue", "analyst")],
        ("GET", f"{API}/pledges/{{pledge_id}}/history"): [Call("GET", f"{pledge}/history")],
        ("POST", f"{API}/pledges/{{pledge_id}}/status"): [
            Call("POST", f"{pledge}/status", "analyst", {"status": "in_progress", "reason": "W."})
        ],
    }


def _the_rest_of_the_api(seed: Seeded) -> dict[tuple[str, str], list[Call]]:
    source = {
        "id": seed.source,
        "name": "Walk",
        "kind": "rss",
        "url": "http://127.0.0.1:9/feed.xml",
        "pledges": [seed.pledge],
        "source_type": "independent",
        "reliability": "high",
    }
    return {
        ("GET", f"{API}/status"): [
            # Anonymous and plain: the fast path; with a key and a date: the view.
            Call("GET", f"{API}/status", role=None),
            Call("GET", f"{API}/status", params={"as_of": "2024-06-01T00:00:00Z"}),
        ],
        ("GET", f"{API}/status/{{pledge_id}}/badge.svg"): [
            Call("GET", f"{API}/status/{seed.pledge}/badge.svg")
        ],
        ("GET", f"{API}/sources"): [Call("GET", f"{API}/sources", "admin")],
        ("POST", f"{API}/sources"): [
            Call("POST", f"{API}/sources", "admin", {**source, "id": "walk-source-new"})
        ],
        ("GET", f"{API}/sources/{{source_id}}"): [
            Call("GET", f"{API}/sources/{seed.source}", "admin")
        ],
        ("PATCH", f"{API}/sources/{{source_id}}"): [
            Call("PATCH", f"{API}/sources/{seed.source}", "admin", {"every_minutes": 30})
        ],
        ("DELETE", f"{API}/sources/{{source_id}}"): [
            Call("DELETE", f"{API}/sources/{seed.doomed_source}", "admin")
        ],
        ("POST", f"{API}/sources/{{source_id}}/run"): [
            Call("POST", f"{API}/sources/{seed.source}/run", "admin")
        ],
        ("GET", f"{API}/sources/{{source_id}}/runs"): [
            Call("GET", f"{API}/sources/{seed.source}/runs", "admin")
        ],
        ("GET", f"{API}/proposals"): [Call("GET", f"{API}/proposals", "analyst")],
        ("GET", f"{API}/proposals/{{proposal_id}}"): [
            Call("GET", f"{API}/proposals/{seed.proposals[0]}", "analyst")
        ],
        ("POST", f"{API}/proposals/{{proposal_id}}/confirm"): [
            Call("POST", f"{API}/proposals/{seed.proposals[0]}/confirm", "analyst", {})
        ],
        ("POST", f"{API}/proposals/{{proposal_id}}/dismiss"): [
            Call("POST", f"{API}/proposals/{seed.proposals[1]}/dismiss", "analyst", {})
        ],
        ("GET", f"{API}/webhooks"): [Call("GET", f"{API}/webhooks", "admin")],
        ("POST", f"{API}/webhooks"): [
            Call("POST", f"{API}/webhooks", "admin", {"url": "http://127.0.0.1:9/new"})
        ],
        ("GET", f"{API}/webhooks/{{webhook_id}}"): [
            Call("GET", f"{API}/webhooks/{seed.webhook}", "admin")
        ],
        ("DELETE", f"{API}/webhooks/{{webhook_id}}"): [
            Call("DELETE", f"{API}/webhooks/{seed.doomed_webhook}", "admin")
        ],
        ("GET", f"{API}/webhooks/{{webhook_id}}/deliveries"): [
            Call("GET", f"{API}/webhooks/{seed.webhook}/deliveries", "admin")
        ],
        ("GET", f"{API}/export"): [
            Call("GET", f"{API}/export", params={"format": "json"}),
            Call("GET", f"{API}/export", params={"format": "csv"}),
        ],
        ("GET", f"{API}/events"): [
            Call("GET", f"{API}/events", role=None, stream=True),
            Call("GET", f"{API}/events", stream=True, params={"after": "0"}),
        ],
        ("GET", f"{API}/ledger"): [Call("GET", f"{API}/ledger")],
        ("GET", f"{API}/ledger/verify"): [Call("GET", f"{API}/ledger/verify")],
        ("GET", f"{API}/keys"): [Call("GET", f"{API}/keys", "admin")],
        ("POST", f"{API}/keys"): [
            Call("POST", f"{API}/keys", "admin", {"name": "walk-key-new", "role": "viewer"})
        ],
        ("GET", f"{API}/keys/{{name}}"): [Call("GET", f"{API}/keys/collector", "admin")],
        ("POST", f"{API}/keys/{{name}}/revoke"): [
            Call("POST", f"{API}/keys/{DOOMED_KEY}/revoke", "admin")
        ],
        ("POST", f"{API}/keys/{{name}}/rotate"): [
            Call("POST", f"{API}/keys/{ROTATED_KEY}/rotate", "admin", {})
        ],
    }


def routes_of(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, in routing order."""
    found: list[tuple[str, str]] = []
    for context in fastapi.routing.iter_route_contexts(app.routes):
        methods = getattr(context.original_route, "methods", None) or set()
        found.extend((method, str(context.path_format)) for method in sorted(methods))
    return found


class AdmissionAudit:
    """Watches database use during calls: nested admissions (the gates log them), pooled
    connections taken outside an admission or two under one, answers and hangs."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine
        self.label: str | None = None
        self.problems: list[str] = []
        self.unadmitted: set[str] = set()
        self._held: dict[int, list[Any]] = {}

    @contextmanager
    def watching(self) -> Iterator[None]:
        handler = _ListHandler()
        gates_log = logging.getLogger("pledgewatch.gates")
        gates_log.addHandler(handler)
        event.listen(self._engine, "checkout", self._checkout)
        event.listen(self._engine, "checkin", self._checkin)
        handler.audit = self
        try:
            yield
        finally:
            event.remove(self._engine, "checkout", self._checkout)
            event.remove(self._engine, "checkin", self._checkin)
            gates_log.removeHandler(handler)

    def _checkout(self, _dbapi: Any, record: Any, _proxy: Any) -> None:
        label = self.label
        if label is None:
            return
        admission = current_admission()
        if admission is None:
            self.unadmitted.add(label)
            return
        held = self._held.setdefault(id(admission), [admission, 0])
        if held[1]:
            self.problems.append(f"{label}: a second pooled connection under one admission")
        held[1] += 1
        record.info["walk_admission"] = id(admission)

    def _checkin(self, _dbapi: Any, record: Any) -> None:
        key = record.info.pop("walk_admission", None)
        if key is not None and key in self._held:
            self._held[key][1] -= 1


class _ListHandler(logging.Handler):
    audit: AdmissionAudit | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and self.audit is not None:
            self.audit.problems.append(f"{self.audit.label}: {record.getMessage()}")


def one_slot_gates(**options: Any) -> DatabaseGates:
    return DatabaseGates(**{**options, "connections": 1})


@pytest.fixture
def walk_settings(settings: Settings) -> Settings:
    # Every route: bench and demo routes too; feeds and webhooks may point at loopback.
    return settings.model_copy(
        update={
            "bench_mode": True,
            "demo_mode": True,
            "allow_private_source_hosts": True,
            "events_poll_seconds": 3600.0,
        }
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        # A failing handler is answered 500, as a server would, rather than raised here.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def seed(
    http: httpx.AsyncClient, keys: Keys, database: Database, clock: FrozenClock
) -> Seeded:
    seeded = Seeded()

    async def post(path: str, role: str, body: Any) -> Any:
        response = await http.post(f"{API}{path}", json=body, headers=keys[role])
        assert response.status_code in (200, 201), response.text
        return response.json()

    for pledge_id in (seeded.pledge, "walk-other"):
        await post("/pledges", "analyst", pledge_body(id=pledge_id))
    seeded.evidence = (
        await post(
            f"/pledges/{seeded.pledge}/evidence", "analyst", evidence_body(1, stance="supports")
        )
    )["id"]
    # A collector's link waits for review.
    seeded.pending = (
        await post(
            f"/pledges/{seeded.pledge}/evidence", "collector", evidence_body(2, stance="supports")
        )
    )["id"]
    # Both pledges were due on 2024-11-15 and are not kept: the rules propose "broken".
    clock.advance(timedelta(minutes=1))
    await asyncio.to_thread(run_evaluation, database, clock.now())
    listed = await http.get(f"{API}/proposals", headers=keys["analyst"])
    seeded.proposals = sorted(item["id"] for item in listed.json()["items"])
    assert len(seeded.proposals) == 2, listed.text
    source = {
        "name": "Walk",
        "kind": "rss",
        "url": "http://127.0.0.1:9/feed.xml",
        "source_type": "independent",
        "reliability": "high",
    }
    for source_id in (seeded.source, seeded.doomed_source):
        await post("/sources", "admin", {**source, "id": source_id, "pledges": [seeded.pledge]})
    seeded.webhook = (await post("/webhooks", "admin", {"url": "http://127.0.0.1:9/a"}))["id"]
    seeded.doomed_webhook = (await post("/webhooks", "admin", {"url": "http://127.0.0.1:9/b"}))[
        "id"
    ]
    for name in (DOOMED_KEY, ROTATED_KEY):
        await post("/keys", "admin", {"name": name, "role": "collector"})
    return seeded


async def perform(app: FastAPI, http: httpx.AsyncClient, call: Call, keys: Keys) -> tuple[int, str]:
    headers = {**call.headers, **(keys[call.role] if call.role else {})}
    if call.stream:
        try:
            async with AsgiStream(app, call.path, headers=headers, params=call.params) as stream:
                if stream.status == 200:
                    await stream.next_message()
                return stream.status or 0, stream.body()[:300]
        except Exception as error:  # what a server would answer with a 500
            return 500, repr(error)
    response = await http.request(
        call.method,
        call.path,
        headers=headers,
        params=call.params,
        json=call.json,
        content=call.content,
    )
    return response.status_code, response.text[:300]


async def walk(
    app: FastAPI, http: httpx.AsyncClient, calls: list[Call], keys: Keys, audit: AdmissionAudit
) -> dict[str, tuple[int, str]]:
    """Make each call under the audit; its answer (status, start of the body) by label."""
    answers: dict[str, tuple[int, str]] = {}
    with audit.watching():
        for call in calls:
            query = f"?{urlencode(call.params)}" if call.params else ""
            label = f"{call.method} {call.path}{query}"
            audit.label = label
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    answers[label] = await perform(app, http, call, keys)
            except TimeoutError:
                audit.problems.append(f"{label}: hung (no answer in {CALL_TIMEOUT:g} s)")
            finally:
                audit.label = None
    return answers


def test_no_route_takes_a_second_database_slot_while_holding_one(
    walk_settings: Settings,
    clock: FrozenClock,
    database: Database,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(main_module, "DatabaseGates", one_slot_gates)
    app = create_app(walk_settings, clock=clock, database=database)
    served = routes_of(app)

    async def scenario() -> tuple[
        list[tuple[str, str]], dict[str, tuple[int, str]], AdmissionAudit
    ]:
        audit = AdmissionAudit(database)
        async with serving(app) as http:
            table = requests_for(await seed(http, keys, database, clock))
            missing = [route for route in served if route not in table]
            calls = [call for route in served if route in table for call in table[route]]
            answers = await walk(app, http, calls, keys, audit)
        return missing, answers, audit

    missing, answers, audit = asyncio.run(scenario())

    assert missing == [], "routes without a request in requests_for"
    assert audit.problems == [], "\n".join(audit.problems)
    assert {label: answer for label, answer in answers.items() if answer[0] >= 400} == {}
    # Every pooled connection is taken under an admission. (/ledger/verify and /readyz use
    # connections of their own, outside the pool, so that neither waits for nor takes a
    # slot that ordinary requests need.)
    assert audit.unadmitted == set(), "database use outside any admission"


# --- the walk catches what once wedged the server ------------------------------------------------


def nesting_routes() -> APIRouter:
    """The two ways requests once nested, as they were written before authentication moved
    in front of admission: the key lookup used the request's own session."""
    router = APIRouter()

    @router.get("/old-events-head")
    async def old_events_head(_: SessionDep, broadcaster: BroadcasterDep) -> dict[str, int]:
        # The stream held the request's slot, then waited for the ledger's head.
        return {"head": await broadcaster.current_head()}

    @router.get("/old-ledger-verify")
    def old_ledger_verify(session: SessionDep, database: DatabaseDep, _: Reader) -> dict[str, bool]:
        session.scalar(select(1))  # the key lookup, on the request's connection
        return {"ok": verify_database(database).ok}

    return router


def test_the_walk_catches_a_route_that_nests(
    walk_settings: Settings,
    clock: FrozenClock,
    database: Database,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(main_module, "DatabaseGates", one_slot_gates)
    app = create_app(walk_settings, clock=clock, database=database)
    app.include_router(nesting_routes(), prefix=API)
    calls = [Call("GET", f"{API}/old-events-head"), Call("GET", f"{API}/old-ledger-verify")]

    async def scenario() -> tuple[dict[str, tuple[int, str]], list[str]]:
        audit = AdmissionAudit(database)
        async with serving(app) as http:
            answers = await walk(app, http, calls, keys, audit)
        return answers, audit.problems

    answers, problems = asyncio.run(scenario())

    assert answers[f"GET {API}/old-events-head"][0] == 500
    assert any(
        p.startswith(f"GET {API}/old-events-head:") and "asked for the ledger's head" in p
        for p in problems
    )
    assert f"GET {API}/old-ledger-verify: a second pooled connection under one admission" in (
        problems
    )
