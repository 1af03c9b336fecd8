"""Wide-ResNet-28-10 on CIFAR-100: Table 2 (M = 10).

Zagoruyko & Komodakis' regime: B = 128, LR 0.1 x0.2 at epochs 60, 120 and 160 of
200, weight decay 5e-4, Nesterov momentum 0.9, pad-4 crop + flip, no dropout;
ghost batch norm over 32 images in all three variants (below).
50000 // 128 = 390 steps per epoch x 200 epochs = 78k steps in all three:

    fixed_steps    B 128 unique x M 1                  200 epochs   1 rank x 128
    fixed_samples  B 1280 unique x M 1                 2000 epochs  8 ranks x 160
    ba             B 128 unique x M 10 = 1280 per step 200 epochs   8 ranks x (5 copies x 32), groups of 2

Launch (CIFAR-100 prepared once with `tfds build cifar100`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/wrn28_10_cifar100.py:ba --workdir workdirs/wrn28_10_cifar100/ba
    launch/local.sh 1 ba-train --config configs/wrn28_10_cifar100.py:fixed_steps --workdir workdirs/wrn28_10_cifar100/fixed_steps
    launch/local.sh 8 ba-train --config configs/wrn28_10_cifar100.py:fixed_samples --workdir workdirs/wrn28_10_cifar100/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/wrn28_10_cifar100.py --workdir workdirs/wrn28_10_cifar100
Test-time augmentation (Table 5): ba-eval --workdir workdirs/wrn28_10_cifar100/ba --tta 10

Paper, validation top-1: fixed #steps 79.85%, fixed #samples 80.12%, BA 83.45%
(Table 5, 10-copy TTA: baseline 80.29%, BA 84.88%).
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cifar_config("cifar100")
    c.model.name = "wrn28_10"
    c.input.augment = "cifar"
    c.input.batch_size = 128           # B unique
    c.optim.base_lr = 0.1
    c.optim.regime = "cifar_wrn"
    c.optim.weight_decay = 5e-4
    c.optim.nesterov = True
    c.train.epochs = 200
    # BN statistics over 32 distinct images in every variant. BA's rank batch is copy-major
    # (copy 0 of its 32 unique images, then copy 1, ...), so each ghost batch of 32 holds
    # 32 distinct images; without ghost BN the baseline would normalise over 128 (Fixed
    # #Steps, one rank) or 96/160 (Fixed #Samples) and BA over 32 x copies, a confound.
    c.model.bn = "ghost"
    c.model.ghost_batch_size = 32
    return paper_tables.variant(c, arg, paper_tables.TABLE2["wrn28_10_cifar100"])
