#!/usr/bin/env bash
# Create .venv (if missing) and install editloop with its dev extra. Idempotent.
# torch is pinned to the CPU build first so that no dependency pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.editloop-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ infra/constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "torch==2.13.0"
  # the versions the suite last passed with; a new dependency not in the file installs its newest release
  .venv/bin/pip install --quiet -c infra/constraints.txt -e ".[dev]"
  touch "$stamp"
fi
