"""VGG-16 (with batch norm) on CIFAR-10: Table 2 (M = 32).

The BA authors' VGG regime: LR 0.1, x0.2 at epochs 60, 120 and 160 of 200,
weight decay 5e-4, momentum 0.9, dropout 0.5 before the hidden dense layers;
pad-4 crop + flip. The paper gives B only for ResNet44 (64); the same B here.
50000 // 64 = 781 steps per epoch x 200 epochs = 156k steps in all three:

    fixed_steps    B 64 unique x M 1                   200 epochs   1 rank x 64
    fixed_samples  B 2048 unique x M 1                 6400 epochs  8 ranks x 256
    ba             B 64 unique x M 32 = 2048 per step  200 epochs   8 ranks x (4 copies x 64)

Launch (CIFAR-10 prepared once with `tfds build cifar10`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/vgg16_cifar10.py:ba --workdir workdirs/vgg16_cifar10/ba
    launch/local.sh 1 ba-train --config configs/vgg16_cifar10.py:fixed_steps --workdir workdirs/vgg16_cifar10/fixed_steps
    launch/local.sh 8 ba-train --config configs/vgg16_cifar10.py:fixed_samples --workdir workdirs/vgg16_cifar10/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/vgg16_cifar10.py --workdir workdirs/vgg16_cifar10

Paper, validation top-1: fixed #steps 93.82%, fixed #samples 94.49%, BA 95.32%.
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cifar_config("cifar10")
    c.model.name = "vgg16"
    c.input.augment = "cifar"
    c.input.batch_size = 64            # B unique
    c.optim.base_lr = 0.1
    c.optim.regime = "cifar_wrn"       # x0.2 at 60, 120, 160 of 200: the authors' VGG regime
    c.optim.weight_decay = 5e-4
    c.train.epochs = 200
    return paper_tables.variant(c, arg, paper_tables.TABLE2["vgg16_cifar10"])
