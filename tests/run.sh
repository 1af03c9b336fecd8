#!/usr/bin/env bash
# README's test command: install what is missing, then the tests.
#
#   bash tests/run.sh            the whole suite (single-process tests and the
#                                multi-rank tests under real mpirun): what CI runs
#   bash tests/run.sh --quick    the single-process tier only, for the edit-test loop:
#                                pytest -m "not mpirun and not slow" (markers: tests/conftest.py),
#                                without the slow horovodrun --check-build / pip check
#
# Every other argument goes to pytest, e.g. `bash tests/run.sh --quick tests/test_optim.py -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=()
quick=0
for a in "$@"; do
  if [[ "$a" == "--quick" ]]; then
    quick=1
    args+=(-m "not mpirun and not slow")
  else
    args+=("$a")
  fi
done
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if ((!quick)); then
  "$ROOT/.venv/bin/horovodrun" --check-build
  "$ROOT/.venv/bin/python" -m pip check
fi
exec "$ROOT/.venv/bin/python" -m pytest ${args[@]+"${args[@]}"}
