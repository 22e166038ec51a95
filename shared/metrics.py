"""Metric names, stable: dashboards and alerts rely on them. Labels never carry page ids,
tokens, job ids or recipient ids (bounded cardinality, no secrets).

Each process exports only its own series, so a dashboard never sums a consumer's counter with
a producer's idle zero of the same name. Two registries:

- the consumer's is prometheus_client's default ``REGISTRY`` (``CONSUMER``): a metric declared
  without ``registry=`` belongs to the consumers;
- ``PRODUCER``: the producer's, with process/GC/platform collectors of its own; declare a
  producer metric with ``registry=PRODUCER``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONSUMER = REGISTRY
PRODUCER = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    PRODUCER.register(_collector)


class InFlight(Collector):
    """Provider requests in flight, in three series a 15 s scrape cannot miss: sends leave in
    bursts of a few ms, so the instantaneous gauge alone reads 0 most of the time.

    - ``fanout_in_flight``: now (the gauge);
    - ``fanout_in_flight_peak``: the most at once since the previous scrape (a second scraper,
      e.g. an HA Prometheus pair, shares the window: each sees a peak of its own interval part);
    - ``fanout_in_flight_seconds_total``: request-seconds, the integral of the gauge over time,
      so ``rate()`` of it is the mean concurrency over any window, whoever scrapes.
    """

    def __init__(self, registry: CollectorRegistry | None = CONSUMER) -> None:
        self.now = 0
        self._peak = 0
        self._seconds = 0.0
        self._since = time.monotonic()
        self._lock = threading.Lock()  # collect() runs in the scrape's thread
        if registry is not None:
            registry.register(self)

    def _advance(self) -> None:
        now = time.monotonic()
        self._seconds += self.now * (now - self._since)
        self._since = now

    def enter(self) -> None:
        with self._lock:
            self._advance()
            self.now += 1
            self._peak = max(self._peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self._advance()
            self.now -= 1

    def describe(self) -> Iterable[Metric]:
        return []  # no collect() at registration time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._advance()
            now, peak, seconds = self.now, self._peak, self._seconds
            self._peak = self.now
        yield GaugeMetricFamily("fanout_in_flight", "Provider requests in flight", now)
        yield GaugeMetricFamily(
            "fanout_in_flight_peak", "Most provider requests in flight since the last scrape", peak
        )
        yield CounterMetricFamily(
            "fanout_in_flight_seconds",
            "Provider request-seconds (rate() is the mean number in flight)",
            seconds,
        )


class RedisCounter(Collector):
    """A counter whose truth is kept in Redis, so it survives every process restart (a crashing
    consumer's own counter may die before its first scrape). The producer reads it at scrape
    time and sets it here; every producer exports the same values, so queries take ``max by``
    the labels, never ``sum``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self._values[labels] = value

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self._values.items()):
            family.add_metric(labels, value)
        yield family


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
IN_FLIGHT = InFlight()

# The producer's: HTTP traffic by route template (never a raw path), and gauges read from Redis
# at scrape time, computed as KEDA's redis-streams scaler computes them.
HTTP_REQUESTS = Counter(
    "fanout_http_requests",
    "HTTP requests by route template",
    ["route", "method", "status"],
    registry=PRODUCER,
)
HTTP_DURATION = Histogram(
    "fanout_http_request_duration_seconds",
    "HTTP request duration by route template; long polls (SSE, ?wait=) are left out",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=PRODUCER,
)
SSE_STREAMS = Gauge(
    "fanout_sse_streams", "Open job event streams (/v1/jobs/{job_id}/events)", registry=PRODUCER
)
STREAM_LAG = Gauge(
    "fanout_stream_lag",
    "Entries not yet delivered to the group (XINFO GROUPS lag, as KEDA's lagCount)",
    ["shard"],
    registry=PRODUCER,
)
STREAM_PENDING = Gauge(
    "fanout_stream_pending",
    "Entries delivered and not acknowledged (XPENDING, as KEDA's pendingEntriesCount)",
    ["shard"],
    registry=PRODUCER,
)
JOBS = Gauge("fanout_jobs", "Jobs by status", ["status"], registry=PRODUCER)
DEAD_LETTERS_STORED = RedisCounter(
    "fanout_dead_letters_stored",
    "Chunks ever added to the shard's dead stream (XINFO STREAM entries-added)",
    ("shard",),
    PRODUCER,
)

# Listening (consumer): webhook events processed, by Meta's field, and receipt bits flipped
# (each counted once however often Meta retries an event).
WEBHOOK_EVENTS = Counter("fanout_webhook_events", "Webhook events processed, by field", ["field"])
RECEIPTS = Counter(
    "fanout_receipts", "Recipients newly marked delivered or read (at least)", ["kind"]
)
INBOX_BACKLOG = Gauge(
    "fanout_inbox_backlog",
    "Webhook batches received and not yet processed, per shard inbox",
    ["shard"],
    registry=PRODUCER,
)

# Page health (consumer): pages this consumer holds back, by cause ("provider_outage": the
# circuit breaker; "page_restricted": Meta's 10/1893063), and breaker trips it made.
PAGES_HELD = Gauge("fanout_pages_held", "Pages whose sends are held, by cause", ["cause"])
for _cause in ("provider_outage", "page_restricted"):
    PAGES_HELD.labels(_cause)  # both series from the start, at 0: a panel never hides one
BREAKER_TRIPS = Counter(
    "fanout_breaker_trips", "Times a page's answers turned mostly transient and it was held"
)
