#!/usr/bin/env bash
# README's test command: install what is missing, then the whole suite
# (single-process tests and the multi-rank tests under real mpirun).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$ROOT/.venv/bin/horovodrun" --check-build
"$ROOT/.venv/bin/python" -m pip check
exec "$ROOT/.venv/bin/python" -m pytest "$@"
