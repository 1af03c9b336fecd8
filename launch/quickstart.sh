#!/usr/bin/env bash
# README's main job: install what is missing, then a short real BA training on
# the embedded UCI digits with 2 ranks (M = 4: 2 ranks x 2 copies per rank).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
WORKDIR="${WORKDIR:-$ROOT/workdirs/digits_smoke}"
rm -rf "$WORKDIR"
exec bash "$ROOT/launch/local.sh" 2 ba-train --config "$ROOT/configs/digits_smoke.py" --workdir "$WORKDIR" "$@"
