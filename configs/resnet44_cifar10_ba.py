"""ResNet-44 on CIFAR-10 with cutout and Batch Augmentation, M = 40: configs/resnet44_cifar10.py:ba.

B 64 unique x M 40 = 2560 examples per step, 100 epochs of He et al.'s regime (LR
drop at epoch 81) at the paper's B = 64 (section 4.1); the two baselines and all details are in
configs/resnet44_cifar10.py. The slurm template slurm/resnet44_cifar10_ba.sh uses this
file (4 nodes x 10 copies x 64 unique).

Launch (CIFAR-10 prepared once with `tfds build cifar10`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/resnet44_cifar10_ba.py --workdir workdirs/resnet44_cifar10/ba
    slurm/submit.sh slurm/resnet44_cifar10_ba.sh          (docs/slurm.md)

Paper, validation top-1: fixed #steps 93.70%, fixed #samples 93.80%, BA 95.43%.
"""
from pathlib import Path

from ba_dist import paper_tables


def get_config(arg=None):
    return paper_tables.ba_only(Path(__file__).with_name("resnet44_cifar10.py"), arg)
