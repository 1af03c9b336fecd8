#!/usr/bin/env bash
# Run a ba_dist command on N ranks of this machine with mpirun.
#
#   launch/local.sh N ba-train --config configs/digits_smoke.py --workdir workdirs/x [--config.k=v ...]
#
# Every rank gets an equal share of the cores for TensorFlow's thread pools
# (OMP/intra-op threads = cores / N, at least 1); processes are not bound to
# cores (--bind-to none) so that tf.data and the loader threads can use idle
# ones. Runs as root are allowed and ranks may exceed cores (--oversubscribe),
# which is what a laptop smoke test needs. Extra mpirun options: MPIRUN_ARGS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 2 ]] || { echo "usage: $0 NUM_RANKS COMMAND [ARGS...]" >&2; exit 2; }
N="$1"; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_RANKS must be a positive integer, got '$N'" >&2; exit 2; }
CORES="$(nproc)"
THREADS=$(( CORES / N )); (( THREADS >= 1 )) || THREADS=1
CMD="$1"; shift
# console scripts of the project's venv, unless a path was given
if [[ "$CMD" != */* && -x "$ROOT/.venv/bin/$CMD" ]]; then CMD="$ROOT/.venv/bin/$CMD"; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}"
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$THREADS}"
export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-2}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# shellcheck disable=SC2086
exec mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$N" \
  -x OMP_NUM_THREADS -x TF_NUM_INTRAOP_THREADS -x TF_NUM_INTEROP_THREADS -x TF_CPP_MIN_LOG_LEVEL \
  ${MPIRUN_ARGS:-} "$CMD" "$@"
