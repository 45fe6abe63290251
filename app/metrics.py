"""Prometheus metrics of the service (exposed at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
STATUS_CACHE = Counter(
    "pledgewatch_status_view_total",
    "Answers of /status by how they were made (not_modified, cached, built).",
    ["outcome"],
)
