#!/usr/bin/env bash
# Run a ba_dist command on N ranks of this machine with Horovod's launcher.
#
#   launch/horovodrun.sh N ba-train --config configs/digits_smoke.py --workdir workdirs/x [--config.k=v ...]
#
# The same as launch/local.sh (threads per rank = cores / N, no core binding), but
# through `horovodrun --mpi -np N -H localhost:N`, which runs mpirun itself. The
# Horovod in .venv is built with MPI and without Gloo, so --mpi is required (and
# elastic training, which needs Gloo, is not available). Use it for Horovod's own
# tuning flags, passed in HOROVODRUN_ARGS, e.g.
#   HOROVODRUN_ARGS="--autotune --autotune-log-file /tmp/autotune.csv"
#   HOROVODRUN_ARGS="--timeline-filename /tmp/timeline.json --fusion-threshold-mb 64 --cycle-time-ms 5"
# and launch/local.sh otherwise (plain mpirun: fewer moving parts, and what srun
# does on a cluster). horovodrun prefixes every output line with [job,rank]<stream>.
#
# Signals: horovodrun itself dies on SIGUSR1 and leaves mpirun running, so this
# script does not exec it; it passes SIGUSR1 (ba-train: checkpoint, stop, exit 75)
# on to mpirun, which forwards it to every rank. Extra mpirun options: MPIRUN_ARGS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 2 ]] || { echo "usage: $0 NUM_RANKS COMMAND [ARGS...]" >&2; exit 2; }
N="$1"; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_RANKS must be a positive integer, got '$N'" >&2; exit 2; }
HOROVODRUN="$ROOT/.venv/bin/horovodrun"
[[ -x "$HOROVODRUN" ]] || { echo "$HOROVODRUN not found: run scripts/bootstrap.sh first" >&2; exit 2; }
CORES="$(nproc)"
THREADS=$(( CORES / N )); (( THREADS >= 1 )) || THREADS=1
CMD="$1"; shift
if [[ "$CMD" != */* && -x "$ROOT/.venv/bin/$CMD" ]]; then CMD="$ROOT/.venv/bin/$CMD"; fi
# horovodrun exports the whole environment to every rank (mpirun -x).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}"
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$THREADS}"
export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-2}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# shellcheck disable=SC2317  # called from the USR1 trap
mpirun_of() {  # the mpirun process under horovodrun (horovodrun -> sh -c -> mpirun)
  local pid="$1" child
  for child in $(pgrep -P "$pid" || true); do
    if [[ "$(ps -o comm= -p "$child")" == mpirun ]]; then echo "$child"; else mpirun_of "$child"; fi
  done
}
# shellcheck disable=SC2317
forward() {
  local pid
  for pid in $(mpirun_of "$HVD_PID"); do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward USR1' USR1

# shellcheck disable=SC2086  # HOROVODRUN_ARGS and MPIRUN_ARGS are lists of options
"$HOROVODRUN" --mpi -np "$N" -H "localhost:$N" --mpi-args="--oversubscribe ${MPIRUN_ARGS:-}" \
  ${HOROVODRUN_ARGS:-} "$CMD" "$@" &
HVD_PID=$!
while :; do   # a trapped signal interrupts `wait`: wait again while horovodrun runs
  rc=0; wait "$HVD_PID" || rc=$?
  kill -0 "$HVD_PID" 2>/dev/null || break
done
exit "$rc"
