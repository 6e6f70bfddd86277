#!/usr/bin/env bash
# The one check: lint, types, and every test tier (unit, service, integration,
# end to end on the real local stack, which the tests start themselves).
# Extra arguments go to pytest, e.g. ./scripts/check.sh -m "not chaos" -x
EXTRAS=dev source "$(dirname "$0")/_env.sh"
# One command per line: `set -e` (from _env.sh) ignores a failure on the left of `&&`.
echo "== ruff"; ruff check .
ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; pytest "$@"
