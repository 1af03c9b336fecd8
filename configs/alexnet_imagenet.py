"""AlexNet (one tower, with batch norm) on ImageNet: Table 2 (M = 8), appendix C.2.

Goyal et al.'s regime as for every ImageNet model of the paper: B = 256, LR 0.1
/10 at epochs 30, 60 and 80 of 90, weight decay 1e-4 (not on BN parameters),
momentum 0.9, dropout 0.5; AlexNet's original augmentation (shorter side 256,
random 224 crop, flip; no PCA lighting). 1281167 // 256 = 5004 steps per epoch
x 90 epochs = 450k steps in all three; 128 images per rank:

    fixed_steps    B 256 unique x M 1                  90 epochs    2 ranks x 128
    fixed_samples  B 2048 unique x M 1                 720 epochs   16 ranks x 128
    ba             B 256 unique x M 8 = 2048 per step  90 epochs    16 ranks x (1 copy x 128), groups of 8

Launch (ImageNet TFRecord shards in data/imagenet-tfrecords, see docs/reproduce.md):
    launch/local.sh 16 ba-train --config configs/alexnet_imagenet.py:ba --workdir workdirs/alexnet_imagenet/ba \\
        --config.input.source_kwargs.data_dir=/data/imagenet-tfrecords
    launch/local.sh 2 ba-train --config configs/alexnet_imagenet.py:fixed_steps --workdir workdirs/alexnet_imagenet/fixed_steps
    launch/local.sh 16 ba-train --config configs/alexnet_imagenet.py:fixed_samples --workdir workdirs/alexnet_imagenet/fixed_samples
Slurm (docs/slurm.md): a slurm/ template with BA_CONFIG=configs/alexnet_imagenet.py:<variant> and
BA_NODES / BA_BATCH / BA_M / BA_M_RANKS / BA_PER_RANK set to the layout above (16 / 2 / 16 nodes).

Paper, validation top-1: fixed #steps 58.25%, fixed #samples 57.60%, BA 62.31%.
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.imagenet_config(augment="alexnet")
    c.model.name = "alexnet"
    return paper_tables.variant(c, arg, paper_tables.TABLE2["alexnet_imagenet"])
