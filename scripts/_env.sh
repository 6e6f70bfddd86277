# Shared by scripts/demo.sh and scripts/check.sh: a virtualenv in .venv with
# churnwatch installed (editable), re-installed when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "churnwatch needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2; exit 2
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "churnwatch needs $tool (a JDK 17 and Maven) to run Kafka" >&2; exit 2; }
done
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..."
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS:-run}
if [ ! -f "$stamp" ]; then
  echo "installing churnwatch and its dependencies into .venv ..."
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "${EXTRAS:-}" = dev ]; then .venv/bin/python -m pip install -q -e '.[dev,eval]'
  else .venv/bin/python -m pip install -q -e .; fi
  rm -f .venv/.installed-*; touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
