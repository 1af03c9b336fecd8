"""DenseNet-BC-100 (k = 12) on CIFAR-100: Table 2 (M = 4).

Huang et al.'s regime: B = 64, LR 0.1 /10 at epochs 150 and 225 of 300, weight
decay 1e-4, Nesterov momentum 0.9, pad-4 crop + flip (their 77.73% is the
paper's fixed #steps number). 50000 // 64 = 781 steps per epoch x 300 epochs
= 234k steps in all three:

    fixed_steps    B 64 unique x M 1                   300 epochs   2 ranks x 32
    fixed_samples  B 256 unique x M 1                  1200 epochs  8 ranks x 32
    ba             B 64 unique x M 4 = 256 per step    300 epochs   8 ranks x (1 copy x 32), groups of 4

Launch (CIFAR-100 prepared once with `tfds build cifar100`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/densenet100_12_cifar100.py:ba --workdir workdirs/densenet100_12_cifar100/ba
    launch/local.sh 2 ba-train --config configs/densenet100_12_cifar100.py:fixed_steps --workdir workdirs/densenet100_12_cifar100/fixed_steps
    launch/local.sh 8 ba-train --config configs/densenet100_12_cifar100.py:fixed_samples --workdir workdirs/densenet100_12_cifar100/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/densenet100_12_cifar100.py --workdir workdirs/densenet100_12_cifar100

Paper, validation top-1: fixed #steps 77.73%, fixed #samples 75.35%, BA 78.80%.
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cifar_config("cifar100")
    c.model.name = "densenet100_12"
    c.input.augment = "cifar"
    c.input.batch_size = 64            # B unique
    c.optim.base_lr = 0.1
    c.optim.regime = "cifar_densenet"
    c.optim.weight_decay = 1e-4
    c.optim.nesterov = True
    c.train.epochs = 300
    return paper_tables.variant(c, arg, paper_tables.TABLE2["densenet100_12_cifar100"])
