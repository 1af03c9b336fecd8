"""ResNet-50 on ImageNet: Table 2 (M = 4), appendix C.2.

Goyal et al.'s regime: B = 256, LR 0.1 /10 at epochs 30, 60 and 80 of 90, weight
decay 1e-4 (not on BN parameters), momentum 0.9, no warmup; Szegedy et al.'s
random-resized crop (8%-100% area, aspect 3/4-4/3) to 224 + flip; ghost batch
norm over 32 images. 1281167 // 256 = 5004 steps per epoch x 90 epochs = 450k
steps in all three; 64 images per rank as in appendix D:

    fixed_steps    B 256 unique x M 1                  90 epochs    4 ranks x 64
    fixed_samples  B 1024 unique x M 1                 360 epochs   16 ranks x 64
    ba             B 256 unique x M 4 = 1024 per step  90 epochs    16 ranks x (1 copy x 64), groups of 4

Launch (ImageNet TFRecord shards in data/imagenet-tfrecords, see docs/reproduce.md):
    launch/local.sh 16 ba-train --config configs/resnet50_imagenet.py:ba --workdir workdirs/resnet50_imagenet/ba \\
        --config.input.source_kwargs.data_dir=/data/imagenet-tfrecords
    launch/local.sh 4 ba-train --config configs/resnet50_imagenet.py:fixed_steps --workdir workdirs/resnet50_imagenet/fixed_steps
    launch/local.sh 16 ba-train --config configs/resnet50_imagenet.py:fixed_samples --workdir workdirs/resnet50_imagenet/fixed_samples
Slurm (docs/slurm.md): slurm/resnet50_imagenet_b256_m4_16nodes.sh is this BA layout on 16 nodes
(with the 40-epoch schedule below; append --config.optim.regime=imagenet --config.train.epochs=90
for Table 2's); other variants: BA_CONFIG=configs/resnet50_imagenet.py:<variant> with BA_NODES etc.
The paper's faster schedules:
    --config.optim.regime=imagenet_ba_fast --config.train.epochs=40     (76.86% in 40 epochs)
    --config.optim.regime=imagenet_ba_faster --config.train.epochs=23   (75.7% in 23 epochs)
Test-time augmentation (Table 5): ba-eval --workdir workdirs/resnet50_imagenet/ba --tta 10

Paper, validation top-1: fixed #steps 76.30%, fixed #samples 75.70%, BA 76.86%
(Table 5, 10-copy TTA: baseline 77.10%, BA 77.9% from a single crop of 77.85% with M=10).
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.imagenet_config(augment="imagenet")   # Szegedy et al.'s crop
    c.model.name = "resnet50"
    c.model.bn = "ghost"
    c.model.ghost_batch_size = 32      # appendix C.2
    return paper_tables.variant(c, arg, paper_tables.TABLE2["resnet50_imagenet"])
