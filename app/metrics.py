"""Prometheus metrics of the service (exposed at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "pledgewatch_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_LATENCY = Histogram(
    "pledgewatch_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVIDENCE_INGESTED = Counter(
    "pledgewatch_evidence_items_total",
    "Evidence items posted, by outcome (created, existing, invalid).",
    ["outcome"],
)
STATUS_CHANGES = Counter(
    "pledgewatch_status_changes_total",
    "Status changes recorded, by new status.",
    ["to_status"],
)
SOURCE_RUNS = Counter(
    "pledgewatch_source_runs_total",
    "Polls of sources, by outcome (ok, not_modified, failed).",
    ["outcome"],
)
EVIDENCE_COLLECTED = Counter(
    "pledgewatch_evidence_collected_total",
    "Evidence items that polls of sources added.",
)
STATUS_CACHE = Counter(
    "pledgewatch_status_view_total",
    "Answers of /status by how they were made (not_modified, cached, built).",
    ["outcome"],
)
FETCH_SECONDS = Histogram(
    "pledgewatch_fetch_seconds",
    "Time of a source fetch (redirects and retries included), by outcome (ok, not_modified, "
    "refused, invalid_url, http_error, timeout, network_error, too_large, too_many_redirects, "
    "error).",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)
RULE_CHANGES = Counter(
    "pledgewatch_rule_status_changes_total",
    "Status changes the status rules made themselves, by rule and new status.",
    ["rule", "to_status"],
)
PROPOSALS = Counter(
    "pledgewatch_proposals_total",
    "Final verdicts proposed by rules, and analysts' answers, by rule and event "
    "(created, confirmed, dismissed).",
    ["rule", "event"],
)
SCHEDULER_JOBS = Counter(
    "pledgewatch_scheduler_jobs_total",
    "Ticks of scheduled jobs, by job (evaluate, sync-sources, collect) and outcome "
    "(ok, failed, skipped: the tick already ran; unrecorded: the database could not say).",
    ["job", "outcome"],
)
SCHEDULER_LEADER = Gauge(
    "pledgewatch_scheduler_leader",
    "1 while this process holds the scheduler's leader lock and runs the jobs.",
)
SSE_STREAMS = Gauge(
    "pledgewatch_sse_streams",
    "Server-Sent Events streams (/api/v1/events) open in this process.",
)
SSE_STREAMS_REFUSED = Counter(
    "pledgewatch_sse_streams_refused_total",
    "Server-Sent Events streams refused with 503 because every slot was taken.",
)
WEBHOOK_QUEUED = Counter(
    "pledgewatch_webhook_deliveries_queued_total",
    "Webhook deliveries queued: one per event per subscription.",
)
WEBHOOK_ATTEMPTS = Counter(
    "pledgewatch_webhook_attempts_total",
    "Attempts to deliver a webhook event, by outcome (delivered; retry: failed, tried again "
    "later; failed: failed for the last time).",
    ["outcome"],
)
LEDGER_VERIFY_RUNS = Counter(
    "pledgewatch_ledger_verify_runs_total",
    "Ledger verifications run for GET /ledger/verify, by outcome (ok, not_ok, cancelled: "
    "every requester left, failed).",
    ["outcome"],
)
LEDGER_VERIFY_RUNNING = Gauge(
    "pledgewatch_ledger_verify_running",
    "1 while a ledger verification runs in this process (at most one at a time).",
)
LEDGER_VERIFY_WAITERS = Gauge(
    "pledgewatch_ledger_verify_waiters",
    "Requests waiting for the ledger verification under way in this process.",
)
LEDGER_VERIFY_ANSWERS = Counter(
    "pledgewatch_ledger_verify_answers_total",
    "Answers of GET /ledger/verify, by how they were made (reused: a kept verdict of the "
    "same head; run: waited for a run; not_modified: 304; gone: the client left first).",
    ["how"],
)
DB_ADMISSIONS_REFUSED = Counter(
    "pledgewatch_db_admissions_refused_total",
    "Requests refused with 503 before reaching the database, by reason (queue_full: too many "
    "already waited; timeout: waited PLEDGEWATCH_DB_QUEUE_TIMEOUT_SECONDS).",
    ["reason"],
)
REQUESTS_SHED = Counter(
    "pledgewatch_requests_shed_total",
    "Requests refused with 503 on arrival because PLEDGEWATCH_MAX_IN_FLIGHT requests were "
    "already in flight in this process.",
)
