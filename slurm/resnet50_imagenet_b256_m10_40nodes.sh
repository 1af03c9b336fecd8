#!/bin/bash
# shellcheck disable=SC2034  # the variables below are read by slurm/common.sh
# Appendix D, figure 5: ResNet-50 on ImageNet with B = 256 unique images and M = 10 on
# 40 Cray XC50 nodes of 64 images each (groups of 10 nodes share the same 64 unique
# images, one augmented copy per node), ghost batch norm over 32, the shorter regime
# without warm-up (LR 0.1, /10 at epochs 30 and 35 of 40). The other run of the figure:
# M = 4 on 16 nodes: resnet50_imagenet_b256_m4_16nodes.sh.
# Paper: about 1.47 steps/s for either M; higher M reaches lower validation error.
#
#   40 ranks x 64 per rank (1 copies x 64 unique) = B 256 unique x M 10 = 2560 per step
#   4 groups of 10 ranks; 1,281,167 / 256 = 5004 steps per epoch, 200,160 in all:
#   about 38 h at 1.47 steps/s, so the job runs in two allocations (stop + requeue)
#
#   slurm/submit.sh slurm/resnet50_imagenet_b256_m10_40nodes.sh   (docs/slurm.md)
#SBATCH --job-name=ba-r50-b256-m10-40n
#SBATCH --nodes=40
#SBATCH --time=24:00:00
#SBATCH --switches=1@00:10:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# site (Cray XC50; keep in step with the site block of slurm/common.sh)
#SBATCH --constraint=gpu
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=12
set -euo pipefail

NAME=resnet50_imagenet_fast
CONFIG=configs/resnet50_imagenet_ba.py
NODES=40 PER_RANK=64 BATCH=256 M=10 M_RANKS=10 GHOST=32
TRAIN_ARGS=(
  --config.train.epochs=40 --config.optim.regime=imagenet_ba_fast --config.optim.warmup_epochs=0
  --config.optim.base_lr=0.1 --config.optim.lr_scaling=none
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
