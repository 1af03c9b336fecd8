#!/usr/bin/env bash
# Check a template on the login node, then submit it: errors show up now, not after
# hours in the queue.
#
#   slurm/submit.sh [SBATCH OPTIONS] slurm/TEMPLATE.sh [--config.key=value ...]
#   e.g. slurm/submit.sh --time=02:00:00 slurm/resnet50_imagenet_512nodes.sh --config.train.epochs=45
#
# Runs the template with BA_DRY_RUN=1 (layout, arguments, BA_WORK_DIR, BA_DATA_DIR,
# config file, .venv: the checks the job itself makes before launching), checks the
# account, and calls sbatch with --account=$BA_ACCOUNT, the options before the template,
# the template and its arguments. Environment: BA_ACCOUNT (a project; "none" on a site
# without accounts; SBATCH_ACCOUNT, read by sbatch itself, works too), and everything
# docs/slurm.md lists; sbatch passes the environment on to the job.
set -euo pipefail
die() { echo "[ba-submit] error: $*" >&2; exit 2; }

opts=() nodes=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    -N) [[ $# -ge 2 ]] || die "-N needs a value"; nodes="$2"; opts+=("$1"); shift ;;
  esac
  opts+=("$1"); shift
done
[[ $# -ge 1 ]] || die "usage: $0 [SBATCH OPTIONS] slurm/TEMPLATE.sh [--config.key=value ...]"
template="$1"; shift
[[ -f "$template" ]] || die "template $template not found"

account="${BA_ACCOUNT:-${SBATCH_ACCOUNT:-}}"
[[ -n "$account" ]] ||
  die "no account: export BA_ACCOUNT=<project> (CSCS: your project id), or BA_ACCOUNT=none on a site without accounts"
[[ "$account" == none ]] || opts+=(--account="$account")

# The same checks the job makes; with --nodes given here, against that node count.
BA_DRY_RUN=1 BA_ALLOC_NODES="$nodes" bash "$template" "$@" ||
  die "not submitted: fix the error above"
exec sbatch "${opts[@]}" "$template" "$@"
