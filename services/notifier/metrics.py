"""Prometheus metrics of the notifier."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ALERTS = Counter("churnwatch_notifier_alerts_total", "Alerts consumed from churn-alerts")
CONSUMER_LAG = Gauge(
    "churnwatch_notifier_consumer_lag",
    "Alerts on this worker's partitions of churn-alerts not handled yet (log end, as of "
    "its last fetch from each, minus the alert in hand or the one after the last handled)",
)
ACTIONS = Counter(
    "churnwatch_notifier_actions_total",
    "Win-back decisions, by channel and status",
    ["channel", "status"],
)
SEND_SECONDS = Histogram(
    "churnwatch_notifier_send_seconds",
    "Delivery time including retries",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES = Counter("churnwatch_notifier_retries_total", "Delivery retries, by channel", ["channel"])
DEAD_LETTERS = Counter(
    "churnwatch_notifier_dead_letters_total",
    "Deliveries given up after the last attempt, by channel",
    ["channel"],
)
REPEATS = Counter(
    "churnwatch_notifier_repeats_total",
    "Alert and channel pairs seen again and not sent twice (idempotency)",
)
DEFERRED = Gauge("churnwatch_notifier_deferred_depth", "Actions waiting in the deferred queue")
INVALID = Counter("churnwatch_notifier_invalid_alerts_total", "Alerts that failed validation")
STORE_ERRORS = Counter(
    "churnwatch_notifier_store_errors_total",
    "Redis calls that failed; the alert or deferred job waits and is tried again",
)
FAILED = Gauge(
    "churnwatch_notifier_failed_deliveries",
    "Failed deliveries kept for `churnwatch notifier redrive` (stale ones included until then)",
)
ERASED = Counter(
    "churnwatch_notifier_erased_skips_total",
    "Alerts, deferred jobs and failed deliveries of users erased since, dropped unsent "
    "and unrecorded, by where they were found (alert, deferred, redrive, in_flight: "
    "erased while its delivery was under way)",
    ["source"],
)
REDRIVES = Counter(
    "churnwatch_notifier_redrives_total",
    "Failed deliveries re-driven, by channel and outcome (sent, failed, suppressed, deferred, "
    "skipped)",
    ["channel", "outcome"],
)
