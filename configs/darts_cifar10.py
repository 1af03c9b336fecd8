"""DARTS-V2 on CIFAR-10 with cutout: Table 2 (M = 8).

The DARTS evaluation regime (Liu et al. 2019, section 3.3 / A.2), which the BA authors'
code also uses: 20 cells, 36 initial channels (3.35M parameters), B = 96, 600 epochs,
SGD momentum 0.9, LR 0.025 cosine-annealed to 0, weight decay 3e-4 (not on batch-norm
parameters or biases, as in the BA authors' code), pad-4 crop + flip + one 16x16
cutout, drop-path 0.2. 50000 // 96 = 520 steps per epoch x 600 epochs = 312k steps in
all three:

    fixed_steps    B 96 unique x M 1                   600 epochs   1 rank x 96
    fixed_samples  B 768 unique x M 1                  4800 epochs  8 ranks x 96
    ba             B 96 unique x M 8 = 768 per step    600 epochs   8 ranks x (1 copy x 96), groups of 8

Every rank normalises over 96 distinct images in all three variants (BA spreads the
8 copies over the 8 ranks of a group), so no ghost batch norm is needed.

As in DARTS: the auxiliary head with weight 0.4 (``model.auxiliary_weight``: the loss adds
0.4 x CE of the auxiliary logits; evaluation and ba-eval use the main logits), the drop-path
probability ramped linearly 0 -> 0.2 over training (``model.drop_path_rate``; epoch e of E
uses 0.2 e / E) and the averaged loss gradient clipped at global norm 5
(``optim.grad_clip_norm``; weight decay is added after the clip, as PyTorch's SGD does).

Launch (CIFAR-10 prepared once with `tfds build cifar10`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/darts_cifar10.py:ba --workdir workdirs/darts_cifar10/ba
    launch/local.sh 1 ba-train --config configs/darts_cifar10.py:fixed_steps --workdir workdirs/darts_cifar10/fixed_steps
    launch/local.sh 8 ba-train --config configs/darts_cifar10.py:fixed_samples --workdir workdirs/darts_cifar10/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/darts_cifar10.py --workdir workdirs/darts_cifar10
Test-time augmentation (Table 5): ba-eval --workdir workdirs/darts_cifar10/ba --tta 10
Paper, validation top-1: fixed #steps 97.65%, fixed #samples 97.63%, BA 97.85%
(Table 5, 10-copy TTA: baseline 97.73%, BA 98.13%).
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cell_network_config("darts")   # B 96, 600 epochs, cosine LR 0.025, wd 3e-4
    c.model.auxiliary_weight = 0.4     # DARTS's auxiliary classifier
    c.model.drop_path_rate = 0.2       # ramped 0 -> 0.2 over training
    c.optim.grad_clip_norm = 5.0
    return paper_tables.variant(c, arg, paper_tables.TABLE2["darts_cifar10"])
