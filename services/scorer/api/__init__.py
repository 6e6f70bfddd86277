"""The risk query API (``churnwatch api``): reads what the scorer and notifier keep in Redis.

app.py       build_api: wiring, error bodies, health, metrics
users.py     /v1/users/{id}: risk, alerts, actions, consent, contact, erase
ops.py       /v1/at-risk, /v1/stats, /v1/model
commands.py  the writes (consent, contact, erase); reads are services.scorer.queries
models.py    request and response bodies with their OpenAPI examples
"""

from __future__ import annotations

from services.scorer.api.app import build_api

__all__ = ["build_api"]
