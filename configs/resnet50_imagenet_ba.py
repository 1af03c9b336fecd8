"""ResNet-50 on ImageNet with Batch Augmentation, M = 4: configs/resnet50_imagenet.py:ba.

B 256 unique x M 4 = 1024 examples per step, 90 epochs of Goyal et al.'s regime,
ghost batch norm over 32 images (appendix C.2); the two baselines and all details
are in configs/resnet50_imagenet.py.

Launch (ImageNet TFRecord shards, see docs/reproduce.md):
    launch/local.sh 16 ba-train --config configs/resnet50_imagenet_ba.py --workdir workdirs/resnet50_imagenet/ba \\
        --config.input.source_kwargs.data_dir=/data/imagenet-tfrecords
Slurm: the slurm/resnet50_imagenet_*.sh templates use this file (docs/slurm.md), e.g.
    slurm/submit.sh slurm/resnet50_imagenet_b256_m4_16nodes.sh   (B 256 x M 4 on 16 nodes, 40 epochs)

Paper, validation top-1: fixed #steps 76.30%, fixed #samples 75.70%, BA 76.86%.
"""
from pathlib import Path

from ba_dist import paper_tables


def get_config(arg=None):
    return paper_tables.ba_only(Path(__file__).with_name("resnet50_imagenet.py"), arg)
