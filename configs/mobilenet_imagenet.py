"""MobileNet (v1, width 1.0) on ImageNet: Table 2 (M = 4), appendix C.2.

Goyal et al.'s regime as for every ImageNet model of the paper: B = 256, LR 0.1
/10 at epochs 30, 60 and 80 of 90, weight decay 1e-4 (not on BN parameters),
momentum 0.9; MobileNet's lighter crop (Howard et al.) to 224 + flip.
1281167 // 256 = 5004 steps per epoch x 90 epochs = 450k steps in all three:

    fixed_steps    B 256 unique x M 1                  90 epochs    4 ranks x 64
    fixed_samples  B 1024 unique x M 1                 360 epochs   16 ranks x 64
    ba             B 256 unique x M 4 = 1024 per step  90 epochs    16 ranks x (1 copy x 64), groups of 4

Launch (ImageNet TFRecord shards in data/imagenet-tfrecords, see docs/reproduce.md):
    launch/local.sh 16 ba-train --config configs/mobilenet_imagenet.py:ba --workdir workdirs/mobilenet_imagenet/ba \\
        --config.input.source_kwargs.data_dir=/data/imagenet-tfrecords
    launch/local.sh 4 ba-train --config configs/mobilenet_imagenet.py:fixed_steps --workdir workdirs/mobilenet_imagenet/fixed_steps
    launch/local.sh 16 ba-train --config configs/mobilenet_imagenet.py:fixed_samples --workdir workdirs/mobilenet_imagenet/fixed_samples
Slurm (docs/slurm.md): a slurm/ template with BA_CONFIG=configs/mobilenet_imagenet.py:<variant> and
BA_NODES / BA_BATCH / BA_M / BA_M_RANKS / BA_PER_RANK set to the layout above (16 / 4 / 16 nodes).

Paper, validation top-1: fixed #steps 70.60%, fixed #samples 69.50%, BA 71.40%.
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.imagenet_config(augment="imagenet_light")
    c.model.name = "mobilenet_v1"
    return paper_tables.variant(c, arg, paper_tables.TABLE2["mobilenet_imagenet"])
