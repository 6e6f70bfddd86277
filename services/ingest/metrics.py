"""Ingest's Prometheus metrics (``/metrics`` on the ingest port).

Registered on import in the default registry; nothing connects.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("churnwatch_ingest_events_accepted_total", "Events acknowledged by Kafka")
REJECTED = Counter(
    "churnwatch_ingest_events_rejected_total", "Events refused, by reason", ["reason"]
)
DUPLICATES = Counter(
    "churnwatch_ingest_events_duplicate_total", "Retried events acknowledged, not produced again"
)
PRODUCE_LATENCY = Histogram(
    "churnwatch_ingest_produce_seconds",
    "Time from handing a batch to Kafka to the last acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("churnwatch_ingest_requests_in_flight", "Requests being handled")
UNAVAILABLE = Counter(
    "churnwatch_ingest_unavailable_total",
    "Requests answered 503, by the dependency that was down (kafka, key_store)",
    ["dependency"],
)
# Made here, so both series are exported (at 0) from the start.
KAFKA_DOWN = UNAVAILABLE.labels("kafka")
KEY_STORE_DOWN = UNAVAILABLE.labels("key_store")
# Set by each /readyz (a readiness probe calls it every few seconds): an ingest
# that is not ready leaves its Service and stops seeing the requests that would
# count 503s, so the outage must show here too. Absent until the first check.
DEPENDENCY_UP = Gauge(
    "churnwatch_ingest_dependency_up",
    "1 if the last /readyz reached the dependency (kafka, key_store), else 0",
    ["dependency"],
)
