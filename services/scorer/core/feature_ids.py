"""The feature ids of the stored forms (pure, no I/O).

A score record names the feature of each reason by its index in ``FEATURES``
(:mod:`~services.scorer.core.records`), and a label snapshot's layouts are runs
of these names (:mod:`~services.scorer.core.snapshot_codec`). The index is
stored: never reorder ``FEATURES``, add at the end.
"""

from __future__ import annotations

# Feature ids of the stored forms. Append only.
FEATURES: tuple[str, ...] = (
    "recency_days",
    "tenure_days",
    "events_1d",
    "events_7d",
    "events_30d",
    "events_90d",
    "active_days_1d",
    "active_days_7d",
    "active_days_30d",
    "active_days_90d",
    "sessions_30d",
    "mean_session_s",
    "distinct_features_30d",
    "purchases_30d",
    "purchases_90d",
    "revenue_30d",
    "revenue_90d",
    "is_paid",
    "payment_failures_30d",
    "trend_7d_vs_30d",
    "sessions_change",
    "support_tickets_30d",
    "complaints_30d",
    "downgrades_90d",
    "uninstalled",
    "winback_sent_90d",
    "winback_responded_90d",
    "explicit_churn",
    "days_since_return",
    "active_days_total",
    "purchases_total",
    "active_span_days",
    "mean_gap_days",
    "recency_vs_gap",
    "revenue_total",
)
