#!/usr/bin/env bash
# Dress rehearsal of an sbatch template on this machine, before hours in a real queue.
#
#   bash slurm/rehearse.sh [--kill-rank R] slurm/TEMPLATE.sh [--config.key=value ...]
#
# Runs the template's own launch path (sbatch -> the template -> slurm/common.sh ->
# srun) through the stand-ins of tests/stand_ins/ (sbatch runs the job here and now,
# srun is mpirun, scontrol requeue reruns the job), scaled down to about
# BA_REHEARSE_RANKS ranks (default 8: whole groups of the template's M_RANKS, at least
# one) with the template's M, M_RANKS, ghost batch size, config file and settings; only
# the model (an MLP), the image size (32 px) and the data are small. b, the unique images
# per rank, is the ghost batch size (the smallest b it allows) or 4.
# The data: ImageNet TFRecord shards in the converters' standard format (labels
# 1..1000), made from real photos by slurm/rehearse.py, BA_REHEARSE_STEPS (3) steps per
# epoch, BA_REHEARSE_EPOCHS (2) epochs.
#
# Default: after the first epoch's checkpoint it sends SIGUSR1 to the batch shell (what
# --signal=B:USR1@600 does), expects checkpoint -> exit 75 -> requeue -> resume -> done,
# and checks (slurm/rehearse.py check, on BA_AUDIT_DIR records): group membership of
# every rank, every training sample exactly once per epoch across the stop, identical
# weights on every rank, result.json written once, the exit codes.
# --kill-rank R: SIGKILLs rank R mid-training instead (an OOM kill, a lost node) and
# checks that the job ends within srun's --wait (BA_SRUN_WAIT, the template's 120 s by
# default) plus a margin, not requeued, its last checkpoint intact.
#
# The last line says what was checked and how long it took; exit 0 if all held.
# Work files: BA_REHEARSE_DIR (default a new /tmp directory; kept for inspection).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
die() { echo "[rehearse] error: $*" >&2; exit 2; }
say() { echo "[rehearse] $*"; }

kill_rank=""
if [[ "${1:-}" == --kill-rank ]]; then kill_rank="${2:-}"; shift 2 || true; fi
[[ -z "$kill_rank" || "$kill_rank" =~ ^[0-9]+$ ]] || die "--kill-rank needs a rank number"
[[ $# -ge 1 && -f "$1" ]] || die "usage: $0 [--kill-rank R] slurm/TEMPLATE.sh [--config.key=value ...]"
template="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; shift
python="${BA_VENV:-$root/.venv}/bin/python"
[[ -x "$python" ]] || die "$python not found (BA_VENV)"
t0=$SECONDS

dir="${BA_REHEARSE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ba_rehearse.XXXXXX")}"
mkdir -p "$dir/work" "$dir/data" "$dir/audit" "$dir/slurm"
rm -rf "${dir:?}/audit/"* "${dir:?}/slurm/"* "${dir:?}/work/"*
export PATH="$root/tests/stand_ins:$PATH" STANDIN_STATE_DIR="$dir/slurm" BA_ROOT="$root"
# the ranks import ba_dist from this checkout, whatever checkout the venv was installed from
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export BA_WORK_DIR="$dir/work" BA_DATA_DIR="$dir/data" BA_AUDIT_DIR="$dir/audit"
export BA_EXPECT_GPUS=0   # the one site setting a CPU machine cannot meet (ba_dist/preflight.py)
unset BA_NODES BA_BATCH BA_PER_RANK BA_RUN_NAME BA_DRY_RUN SLURM_JOB_ID

# ---- the template's own layout (its dry run), scaled down
dry="$(BA_DRY_RUN=1 bash "$template")" || { echo "$dry"; die "the template's dry run failed"; }
values="$(sed -n 's/^\[ba-slurm\] values: //p' <<< "$dry")"
declare -A v
for kv in $values; do v[${kv%%=*}]="${kv#*=}"; done
M="${v[M]}" m_ranks="${v[m_ranks]}" m_local="${v[m_local]}" ghost="${v[ghost]}"
want="${BA_REHEARSE_RANKS:-8}"
groups=$(( want / m_ranks )); (( groups >= 1 )) || groups=1
ranks=$(( groups * m_ranks ))
b=$(( ghost > 0 ? ghost : 4 ))
batch=$(( groups * b )) per_rank=$(( m_local * b ))
spe="${BA_REHEARSE_STEPS:-4}" epochs="${BA_REHEARSE_EPOCHS:-3}"
n_train=$(( batch * spe )) n_val="${BA_REHEARSE_VAL:-50}"
launch="$(sed -n 's/^\[ba-slurm\] launch: //p' <<< "$dry")"
say "template $(basename "$template"): ${v[nodes]} nodes, B ${v[B]}, M $M = $m_ranks ranks x $m_local, ghost $ghost"
say "rehearsal: $ranks ranks ($groups group(s) of $m_ranks), b $b, B $batch, per-rank batch $per_rank, $spe steps x $epochs epochs, in $dir"
export BA_NODES="$ranks" BA_BATCH="$batch" BA_PER_RANK="$per_rank"

