#!/bin/bash
# shellcheck disable=SC2034  # the variables below are read by slurm/common.sh
# The plain large-batch baseline of section 4.5: ResNet-50 on ImageNet, B = 8192, no
# repetition (M = 1), 128 Cray XC50 nodes with 64 images each; everything else as in
# resnet50_imagenet_512nodes.sh (ghost batch norm 32, Goyal et al.'s regime with 5
# warm-up epochs, linear LR scaling to 3.2), so the two runs differ only in M.
# Paper: 75.86% top-1 (BA with M = 4 on 512 nodes: 76.51%).
#
#   128 ranks x 64 per rank (1 copies x 64 unique) = B 8192 unique x M 1 = 8192 per step
#   128 groups of 1 rank; 156 steps per epoch, 14,040 in all (the same steps as the BA run)
#
#   slurm/submit.sh slurm/resnet50_imagenet_baseline_128nodes.sh   (docs/slurm.md)
#SBATCH --job-name=ba-r50-b8192-m1-128n
#SBATCH --nodes=128
#SBATCH --time=04:00:00
#SBATCH --switches=1@00:30:00
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
NODES=128 PER_RANK=64 BATCH=8192 M=1 M_RANKS=1 GHOST=32
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
