#!/bin/bash
# shellcheck disable=SC2034  # the variables below are read by slurm/common.sh
# Table 2's ResNet-44 on CIFAR-10 with M = 40 (paper: 95.43% top-1; baseline 93.70%),
# B = 64 unique images, spread over 4 Cray XC50 nodes as ONE group: every node gets all
# 64 unique images of the step (read once, broadcast) and makes 10 augmented copies
# of each, so each P100 trains on 640 images and its batch norm sees every distinct
# image of the step. All hyperparameters come from the config file.
#
#   4 ranks x 640 per rank (10 copies x 64 unique) = B 64 unique x M 40 = 2560 per step
#   1 group of 4 ranks; 50,000 / 64 = 781 steps per epoch
#
# Why 4 nodes: 640 images of 32x32 fit a P100 easily and keep it busy, and ResNet-44's
# 0.66M parameters make the allreduce cheap; 8, 10, 20 or 40 nodes (5, 4, 2, 1 copies
# per node) also divide and shorten the run if the queue allows: BA_NODES=8
# BA_M_RANKS=8 BA_PER_RANK=320 (docs/slurm.md).
#
#   slurm/submit.sh slurm/resnet44_cifar10_ba.sh   (docs/slurm.md)
#SBATCH --job-name=ba-r44-c10-m40-4n
#SBATCH --nodes=4
#SBATCH --time=06:00:00
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

NAME=resnet44_cifar10
CONFIG=configs/resnet44_cifar10_ba.py
NODES=4 PER_RANK=640 BATCH=64 M=40 M_RANKS=4 GHOST=0
TRAIN_ARGS=()

# Slurm runs a copy of this file from its spool directory: find the repository
# (BA_ROOT, else the submission directory, else this file's location outside Slurm).
for BA_ROOT in "${BA_ROOT:-}" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do
  [[ -f "$BA_ROOT/slurm/common.sh" ]] && break
done
# shellcheck source=slurm/common.sh
source "$BA_ROOT/slurm/common.sh" ||
  { echo "cannot find slurm/common.sh: submit from the repository root or set BA_ROOT" >&2; exit 2; }
ba_main "$@"
