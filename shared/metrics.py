"""Metric names, stable: dashboards and alerts rely on them. Labels never carry page ids,
tokens, job ids or recipient ids (bounded cardinality, no secrets)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "fanout_messages", "Recipients finished, by outcome and provider code", ["outcome", "code"]
)
SEND_DURATION = Histogram(
    "fanout_send_duration_seconds",
    "Provider latency per POST",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHUNKS = Counter("fanout_chunks", "Chunks finished, by outcome", ["outcome"])
CHUNKS_RECLAIMED = Counter("fanout_chunks_reclaimed", "Chunks taken over from idle consumers")
CHUNKS_LOST = Counter(
    "fanout_chunks_lost", "Pending entries found deleted from the stream (must stay 0)"
)
DEAD_LETTERS = Counter("fanout_dead_letters", "Chunks moved to the dead stream")
RATE_LIMITED = Counter("fanout_rate_limited", "Provider answers that said slow down")
RETRIES = Counter("fanout_retries", "POSTs retried after a transient answer")
IN_FLIGHT = Gauge("fanout_in_flight", "Provider requests in flight")

# The producer's: HTTP traffic by route template (never a raw path), and gauges read from Redis
# at scrape time, computed as KEDA's redis-streams scaler computes them.
HTTP_REQUESTS = Counter(
    "fanout_http_requests", "HTTP requests by route template", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "fanout_http_request_duration_seconds",
    "HTTP request duration by route template",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STREAM_LAG = Gauge(
    "fanout_stream_lag",
    "Entries not yet delivered to the group (XINFO GROUPS lag, as KEDA's lagCount)",
    ["shard"],
)
STREAM_PENDING = Gauge(
    "fanout_stream_pending",
    "Entries delivered and not acknowledged (XPENDING, as KEDA's pendingEntriesCount)",
    ["shard"],
)
JOBS = Gauge("fanout_jobs", "Jobs by status", ["status"])
