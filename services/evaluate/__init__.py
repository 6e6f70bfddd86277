"""Offline evaluation: quality of a replay's scores and alerts, and the CDNOW baselines."""
