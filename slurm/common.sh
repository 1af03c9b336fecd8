# shellcheck shell=bash
# shellcheck disable=SC2154  # NAME, CONFIG, NODES, ... are set by the template that sources this file
# Shared logic of the sbatch templates in slurm/: batch arithmetic and checks, the
# site block (Cray XC50), the launch, and the stop/requeue handling. docs/slurm.md
# explains every knob; a template sets a few variables and calls `ba_main "$@"`:
#
#   NAME        run name; the workdir is $BA_WORK_DIR/<NAME>_b<B>_m<M>_<nodes>n, the same
#               in every allocation of the job (ba-train resumes from it)
#   CONFIG      config file, relative to the repository            (env BA_CONFIG)
#   NODES       nodes                                               (env BA_NODES)
#   PER_RANK    images per rank per step, copies included (= per P100)  (env BA_PER_RANK)
#   BATCH       B, unique images per step                           (env BA_BATCH)
#   M           copies of each unique image per step                (env BA_M)
#   M_RANKS     ranks per group that share the same unique images   (env BA_M_RANKS)
#   GHOST       ghost batch norm size, 0 = leave model.bn to the config (env BA_GHOST)
#   TRAIN_ARGS  the experiment's --config.key=value overrides (array)
# Script arguments (`sbatch TEMPLATE --config.key=value ...`) come last and win.
#
# Batch arithmetic (the same as ba_dist/config.py's Layout), one rank per GPU:
#   ranks    = nodes x ranks_per_node           (XC50: one P100 per node -> 1)
#   groups   = ranks / M_RANKS,  m_local = M / M_RANKS copies made on each rank
#   b        = B / groups unique images per rank,  per-rank batch = m_local x b
#   ranks x per-rank batch = B x M examples per step
#
# Exit codes: 0 done; 2 refused before launch (layout, environment, arguments);
# 75 stopped early after a checkpoint ("requeue me"; requeued unless cancelled or
# BA_MAX_REQUEUES is reached); any other: ba-train's failure, never requeued.

# ============================================================================
# SITE BLOCK: Cray XC50 (CSCS Piz Daint "gpu" nodes: one NVIDIA P100 16 GB and
# one 12-core Intel Xeon E5-2690 v3 with hyperthreading per node, Aries network,
# Cray MPICH, srun). Everything site-specific is in this block, plus the three
# "# site" #SBATCH lines of every template (--constraint=gpu, --ntasks-per-node=1,
# --cpus-per-task=12). For another site edit only these; see docs/slurm.md.
# ============================================================================
SITE_RANKS_PER_NODE="${BA_RANKS_PER_NODE:-1}"   # GPUs per node: one rank per GPU
SITE_CPUS_PER_TASK=12                           # cores per rank when outside a job (dry run)

ba_site_modules() {
  # The compiler, MPI and CUDA that Horovod and mpi4py in .venv were built
  # against (docs/install.md: "A cluster with a site MPI").
  module load daint-gpu
  module swap PrgEnv-cray PrgEnv-gnu
  module load cray-mpich cudatoolkit
}

ba_site_env() {
  # One rank per node: TensorFlow's op pools get one thread per core; tf.data and
  # the group loader threads use the hyperthreads (srun --cpu-bind=none below).
  export OMP_NUM_THREADS="$CPUS_PER_TASK"
  export TF_NUM_INTRAOP_THREADS="$CPUS_PER_TASK"
  export TF_NUM_INTEROP_THREADS=2
  # Horovod's background thread and mpi4py (group broadcast, in the loader
  # thread) both call MPI: Cray MPICH must provide MPI_THREAD_MULTIPLE.
  export MPICH_MAX_THREAD_SAFETY=multiple
  # ResNet-50's float32 gradients are 98 MiB: with a 128 MiB fusion buffer (Horovod's
  # default, stated so it is not lowered by accident) they fit in one fused allreduce.
  export HOROVOD_FUSION_THRESHOLD="${HOROVOD_FUSION_THRESHOLD:-134217728}"
  # ms between negotiation cycles (default 1): a step takes ~300 ms on a P100, so 5 ms
  # fuses more gradients per allreduce over hundreds of nodes at little latency cost.
  # Tune with HOROVOD_AUTOTUNE=1 (docs/slurm.md).
  export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-5}"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
  export PYTHONUNBUFFERED=1   # log lines reach the job's output file as they happen
  # ba-train's preflight (ba_dist/preflight.py) then checks one visible GPU per rank and
  # the NVIDIA driver on every node before any data is read.
  export BA_EXPECT_GPUS="${BA_EXPECT_GPUS:-1}"
}
SITE_ENV_SHOWN=(OMP_NUM_THREADS TF_NUM_INTRAOP_THREADS TF_NUM_INTEROP_THREADS MPICH_MAX_THREAD_SAFETY
                HOROVOD_FUSION_THRESHOLD HOROVOD_CYCLE_TIME BA_EXPECT_GPUS)

