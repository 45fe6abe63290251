"""Rate limits: each budget trips with a 429 that says when to come back; budgets, keys and
addresses are counted apart; nothing is read from the database for a refused request."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import httpx
import limits.storage.memory
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

import app.http.ratelimit
from app.clock import FrozenClock
from app.config import Settings
from app.db import Database
from app.domain.idempotency.models import IdempotencyRecord
from app.http.addresses import group
from app.http.ratelimit import PacedMemoryStorage, RateLimits
from app.main import create_app
from tests.factories import Keys, make_pledge, pledge_body, problem

API = "/api/v1"
PROXY = "203.0.113.9"
RATE_LIMIT = re.compile(r'^"(?P<name>[a-z-]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')
POLICY = re.compile(r'^"(?P<name>[a-z-]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')


class WindowClock:
    """The time the rate-limit windows see, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def window_clock(monkeypatch: pytest.MonkeyPatch) -> WindowClock:
    clock = WindowClock()
    fake = SimpleNamespace(time=clock.time)
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    monkeypatch.setattr(app.http.ratelimit, "time", fake)
    return clock


Limited = Callable[..., TestClient]


@pytest.fixture
def limited(
    settings: Settings, clock: FrozenClock, database: Database, window_clock: WindowClock
) -> Iterator[Limited]:
    """Makes a client of an app with the given settings (budgets), behind a trusted proxy,
    so that each request may name its client address in X-Forwarded-For."""
    with ExitStack() as stack:

        def make(**changes: Any) -> TestClient:
            changed = settings.model_copy(update={"trusted_proxies": PROXY, **changes})
            application = create_app(changed, clock=clock, database=database)
            return stack.enter_context(
                TestClient(application, client=(PROXY, 40000), raise_server_exceptions=False)
            )

        yield make


