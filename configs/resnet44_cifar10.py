"""ResNet-44 on CIFAR-10 with cutout: Table 2, row 1 (M = 40).

He et al.'s regime (LR 0.1, /10 at epochs 81 and 122 of 164, weight decay 1e-4,
momentum 0.9) at the paper's B = 64 (section 4.1), pad-4 crop + flip + one 16x16
cutout. 50000 // 64 = 781 steps per epoch x 164 epochs = 128k steps in all three:

    fixed_steps    B 64 unique x M 1                   164 epochs   1 rank x 64
    fixed_samples  B 2560 unique x M 1                 6560 epochs  8 ranks x 320
    ba             B 64 unique x M 40 = 2560 per step  164 epochs   8 ranks x (5 copies x 64)

Launch (CIFAR-10 prepared once with `tfds build cifar10`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/resnet44_cifar10.py:ba --workdir workdirs/resnet44_cifar10/ba
    launch/local.sh 1 ba-train --config configs/resnet44_cifar10.py:fixed_steps --workdir workdirs/resnet44_cifar10/fixed_steps
    launch/local.sh 8 ba-train --config configs/resnet44_cifar10.py:fixed_samples --workdir workdirs/resnet44_cifar10/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/resnet44_cifar10.py --workdir workdirs/resnet44_cifar10

Paper, validation top-1: fixed #steps 93.70%, fixed #samples 93.80%, BA 95.43%.
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cifar_config("cifar10")
    c.model.name = "resnet44"
    c.input.augment = "cifar_cutout"   # the paper's ResNet44 runs use cutout (section 4.1)
    c.input.batch_size = 64            # B unique
    c.optim.base_lr = 0.1
    c.optim.regime = "cifar_resnet"
    c.optim.weight_decay = 1e-4
    c.train.epochs = 164
    return paper_tables.variant(c, arg, paper_tables.TABLE2["resnet44_cifar10"])