ba_site_launcher() {
  # Sets LAUNCH_PREFIX: the command that starts one rank per GPU of the job.
  # srun forwards signals it receives to every rank.
  # --kill-on-bad-exit=0 (also overriding a site's KillOnBadExit=1): at a stop every
  #   rank exits 75 after a barrier that follows rank 0's checkpoint, but srun would
  #   report a rank 0 it killed as 128+9, not 75, and the job would not be requeued.
  # --wait=SRUN_WAIT: a rank that dies without MPI noticing (SIGKILL by the OOM killer,
  #   a lost node) leaves the others in the next allreduce; slurm.conf's WaitTime
  #   defaults to 0 = wait until the time limit. SRUN_WAIT seconds after the first rank
  #   ended srun kills the rest: a clean end or stop has every rank out within seconds
  #   of the first, so it is never cut short (docs/slurm.md, "A rank dies").
  LAUNCH_PREFIX=(srun --nodes="$NODES" --ntasks="$RANKS" --ntasks-per-node="$SITE_RANKS_PER_NODE"
                 --cpus-per-task="$CPUS_PER_TASK" --cpu-bind=none --kill-on-bad-exit=0 --wait="$SRUN_WAIT")
}
# ============================================================================
# END OF SITE BLOCK
# ============================================================================

REQUEUE_EXIT_CODE=75   # ba_dist.fit.REQUEUE_EXIT_CODE

ba_log() { printf '[ba-slurm] %s\n' "$*"; }
ba_die() { printf '[ba-slurm] error: %s\n' "$*" >&2; exit 2; }

# ba_knob VAR ENV_NAME MIN: VAR = $ENV_NAME if set, else the template's VAR; integer >= MIN
ba_knob() {
  local var="$1" env="$2" min="$3" value
  value="${!env:-${!var:-}}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || (( 10#$value < min )); then
    ba_die "$env / $var = '$value': must be an integer >= $min"
  fi
  printf -v "$var" '%d' "$((10#$value))"
}

ba_layout() {
  ba_knob NODES BA_NODES 1
  ba_knob PER_RANK BA_PER_RANK 1
  ba_knob BATCH BA_BATCH 1
  ba_knob M BA_M 1
  ba_knob M_RANKS BA_M_RANKS 1
  ba_knob GHOST BA_GHOST 0
  ba_knob SITE_RANKS_PER_NODE BA_RANKS_PER_NODE 1
  SRUN_WAIT="${SRUN_WAIT:-120}"
  ba_knob SRUN_WAIT BA_SRUN_WAIT 1
  RANKS=$((NODES * SITE_RANKS_PER_NODE))
  (( M % M_RANKS == 0 )) ||
    ba_die "M=$M copies cannot be shared by groups of M_RANKS=$M_RANKS ranks: each rank makes M / M_RANKS copies, so M must be a multiple of $M_RANKS (BA_M, BA_M_RANKS)"
  (( RANKS % M_RANKS == 0 )) ||
    ba_die "$RANKS ranks ($NODES nodes x $SITE_RANKS_PER_NODE) do not form whole groups of M_RANKS=$M_RANKS: use a multiple of $M_RANKS ranks (BA_NODES) or change BA_M_RANKS"
  NUM_GROUPS=$((RANKS / M_RANKS))
  (( BATCH % NUM_GROUPS == 0 )) ||
    ba_die "B=$BATCH unique images cannot be split over $NUM_GROUPS groups ($RANKS ranks / M_RANKS $M_RANKS): B must be a multiple of $NUM_GROUPS (BA_BATCH, BA_NODES)"
  M_LOCAL=$((M / M_RANKS))
  B_RANK=$((BATCH / NUM_GROUPS))
  if (( M_LOCAL * B_RANK != PER_RANK )); then
    local hint="" need=$((BATCH * M))
    (( need % PER_RANK == 0 && (need / PER_RANK) % SITE_RANKS_PER_NODE == 0 )) &&
      hint=" BA_NODES=$((need / PER_RANK / SITE_RANKS_PER_NODE)) keeps $PER_RANK per rank;"
    ba_die "$RANKS ranks x $PER_RANK images per rank = $((RANKS * PER_RANK)), but B x M = $BATCH x $M = $need examples per step ($((M_LOCAL * B_RANK)) per rank).$hint or set BA_PER_RANK=$((M_LOCAL * B_RANK)) if that fits the GPU memory, or change BA_BATCH / BA_M"
  fi
  if (( GHOST > 0 )); then
    (( PER_RANK % GHOST == 0 )) ||
      ba_die "ghost batch norm: the per-rank batch $PER_RANK is not a multiple of GHOST=$GHOST (BA_GHOST)"
    (( GHOST <= B_RANK )) ||
      ba_die "ghost batch norm: GHOST=$GHOST exceeds the $B_RANK unique images per rank, so a ghost batch would hold copies of one image (BA_GHOST, or fewer groups)"
  fi
  # Printed exactly as ba-train prints its layout (ba_dist.config.Layout.describe).
  LAYOUT="$RANKS ranks x $PER_RANK per rank ($M_LOCAL copies x $B_RANK unique) = B $BATCH unique x M $M = $((BATCH * M)) per step; $NUM_GROUPS group(s) of $M_RANKS rank(s)"
  ba_log "layout: $LAYOUT"
  ba_log "nodes: $NODES x $SITE_RANKS_PER_NODE rank(s) per node; ghost batch norm: $( ((GHOST)) && echo "$GHOST ($((PER_RANK / GHOST)) per rank)" || echo "from the config")"
  ba_log "values: nodes=$NODES ranks=$RANKS per_rank=$PER_RANK B=$BATCH M=$M m_ranks=$M_RANKS m_local=$M_LOCAL groups=$NUM_GROUPS b=$B_RANK ghost=$GHOST"
  local alloc="${SLURM_JOB_NUM_NODES:-${BA_ALLOC_NODES:-}}"
  if [[ -n "$alloc" ]] && (( alloc != NODES )); then
    ba_die "the job has $alloc nodes but the layout needs $NODES: submit with --nodes=$NODES (the template's #SBATCH line), or set BA_NODES=$alloc with a BA_BATCH / BA_M / BA_PER_RANK that fit $alloc nodes"
  fi
}

