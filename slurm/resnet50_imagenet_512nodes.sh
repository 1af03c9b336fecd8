#!/bin/bash
# shellcheck disable=SC2034  # the variables below are read by slurm/common.sh
# The paper's large distributed BA run (section 4.5): ResNet-50 on ImageNet, B = 8192
# unique images x M = 4 copies on 512 Cray XC50 nodes; groups of 4 nodes share the
# same 64 unique images and each node augments them once (m_local = 1); ghost batch
# norm over 32; Goyal et al.'s large-batch regime: LR 0.1 x 8192/256 = 3.2 after
# 5 warm-up epochs, /10 at epochs 30, 60 and 80 of 90; weight decay 1e-4 (not on BN).
# Paper: 76.51% top-1 (the plain B = 8192 baseline on 128 nodes: 75.86%).
#
#   512 ranks x 64 per rank (1 copies x 64 unique) = B 8192 unique x M 4 = 32768 per step
#   128 groups of 4 ranks; 1,281,167 / 8192 = 156 steps per epoch, 14,040 in all
#
# From the repository root (docs/slurm.md):
#   export BA_WORK_DIR=$SCRATCH/ba_runs BA_DATA_DIR=$SCRATCH/imagenet BA_ACCOUNT=<project>
#   slurm/submit.sh slurm/resnet50_imagenet_512nodes.sh     # checks, then sbatch
#   BA_DRY_RUN=1 bash slurm/resnet50_imagenet_512nodes.sh   # layout and launch command only
#SBATCH --job-name=ba-r50-b8192-m4-512n
#SBATCH --nodes=512
#SBATCH --time=04:00:00
#SBATCH --switches=2@01:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# site (Cray XC50; keep in step with the site block of slurm/common.sh)
#SBATCH --constraint=gpu
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=12
set -euo pipefail

NAME=resnet50_imagenet
CONFIG=configs/resnet50_imagenet_ba.py
NODES=512 PER_RANK=64 BATCH=8192 M=4 M_RANKS=4 GHOST=32
TRAIN_ARGS=(
  --config.train.epochs=90 --config.optim.regime=imagenet --config.optim.warmup_epochs=5
  --config.optim.base_lr=0.1 --config.optim.lr_scaling=linear --config.optim.reference_batch=256
  --config.optim.weight_decay=1e-4 --config.input.normalize=imagenet --config.input.augment=imagenet
)

# Slurm runs a copy of this file from its spool directory: find the repository
# (BA_ROOT, else the submission directory, else this file's location outside Slurm).
for BA_ROOT in "${BA_ROOT:-}" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do
  [[ -f "$BA_ROOT/slurm/common.sh" ]] && break
done
# shellcheck source=slurm/common.sh
source "$BA_ROOT/slurm/common.sh" ||
  { echo "cannot find slurm/common.sh: submit from the repository root or set BA_ROOT" >&2; exit 2; }
ba_main "$@"
