"""Prometheus metrics of the scorer worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("churnwatch_scorer_events_total", "Events consumed from user-events")
DEAD_LETTERED = Counter(
    "churnwatch_scorer_dead_letters_total",
    "Events sent to the dead-letter topic, by reason",
    ["reason"],
)
DUPLICATES = Counter("churnwatch_scorer_duplicates_total", "Events already applied (by event_id)")
ERASED_EVENTS = Counter(
    "churnwatch_scorer_erased_events_total",
    "Events of users erased in the last 14 days, dropped (not stored, not dead-lettered)",
)
ALERTS = Counter(
    "churnwatch_scorer_alerts_total", "Alerts published, by band and trigger", ["band", "trigger"]
)
BATCH_SECONDS = Histogram(
    "churnwatch_scorer_batch_seconds",
    "Time to process one micro-batch end to end",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "churnwatch_scorer_batch_events",
    "Events per micro-batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
REDIS_SECONDS = Histogram(
    "churnwatch_scorer_redis_seconds",
    "How long a micro-batch waited on Redis: op=load its users' rows (and those scored "
    "ahead, if still being scored), op=save its write (the next batch's users are scored "
    "meanwhile, so this is at least that CPU time)",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
EVENT_LAG = Gauge(
    "churnwatch_scorer_event_time_lag_seconds", "Wall clock minus the newest event time processed"
)
CONSUMER_LAG = Gauge(
    "churnwatch_scorer_consumer_lag",
    "Events on this worker's partitions not handed to it yet (log end minus position, "
    "as of its last fetch from each)",
)
SCORES = Counter("churnwatch_scorer_scores_total", "Users scored, by band", ["band"])
STORE_ERRORS = Counter("churnwatch_scorer_store_errors_total", "Redis failures (retried)")
LEARNER_FAILURES = Counter(
    "churnwatch_scorer_learner_failures_total",
    "Times the learning process died (that sweep's labels are learned in the worker)",
)
UNREADABLE = Counter(
    "churnwatch_scorer_unreadable_total",
    "Stored values the worker could not read (corrupt, or a newer version's format), by "
    "kind: state (in a batch its user's events are dead-lettered, in the sweep the user "
    "is skipped), snapshots (left in place, tried again a day later), policy or record "
    "(the alert state or score record: dropped, the user scored without it, then rewritten)",
    ["kind"],
)
SWEEP_SECONDS = Histogram(
    "churnwatch_scorer_sweep_seconds",
    "Time of one timer sweep's part: rescore (silent users re-scored) or learn (label rounds "
    "until none is due: long when a backlog drains)",
    ["part"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600),
)
LABEL_ROUNDS = Counter(
    "churnwatch_scorer_label_rounds_total",
    "Label learning rounds (up to 10,000 users each); more than one a sweep: a backlog drained",
)
LABELS = Counter("churnwatch_scorer_labels_total", "Resolved labels learned, by class", ["label"])
QUALITY = Gauge("churnwatch_model_quality", "Progressive validation on resolved labels", ["metric"])
CHECKPOINT_AGE = Gauge(
    "churnwatch_model_checkpoint_age_seconds", "Seconds since this worker last saved its model"
)
MODEL_LOADS = Counter(
    "churnwatch_model_loads_total",
    "Models this worker took from `churnwatch scorer model load` (a rollback, a reset, "
    "or a model learned on a replay)",
)
WINBACKS = Counter(
    "churnwatch_winbacks_total",
    "Users active again within the window after a win-back decision",
    ["playbook", "group"],
)