# Extra arguments may only be --config.key=value overrides that do not touch the layout.
ba_check_args() {
  local a
  for a in "$@"; do
    case "$a" in
      --config.input.batch_size=*|--config.ba.multiplicity=*|--config.ba.m_ranks=*)
        ba_die "$a: the batch layout comes from the script so that it is checked before launch; set BA_BATCH, BA_M, BA_M_RANKS, BA_NODES, BA_PER_RANK instead" ;;
      --config.model.ghost_batch_size=*|--config.model.bn=*)
        (( GHOST == 0 )) || ba_die "$a: this template sets ghost batch norm ($GHOST); change it with BA_GHOST (0 = the config decides)" ;;
      --workdir|--workdir=*|--config|--config=*)
        ba_die "$a: the workdir is \$BA_WORK_DIR/<run name> (BA_RUN_NAME) and the config file BA_CONFIG" ;;
      --config.*=*) ;;
      *) ba_die "unexpected argument '$a': only --config.key=value overrides (with '=') may follow the template" ;;
    esac
  done
}

ba_check_env() {
  [[ -n "${BA_WORK_DIR:-}" ]] ||
    ba_die "BA_WORK_DIR is not set: export BA_WORK_DIR=<existing directory for run directories> (e.g. \$SCRATCH/ba_runs) before sbatch"
  [[ -d "$BA_WORK_DIR" && -w "$BA_WORK_DIR" ]] ||
    ba_die "BA_WORK_DIR=$BA_WORK_DIR is not a writable directory: create it (mkdir -p) or fix the path"
  DATA_KEY="${BA_DATA_KEY-input.source_kwargs.data_dir}"
  if [[ -n "$DATA_KEY" ]]; then
    [[ -n "${BA_DATA_DIR:-}" ]] ||
      ba_die "BA_DATA_DIR is not set: export BA_DATA_DIR=<dataset directory> (passed as --config.$DATA_KEY; BA_DATA_KEY= for a config that reads no files)"
    [[ -d "$BA_DATA_DIR" ]] || ba_die "BA_DATA_DIR=$BA_DATA_DIR does not exist or is not a directory"
  fi
  CONFIG_FILE="${BA_CONFIG:-$CONFIG}"
  [[ "$CONFIG_FILE" == /* ]] || CONFIG_FILE="$BA_ROOT/$CONFIG_FILE"
  [[ -f "${CONFIG_FILE%%:*}" ]] || ba_die "config file ${CONFIG_FILE%%:*} does not exist (BA_CONFIG, relative to $BA_ROOT; path[:variant])"
  if [[ -z "${BA_TRAIN:-}" ]]; then   # BA_TRAIN: the command as the launch sees it (e.g. in a container)
    BA_VENV="${BA_VENV:-$BA_ROOT/.venv}"
    BA_TRAIN="$BA_VENV/bin/ba-train"
    [[ -x "$BA_TRAIN" ]] ||
      ba_die "$BA_TRAIN not found: set up the environment on the cluster (BA_DIST_NO_APT=1 bash scripts/bootstrap.sh, docs/install.md) or point BA_VENV to it"
  fi
  RUN_NAME="${BA_RUN_NAME:-${NAME}_b${BATCH}_m${M}_${NODES}n}"
  WORKDIR="$BA_WORK_DIR/$RUN_NAME"
}

ba_history() {  # one line per event in the run's workdir, across allocations
  printf '%s job %s restart %s: %s\n' "$(date '+%F %T')" "${SLURM_JOB_ID:-?}" "${SLURM_RESTART_COUNT:-0}" "$*" \
    >> "$WORKDIR/slurm_jobs.log"
}

ba_requeue() {  # ba_requeue RC: put the job back in the queue, then exit 75
  local rc="$1" done_restarts=$(( ${SLURM_RESTART_COUNT:-0} + ${BA_RESUBMIT_COUNT:-0} ))
  local max="${BA_MAX_REQUEUES:-10}" mode="${BA_REQUEUE:-requeue}"
  if (( done_restarts >= max )); then
    ba_log "not requeueing: the job already ran $((done_restarts + 1)) times (BA_MAX_REQUEUES=$max); resubmit by hand to continue from $WORKDIR"
    ba_history "exit $rc, not requeued (BA_MAX_REQUEUES=$max)"
    exit "$REQUEUE_EXIT_CODE"
  fi
  if [[ "$mode" == requeue ]]; then
    if scontrol requeue "$SLURM_JOB_ID"; then
      ba_log "requeued job $SLURM_JOB_ID: it continues from $WORKDIR in its next allocation"
      ba_history "exit $rc, requeued"
      exit "$REQUEUE_EXIT_CODE"
    fi
    ba_log "scontrol requeue failed (site policy?): resubmitting instead"
    mode=resubmit
  fi
  if [[ "$mode" == resubmit ]]; then
    local opts=(--dependency="afterany:$SLURM_JOB_ID" --nodes="${SLURM_JOB_NUM_NODES:-$NODES}" --job-name="${SLURM_JOB_NAME:-ba}")
    [[ -z "${SLURM_JOB_ACCOUNT:-}" ]] || opts+=(--account="$SLURM_JOB_ACCOUNT")
    [[ -z "${SLURM_JOB_PARTITION:-}" ]] || opts+=(--partition="$SLURM_JOB_PARTITION")
    # $0 is Slurm's copy of the template, which sbatch reads right away.
    if BA_RESUBMIT_COUNT=$(( ${BA_RESUBMIT_COUNT:-0} + 1 )) sbatch "${opts[@]}" "$0" "${SCRIPT_ARGS[@]}"; then
      ba_log "resubmitted as a new job that starts after $SLURM_JOB_ID and continues from $WORKDIR"
      ba_history "exit $rc, resubmitted"
      exit "$REQUEUE_EXIT_CODE"
    fi
    ba_log "resubmission failed: resubmit by hand to continue from $WORKDIR"
  else
    ba_log "BA_REQUEUE=$mode: not requeueing; resubmit to continue from $WORKDIR"
  fi
  ba_history "exit $rc, not requeued"
  exit "$REQUEUE_EXIT_CODE"
}

ba_on_signal() {  # trap handler: note the signal and pass it on to the ranks
  SIGNALS_SEEN=$((SIGNALS_SEEN + 1))
  if [[ "$1" == USR1 ]]; then
    STOP_REQUESTED=1
    ba_log "SIGUSR1 (time limit near): asking the ranks to checkpoint and stop"
  else
    TERMINATED=1
    ba_log "SIG$1 (job cancelled or pre-empted): passing it on; no requeue from this script"
  fi
  if [[ -n "$LAUNCH_PID" ]]; then kill -s "$1" "$LAUNCH_PID" 2>/dev/null || true; fi
}

ba_main() {
  SCRIPT_ARGS=("$@")
  BA_ROOT="$(cd "$BA_ROOT" && pwd)"
  SIGNALS_SEEN=0 STOP_REQUESTED=0 TERMINATED=0 LAUNCH_PID=""
  trap 'ba_on_signal USR1' USR1
  trap 'ba_on_signal TERM' TERM
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    ba_log "job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}), restart ${SLURM_RESTART_COUNT:-0}, ${SLURM_JOB_NUM_NODES:-?} node(s), $(date '+%F %T')"
  fi
  ba_layout
  ba_check_args "$@"
  ba_check_env
  CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-$SITE_CPUS_PER_TASK}"
  ba_site_env
  ba_site_launcher
  local layout_args=(--config.input.batch_size="$BATCH" --config.ba.multiplicity="$M" --config.ba.m_ranks="$M_RANKS")
  (( GHOST == 0 )) || layout_args+=(--config.model.bn=ghost --config.model.ghost_batch_size="$GHOST")
  [[ -z "$DATA_KEY" ]] || layout_args+=("--config.$DATA_KEY=$BA_DATA_DIR")
  local cmd=("${LAUNCH_PREFIX[@]}" "$BA_TRAIN" --config "$CONFIG_FILE" --workdir "$WORKDIR"
             "${layout_args[@]}" "${TRAIN_ARGS[@]}" "$@")
  local shown="" v
  for v in "${SITE_ENV_SHOWN[@]}"; do shown+=" $v=${!v}"; done
  ba_log "environment:$shown"
  ba_log "workdir: $WORKDIR"
  ba_log "launch: $(printf '%q ' "${cmd[@]}")"
  if [[ "${BA_DRY_RUN:-0}" == 1 ]]; then
    ba_log "dry run (BA_DRY_RUN=1): checks passed, nothing launched"
    exit 0
  fi
  [[ -n "${SLURM_JOB_ID:-}" ]] ||
    ba_die "not inside a Slurm job: submit with sbatch or slurm/submit.sh (BA_DRY_RUN=1 shows the layout; launch/local.sh runs on one machine)"

  if [[ "${BA_MODULES:-1}" == 1 ]]; then
    if ! type module > /dev/null 2>&1; then
      local init
      for init in /opt/cray/pe/modules/default/init/bash /opt/modules/default/init/bash \
                  /usr/share/lmod/lmod/init/bash /etc/profile.d/modules.sh; do
        # shellcheck disable=SC1090
        if [[ -r "$init" ]]; then set +u; source "$init"; set -u; break; fi
      done
    fi
    type module > /dev/null 2>&1 || ba_die "the module command is not available in the job: fix the site block or set BA_MODULES=0"
    set +u; ba_site_modules; set -u   # module scripts are not written for nounset
  fi
  mkdir -p "$WORKDIR"
  ba_history "start on $NODES node(s): $LAYOUT"
  if (( STOP_REQUESTED )); then   # the signal came during set-up: nothing new to save
    ba_requeue "$REQUEUE_EXIT_CODE"
  fi

  "${cmd[@]}" &
  LAUNCH_PID=$!
  local rc=0 r seen got=0
  while :; do   # a trapped signal interrupts `wait`; wait again for the real exit code
    seen=$SIGNALS_SEEN; r=0
    wait "$LAUNCH_PID" || r=$?
    if (( r == 127 && got )); then break; fi   # already reaped: keep the code we have
    rc=$r; got=1
    (( r > 128 && SIGNALS_SEEN != seen )) || break
  done
  LAUNCH_PID=""
  ba_log "ba-train exited with code $rc"
  if (( rc == 0 )); then
    ba_history "done"
    exit 0
  fi
  if (( TERMINATED )); then
    ba_log "terminated by SIGTERM: not requeueing (a pre-empted job with --requeue is requeued by Slurm itself)"
    ba_history "exit $rc after SIGTERM, not requeued"
    exit "$rc"
  fi
  if (( rc == REQUEUE_EXIT_CODE )); then
    ba_requeue "$rc"
  fi
  if (( STOP_REQUESTED )); then
    # e.g. the signal reached the ranks before ba-train installed its handlers:
    # no new checkpoint, but the last one in the workdir is intact.
    ba_log "ranks ended with code $rc after the stop signal: continuing from the last checkpoint"
    ba_requeue "$rc"
  fi
  if (( rc > 128 && rc < 160 )); then   # srun: 128 + the signal that killed a rank
    ba_log "a rank was killed by signal $((rc - 128)) (9: the OOM killer or a lost node); srun --wait=$SRUN_WAIT then ended the others. The last checkpoint in $WORKDIR is intact: resubmit to continue"
  fi
  ba_log "ba-train failed (exit code $rc): not requeueing; see the messages above"
  ba_history "failed with exit code $rc"
  exit "$rc"
}