def of(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-Forwarded-For": address, **(headers or {})}


def assert_refused(response: httpx.Response, budget: str, quota: int, window: int) -> int:
    """A 429 problem naming ``budget``; returns its Retry-After."""
    problem(response, 429)
    retry_after = int(response.headers["retry-after"])
    # The oldest request leaves the window one second after ``window`` has passed at most.
    assert 1 <= retry_after <= window + 1
    state = RATE_LIMIT.match(response.headers["ratelimit"])
    assert state is not None, response.headers["ratelimit"]
    assert state["name"] == budget
    assert (int(state["r"]), int(state["t"])) == (0, retry_after)
    assert_policy(response, budget, quota, window)
    return retry_after


def assert_policy(response: httpx.Response, budget: str, quota: int, window: int) -> None:
    policy = POLICY.match(response.headers["ratelimit-policy"])
    assert policy is not None, response.headers
    assert (policy["name"], int(policy["q"]), int(policy["w"])) == (budget, quota, window)


def remaining(response: httpx.Response) -> int:
    state = RATE_LIMIT.match(response.headers["ratelimit"])
    assert state is not None, response.headers
    return int(state["r"])


# --- each budget trips ------------------------------------------------------------------------


def test_anonymous_reads_trip_per_address(limited: Limited) -> None:
    client = limited(rate_limit_anonymous_reads="2/hour")
    answers = [client.get(f"{API}/pledges", headers=of("198.51.100.1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    # A read's answer names its budget; what remains is left out (one window check a poll).
    assert_policy(answers[0], "read", 2, 3600)
    assert "ratelimit" not in answers[0].headers
    assert_refused(answers[2], "read", 2, 3600)
    # The refusal is readable by a dashboard on another origin, and secured like the rest.
    assert answers[2].headers["access-control-allow-origin"] == "*"
    assert answers[2].headers["x-content-type-options"] == "nosniff"


def test_key_reads_trip_per_key(limited: Limited, keys: Keys) -> None:
    client = limited(rate_limit_key_reads="2/hour")
    answers = [
        client.get(f"{API}/pledges", headers=of("198.51.100.1", keys["viewer"])) for _ in "abc"
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [remaining(a) for a in answers[:2]] == [1, 0]
    assert_policy(answers[0], "key-read", 2, 3600)
    assert_refused(answers[2], "key-read", 2, 3600)


def test_writes_trip_per_key(limited: Limited, keys: Keys) -> None:
    client = limited(rate_limit_writes="2/hour")
    answers = [
        client.post(f"{API}/pledges", json=pledge_body(id=f"pledge-{n}"), headers=keys["analyst"])
        for n in range(3)
    ]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert remaining(answers[1]) == 0
    assert_refused(answers[2], "write", 2, 3600)


def test_anonymous_writes_spend_their_addresss_write_budget(limited: Limited) -> None:
    client = limited(rate_limit_writes="1/hour")
    first = client.post(f"{API}/pledges", json=pledge_body(), headers=of("198.51.100.1"))
    second = client.post(f"{API}/pledges", json=pledge_body(), headers=of("198.51.100.1"))
    other = client.post(f"{API}/pledges", json=pledge_body(), headers=of("198.51.100.2"))
    assert [first.status_code, second.status_code, other.status_code] == [401, 429, 401]


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/status?as_of=2024-06-30",
        f"{API}/status?known_at=2024-06-30T12:00:00Z&status=kept",
        f"{API}/ledger/verify",
        f"{API}/export?format=json",
        f"{API}/export?format=csv",
    ],
)
def test_expensive_reads_trip_their_own_budget(limited: Limited, path: str) -> None:
    client = limited(rate_limit_expensive_reads="2/hour")
    answers = [client.get(path, headers=of("198.51.100.1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429], answers[-1].text
    assert [remaining(a) for a in answers[:2]] == [1, 0]
    assert_refused(answers[2], "expensive", 2, 3600)
    # The cheap reads of the same address are counted apart.
    assert client.get(f"{API}/status", headers=of("198.51.100.1")).status_code == 200


def test_opening_an_event_stream_spends_the_expensive_budget(limited: Limited) -> None:
    client = limited(rate_limit_expensive_reads="1/hour")
    assert client.get(f"{API}/ledger/verify", headers=of("198.51.100.1")).status_code == 200
    # Refused before a stream opens (an answered stream would never end in this client).
    refused = client.get(f"{API}/events", headers=of("198.51.100.1"))
    assert_refused(refused, "expensive", 1, 3600)


def test_dashboard_polls_spend_the_read_budget_on_the_fast_path(
    limited: Limited, keys: Keys
) -> None:
    client = limited(rate_limit_anonymous_reads="3/hour")
    make_pledge(client, keys)
    built = client.get(f"{API}/status", headers=of("198.51.100.1"))
    assert client.app.state.revision_watch.current() is not None  # type: ignore[attr-defined]
    poll = {"If-None-Match": built.headers["etag"], "Origin": "https://dash.example.net"}
    polls = [client.get(f"{API}/status", headers=of("198.51.100.1", poll)) for _ in range(3)]
    assert [p.status_code for p in polls] == [304, 304, 429]
    assert_policy(polls[0], "read", 3, 3600)
    assert_refused(polls[2], "read", 3, 3600)
    assert polls[2].headers["access-control-allow-origin"] == "*"


# --- budgets, keys and addresses apart --------------------------------------------------------


def test_budgets_are_separate(limited: Limited, keys: Keys) -> None:
    client = limited(
        rate_limit_anonymous_reads="1/hour",
        rate_limit_key_reads="1/hour",
        rate_limit_writes="1/hour",
        rate_limit_expensive_reads="1/hour",
    )
    address = of("198.51.100.1")
    assert client.get(f"{API}/pledges", headers=address).status_code == 200
    assert client.get(f"{API}/pledges", headers=address).status_code == 429
    # The address's reads are spent; its other budgets and its keys' are whole.
    assert client.get(f"{API}/ledger/verify", headers=address).status_code == 200
    assert client.get(f"{API}/pledges", headers={**address, **keys["viewer"]}).status_code == 200
    write = client.post(
        f"{API}/pledges", json=pledge_body(), headers={**address, **keys["analyst"]}
    )
    assert write.status_code == 201
    assert client.get(f"{API}/ledger/verify", headers=address).status_code == 429


def test_health_readiness_and_metrics_are_never_limited(limited: Limited) -> None:
    client = limited(rate_limit_anonymous_reads="1/hour")
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(3):
            response = client.get(path, headers=of("198.51.100.1"))
            assert response.status_code == 200, path
            assert "ratelimit-policy" not in response.headers


def test_keys_are_counted_per_key_and_not_per_address(limited: Limited, keys: Keys) -> None:
    client = limited(rate_limit_key_reads="1/hour", rate_limit_anonymous_reads="1/hour")
    address = of("198.51.100.1")
    viewer = {**address, **keys["viewer"]}
    assert client.get(f"{API}/pledges", headers=viewer).status_code == 200
    assert client.get(f"{API}/pledges", headers=viewer).status_code == 429
    # Another key from the same address, and the address without a key, are untouched.
    admin = {**address, **keys["admin"]}
    assert client.get(f"{API}/pledges", headers=admin).status_code == 200
    assert client.get(f"{API}/pledges", headers=address).status_code == 200
    # The spent key is spent from any address.
    moved = {**of("198.51.100.77"), **keys["viewer"]}
    assert client.get(f"{API}/pledges", headers=moved).status_code == 429


def test_a_limited_client_does_not_affect_another(limited: Limited) -> None:
    client = limited(rate_limit_anonymous_reads="2/hour")
    for _ in range(5):
        client.get(f"{API}/pledges", headers=of("198.51.100.1"))
    assert client.get(f"{API}/pledges", headers=of("198.51.100.1")).status_code == 429
    assert client.get(f"{API}/pledges", headers=of("198.51.100.2")).status_code == 200
    assert client.get(f"{API}/pledges", headers=of("2001:db8:1::5")).status_code == 200


def test_a_window_frees_as_it_moves(limited: Limited, window_clock: WindowClock) -> None:
    client = limited(rate_limit_anonymous_reads="2/minute")
    address = of("198.51.100.1")
    assert client.get(f"{API}/pledges", headers=address).status_code == 200
    window_clock.now += 10
    assert client.get(f"{API}/pledges", headers=address).status_code == 200
    window_clock.now += 10
    refused = client.get(f"{API}/pledges", headers=address)
    # The first request is in the window until 60 s after it was made: 41 s from now.
    assert assert_refused(refused, "read", 2, 60) == 41
    window_clock.now += 40
    assert client.get(f"{API}/pledges", headers=address).status_code == 429
    window_clock.now += 1
    assert client.get(f"{API}/pledges", headers=address).status_code == 200
    assert client.get(f"{API}/pledges", headers=address).status_code == 429


# --- who the client is ------------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(limited: Limited) -> None:
    client = limited(rate_limit_anonymous_reads="1/hour", trusted_proxies="")
    assert client.get(f"{API}/pledges", headers=of("198.51.100.1")).status_code == 200
    # Made-up addresses buy nothing: the peer is the client.
    assert client.get(f"{API}/pledges", headers=of("198.51.100.2")).status_code == 429


def test_only_the_hops_a_trusted_proxy_appended_are_believed(limited: Limited) -> None:
    client = limited(rate_limit_anonymous_reads="1/hour", trusted_proxies=f"{PROXY}, 10.0.0.0/8")
    assert client.get(f"{API}/pledges", headers=of("198.51.100.1, 10.1.2.3")).status_code == 200
    # The client wrote anything it liked on the left; the proxies' hops name it all the same.
    forged = of("192.0.2.99, 198.51.100.1, 10.1.2.3")
    assert client.get(f"{API}/pledges", headers=forged).status_code == 429
    assert client.get(f"{API}/pledges", headers=of("198.51.100.2")).status_code == 200


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert group("2001:db8:0:1::5") == group("2001:db8:0:1:ffff::9") == "2001:db8:0:1::/64"
    assert group("2001:db8:0:2::5") != group("2001:db8:0:1::5")
    assert group("::ffff:198.51.100.7") == "198.51.100.7"
    assert group("198.51.100.7") == "198.51.100.7"


def test_made_up_keys_soon_spend_their_addresss_bad_key_budget(
    limited: Limited, keys: Keys
) -> None:
    client = limited(rate_limit_bad_keys="2/hour")
    address = "198.51.100.1"
    guesses = [
        client.get(
            f"{API}/pledges",
            headers=of(address, {"Authorization": f"Bearer {secrets.token_hex(8)}"}),
        )
        for _ in range(3)
    ]
    assert [g.status_code for g in guesses] == [401, 401, 429]
    assert_refused(guesses[2], "bad-key", 2, 3600)
    # That address's keyed requests wait; its anonymous reads, and other addresses, do not.
    assert client.get(f"{API}/pledges", headers=of(address, keys["viewer"])).status_code == 429
    assert client.get(f"{API}/pledges", headers=of(address)).status_code == 200
    other = client.get(f"{API}/pledges", headers=of("198.51.100.2", keys["viewer"]))
    assert other.status_code == 200


def test_a_refused_request_reads_nothing_from_the_database(
    limited: Limited, keys: Keys, database: Database
) -> None:
    client = limited(rate_limit_writes="1/hour")
    headers = {**keys["analyst"], "Idempotency-Key": "first"}
    assert client.post(f"{API}/pledges", json=pledge_body(), headers=headers).status_code == 201
    refused = client.post(
        f"{API}/pledges",
        json=pledge_body(id="second"),
        headers={**keys["analyst"], "Idempotency-Key": "second"},
    )
    assert refused.status_code == 429
    with database.transaction(write=False) as session:
        stored = session.scalar(select(func.count()).select_from(IdempotencyRecord))
    assert stored == 1


# --- settings, storage and the schema ---------------------------------------------------------


def test_rate_limits_can_be_turned_off(limited: Limited) -> None:
    client = limited(rate_limits_enabled=False, rate_limit_anonymous_reads="1/hour")
    answers = [client.get(f"{API}/pledges", headers=of("198.51.100.1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert "ratelimit-policy" not in answers[0].headers


@pytest.mark.parametrize("budget", ["lots", "10 per fortnight", "10/second;600/minute", ""])
def test_a_budget_must_be_one_rate_limit(budget: str) -> None:
    with pytest.raises(ValidationError, match="rate_limit_writes"):
        Settings(rate_limit_writes=budget)


@pytest.mark.parametrize("proxies", ["10.0.0.300", "proxy.internal", "10.0.0.0/40"])
def test_trusted_proxies_must_be_addresses_or_networks(proxies: str) -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(trusted_proxies=proxies)


def test_expired_windows_are_swept_away_on_a_paced_timer(window_clock: WindowClock) -> None:
    limits_ = RateLimits(Settings(rate_limit_anonymous_reads="2/minute"), api_prefix=API)
    try:
        storage = limits_.storage
        assert isinstance(storage, PacedMemoryStorage)
        assert limits_.spend(limits_.anonymous_reads, "address:198.51.100.1")
        first = storage.timer
        assert limits_.spend(limits_.anonymous_reads, "address:198.51.100.2")
        assert storage.timer is first, "one sweep is due at a time"
        # The library's hook is overridden: one sweep a second, on a thread that never
        # holds the process open.
        assert storage.timer.interval == PacedMemoryStorage.SWEEP_SECONDS
        assert storage.timer.daemon
        window_clock.now += 61
        storage.sweep()
        # No trace of the client is left, so that clients long gone cost nothing.
        assert storage.events == {}
        assert dict(storage.locks) == {}
    finally:
        limits_.close()


def test_every_api_operation_documents_its_429(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            documented = "429" in operation["responses"]
            assert documented == path.startswith(API), (method, path)
            if documented:
                assert "Retry-After" in operation["responses"]["429"]["headers"]
