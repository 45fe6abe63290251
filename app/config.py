"""Settings, read once from the environment (prefix ``PLEDGEWATCH_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Invalid values stop the process at start-up."""

    model_config = SettingsConfigDict(env_prefix="PLEDGEWATCH_", extra="ignore")

    database_url: str = "sqlite:///./pledgewatch.db"
    public_read: bool = True
    scheduler_enabled: bool = True
    allow_private_source_hosts: bool = False

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    idempotency_ttl_hours: int = Field(default=24, ge=24)
    # An Idempotency-Key left "in progress" by earlier versions (which committed the claim
    # on its own) is taken over by a retry after this long. Claims now commit with the answer.
    idempotency_stale_seconds: int = Field(default=120, gt=0)
    status_cache_entries: int = Field(default=256, gt=0)
    # Their bytes, bodies and gzip codings together (a 1,000-pledge body is about 330 KB).
    status_cache_mb: int = Field(default=32, gt=0)
    # /status bodies built at once per process (those not cached: as_of, filters, new
    # revisions). Past the cores, concurrent builds only slow each other down.
    status_builds: int = Field(default=2, gt=0)
    # Clients' clocks drift; a timestamp this far ahead of ours is still "now".
    future_tolerance_seconds: int = Field(default=300, ge=0)
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = Field(default=10, gt=0)
    # Sources listed in this YAML file are created at start-up when missing.
    sources_file: Path | None = None
    # Demo mode serves the bundled sample feed at /demo/feed.xml and lets the fetcher reach
    # this one address of our own (``self_address``, host:port) despite the private-host guard.
    demo_mode: bool = False
    # Bench mode (set only by the benchmark, bench/): serves the reference endpoints that
    # /status is measured against, under /bench. Never in production.
    bench_mode: bool = False
    self_address: str = "127.0.0.1:8000"
    # The scheduler's leader lease (SQLite; PostgreSQL uses an advisory lock): renewed
    # every third of it, so a dead leader is replaced within about this long.
    scheduler_lease_seconds: int = Field(default=15, ge=3)
    # How often the status rules run over every pledge.
    evaluate_every_seconds: int = Field(default=300, gt=0)

    # Server-Sent Events: a comment line this often keeps idle connections (and proxies) open;
    # the ledger's head is read this often to hear of writes made by other processes; beyond
    # this many open streams a new one is refused with 503 and Retry-After.
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    events_poll_seconds: float = Field(default=1.0, gt=0)
    sse_max_clients: int = Field(default=500, gt=0)

    # Webhooks: each attempt may take this long; a failed one is retried after
    # base * 2^(attempts - 1) seconds (with jitter), up to max attempts in all.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    deliver_every_seconds: float = Field(default=5.0, gt=0)

    # GET /ledger/verify runs one verification at a time per process, in its own thread and
    # connection. Its verdict is answered again while the ledger head stays the same, for
    # at most this long (a row changed behind the API's back moves no head; 0: never
    # reused). A pause between pages leaves the database and CPU to requests (0: none).
    ledger_verify_reuse_seconds: float = Field(default=600.0, ge=0)
    ledger_verify_pause_ms: int = Field(default=0, ge=0, le=60_000)
    # Feed polls: a run ingests at most this many items (the next run goes on with the rest),
    # in transactions of this many items each, so that other writers wait for one chunk at
    # most, never for a whole feed.
    collect_max_items_per_run: int = Field(default=10_000, gt=0)
    collect_chunk_items: int = Field(default=500, gt=0)
    # Admission to the database: a request waiting for a connection slot is refused with
    # 503 and Retry-After when this many already wait, or once it has waited this long,
    # so that overload is shed with bounded memory instead of queued without end.
    db_queue_max: int = Field(default=500, gt=0)
    db_queue_timeout_seconds: float = Field(default=30.0, gt=0)
    # Requests in flight at once per process (health probes, metrics and /events streams
    # aside); one more is refused at once with 503 and Retry-After, before it costs anything.
    max_in_flight: int = Field(default=200, gt=0)
    # SIGTERM: open requests get this long to finish, then the process stops anyway (event
    # streams end at once; their clients resume with Last-Event-ID elsewhere).
    shutdown_grace_seconds: float = Field(default=5.0, gt=0)

    # The HTTP edge (app/http/). A connection must send a request's headers within
    # header_timeout_seconds and in at most max_header_bytes, else it is closed (slow-loris).
    # Rate limits are moving windows kept in memory by each process (a client of N workers
    # gets up to N times each budget); budgets are `limits` strings ("600/minute"). Reads
    # without a key count per client address, with a key per key; writes and expensive
    # reads (as_of/known_at views, /ledger/verify, /export, opening /events) have budgets
    # of their own; 401s count per address, so that made-up keys buy no fresh budgets.
    # X-Forwarded-For is believed only from trusted_proxies (IPs or CIDRs, comma-separated).
    # Browser pages of cors_write_origins (comma-separated origins) may write and read
    # everything cross-origin; public reads are open to every origin.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    rate_limits_enabled: bool = True
    rate_limit_anonymous_reads: str = "1200/minute"
    rate_limit_key_reads: str = "6000/minute"
    rate_limit_writes: str = "1200/minute"
    rate_limit_expensive_reads: str = "120/minute"
    rate_limit_bad_keys: str = "60/minute"
    trusted_proxies: str = ""
    cors_write_origins: str = ""

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("PLEDGEWATCH_DATABASE_URL must be a sqlite:// or postgresql:// URL")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # psycopg 3 is the one PostgreSQL driver we ship.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator(
        "rate_limit_anonymous_reads",
        "rate_limit_key_reads",
        "rate_limit_writes",
        "rate_limit_expensive_reads",
        "rate_limit_bad_keys",
    )
    @classmethod
    def _one_budget(cls, value: str) -> str:
        from app.http.values import parse_budget

        parse_budget(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        from app.http.values import parse_networks

        parse_networks(value)
        return value

    @field_validator("cors_write_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        from app.http.values import parse_origins

        parse_origins(value)
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return Settings()
