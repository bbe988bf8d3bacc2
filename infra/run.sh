#!/usr/bin/env bash
# The two entry points of README.md:
#   bash infra/run.sh demo   -> the main job on the embedded default
#   bash infra/run.sh test   -> the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
export TOKENIZERS_PARALLELISM=false
case "${1:-}" in
  demo) shift; exec .venv/bin/python -m editloop.cli.main demo "$@" ;;
  test) shift; bash infra/system-deps.sh; .venv/bin/ruff check . && exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: bash infra/run.sh demo|test" >&2; exit 2 ;;
esac
