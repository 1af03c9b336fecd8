#!/usr/bin/env bash
# Create or refresh the ba_dist environment in .venv/ at the repository root.
#
# Idempotent: a second run with nothing changed checks a stamp and returns in
# seconds. Horovod is compiled from source once (about 2.5 minutes on 2 cores)
# and the wheel is cached in $BA_DIST_CACHE (default ~/.cache/ba_dist), keyed
# by Python, TensorFlow and MPI versions, so new clones and CI reuse it.
#
# Environment:
#   BA_PYTHON        interpreter to build the venv from (default: python3.11)
#   BA_DIST_GPU=1    install tensorflow[and-cuda]==2.15.1 instead of tensorflow-cpu
#   BA_DIST_CACHE    wheel cache directory (default: ~/.cache/ba_dist)
#   BA_DIST_NO_APT=1 never call apt-get (cluster nodes: load your site MPI first)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${BA_PYTHON:-python3.11}"
CACHE="${BA_DIST_CACHE:-$HOME/.cache/ba_dist}"
EXTRA=cpu
[[ "${BA_DIST_GPU:-0}" == 1 ]] && EXTRA=gpu
HOROVOD_VERSION=0.28.1

say() { echo "[bootstrap] $*" >&2; }
die() { echo "[bootstrap] ERROR: $*" >&2; exit 1; }

# --- 1. Python 3.11 exactly: TF 2.15 + Horovod 0.28.1 are pinned against it.
command -v "$PY" >/dev/null 2>&1 || die "no '$PY' on PATH. ba_dist needs Python 3.11 \
(Debian 12: apt-get install python3.11 python3.11-venv python3.11-dev), or set BA_PYTHON=/path/to/python3.11."
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$PYVER" == "3.11" ]] || die "'$PY' is Python $PYVER; ba_dist supports only Python 3.11 \
(tensorflow 2.15.1 + horovod 0.28.1). Set BA_PYTHON to a Python 3.11 interpreter."

# --- 2. Stamp: skip everything when inputs are unchanged and the venv is whole.
STAMP_INPUTS=("$ROOT/setup.py" "$ROOT/requirements/constraints.txt" "$ROOT/scripts/bootstrap.sh")
want_stamp="$(cat "${STAMP_INPUTS[@]}" | sha256sum | cut -c1-16)-$EXTRA"
if [[ -x "$VENV/bin/python" && -f "$VENV/.ba_dist_stamp" && "$(cat "$VENV/.ba_dist_stamp")" == "$want_stamp" ]] \
   && command -v mpirun >/dev/null 2>&1; then
  exit 0
fi

# --- 3. System packages (Debian): MPI, compilers, Python headers.
need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
command -v mpicxx >/dev/null 2>&1 || need_apt+=(libopenmpi-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++ make)
"$PY" -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3.11-venv)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3.11-dev)
if ((${#need_apt[@]})); then
  [[ "${BA_DIST_NO_APT:-0}" == 1 ]] && die "missing system packages: ${need_apt[*]} (BA_DIST_NO_APT=1 set; install them or load your site modules)"
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_apt[*]} and no apt-get; see docs/install.md for other systems"
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO=sudo
  say "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- 4. The virtual environment.
if [[ -x "$VENV/bin/python" ]] && [[ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]]; then
  say "existing .venv is not Python 3.11: recreating it"
  rm -rf "$VENV"
fi
[[ -x "$VENV/bin/python" ]] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=23" wheel "setuptools<80"
say "installing ba_dist[$EXTRA,test] with requirements/constraints.txt"
"${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" -e "$ROOT[$EXTRA,test]"

# --- 5. Horovod, compiled against this TensorFlow and MPI; wheel cached.
hvd_ok() {
  # capture first: 'cmd | grep -q' under pipefail fails when grep exits early (SIGPIPE)
  local out
  out="$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/horovodrun" --check-build 2>/dev/null)" || return 1
  grep -q '\[X\] TensorFlow' <<<"$out" && grep -q '\[X\] MPI' <<<"$out"
}
if ! hvd_ok; then
  TFVER="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu") if "'$EXTRA'" == "cpu" else m.version("tensorflow"))')"
  MPIVER="$(mpirun --version 2>/dev/null | head -n1 | tr -c 'A-Za-z0-9.\n' _ )"
  WHEELS="$CACHE/wheels/py${PYVER}-tf${TFVER}-${EXTRA}-${MPIVER}"
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    say "compiling horovod $HOROVOD_VERSION against TensorFlow $TFVER + MPI (takes a few minutes, once)"
    "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" cmake
    PATH="$VENV/bin:$PATH" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_GLOO=1 \
      HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      "${PIP[@]}" wheel --no-build-isolation --no-deps "horovod==$HOROVOD_VERSION" -w "$WHEELS" \
      || die "horovod build failed; rerun with 'pip -v' (see docs/install.md, 'Building Horovod')"
  fi
  "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" --force-reinstall --no-deps "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl
  "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl
  hvd_ok || { "$VENV/bin/horovodrun" --check-build >&2 || true; die "horovod is installed but lacks TensorFlow or MPI support"; }
fi

"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; die "pip check failed"; }
echo "$want_stamp" > "$VENV/.ba_dist_stamp"
say "environment ready: $VENV"