if [[ "$launch" == *cifar* ]]; then   # the config reads tfds cifar10: prepare that instead
  format=cifar10-tfds
  args=(--config.model.name=mlp "--config.train.epochs=$epochs")
else
  format=imagenet-tfrecord
  args=(--config.model.name=mlp "--config.input.augment=imagenet(size=32)"
        "--config.input.eval_transform=imagenet_eval(size=32)" "--config.train.epochs=$epochs")
fi
if [[ "$launch" =~ --config.optim.warmup_epochs=([0-9]+) ]] && (( BASH_REMATCH[1] >= epochs )); then
  args+=(--config.optim.warmup_epochs=1)   # warm-up must end before the last epoch
fi
args+=("$@")

"$python" "$here/rehearse.py" make-data "$dir/data" --train "$n_train" --validation "$n_val" --format "$format"

# ---- the job, through the stand-ins; SIGUSR1 (or SIGKILL of a rank) after the first checkpoint
out="$dir/job.out"
setsid sbatch --nodes="$ranks" "$template" "${args[@]}" > "$out" 2>&1 < /dev/null &
job=$!
limit=$(( SECONDS + ${BA_REHEARSE_TIMEOUT:-1200} ))
cleanup() { kill -KILL -- "-$job" 2>/dev/null || true; }
trap cleanup EXIT
until grep -q '\[ba-train\] checkpoint ckpt-' "$out"; do   # (after a progress bar, not at a line start)
  kill -0 "$job" 2>/dev/null || { tail -50 "$out"; die "the job ended before its first checkpoint"; }
  (( SECONDS < limit )) || { tail -50 "$out"; die "no checkpoint within the time limit"; }
  sleep 1
done
job_id="$(sed -n 's/^Submitted batch job //p' "$out" | head -1)"
if [[ -z "$kill_rank" ]]; then
  say "first checkpoint written: SIGUSR1 to the batch shell of job $job_id"
  scancel --batch --signal=USR1 "$job_id"
else
  pid="$(sed -n 's/.*"kind": "begin".*"pid": \([0-9]*\).*/\1/p' "$dir/audit/rank$kill_rank.jsonl" | tail -1)"
  [[ -n "$pid" ]] || die "no pid of rank $kill_rank in $dir/audit"
  say "first checkpoint written: SIGKILL to rank $kill_rank (pid $pid)"
  kill -KILL "$pid"
  killed_at=$SECONDS
fi
wd="$(sed -n 's/^\[ba-slurm\] workdir: //p' "$out" | head -1)"
result_at_requeue=none   # result.json must come from the last allocation only
if [[ -z "$kill_rank" ]]; then
  until grep -q '^\[ba-slurm\] requeued job' "$out" || ! kill -0 "$job" 2>/dev/null; do sleep 0.5; done
  if [[ -e "$wd/result.json" ]]; then result_at_requeue=present; else result_at_requeue=absent; fi
fi
rc=0
while kill -0 "$job" 2>/dev/null; do
  (( SECONDS < limit )) || { tail -50 "$out"; die "the job did not end within the time limit"; }
  sleep 1
done
wait "$job" || rc=$?
trap - EXIT
cat "$out"

# ---- the verdict
if [[ -n "$kill_rank" ]]; then
  took=$(( SECONDS - killed_at )) wait_s="$(grep -o -- '--wait=[0-9]*' <<< "$launch" | head -1 | cut -d= -f2)"
  wait_s="${BA_SRUN_WAIT:-$wait_s}"
  fail() { echo "[rehearse] FAILED: $*"; exit 1; }
  (( rc != 0 && rc != 75 )) || fail "job exit code $rc after a rank was killed"
  grep -q "ba-train exited with code 137" "$out" || fail "srun did not report the killed rank (128 + 9)"
  [[ ! -s "$dir/slurm/scontrol.log" ]] || fail "the job was requeued"
  (( took <= wait_s + 60 )) || fail "the job took ${took}s to end after the kill (srun --wait=$wait_s)"
  ls "$wd"/checkpoints/ckpt-*/meta.json > /dev/null 2>&1 || fail "no intact checkpoint left in $wd"
  say "passed: $(basename "$template") on $ranks ranks: rank $kill_rank SIGKILLed mid-training -> srun --wait=$wait_s killed the other ranks, job ended ${took}s after the kill with exit $rc (137 = 128 + SIGKILL), not requeued, checkpoint intact; $((SECONDS - t0))s"
  exit 0
fi
(( rc == 0 )) || { echo "[rehearse] FAILED: job exit code $rc (expected 0 after the requeue)"; exit 1; }
checked="$("$python" "$here/rehearse.py" check --audit "$dir/audit" --state "$dir/slurm" --workdir "$wd" \
  --output "$out" --ranks "$ranks" --m-ranks "$m_ranks" --spe "$spe" --train "$n_train" \
  --validation "$n_val" --epochs "$epochs" --result-at-requeue "$result_at_requeue")" || { echo "$checked"; exit 1; }
echo "$checked" | grep -v '^\[rehearse\] checked:'
say "passed: $(basename "$template") (M $M = $m_ranks x $m_local, ghost $ghost): $(sed -n 's/^\[rehearse\] checked: //p' <<< "$checked"); $((SECONDS - t0))s"
