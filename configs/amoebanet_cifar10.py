"""AmoebaNet on CIFAR-10 with cutout: Table 2 (M = 8).

AmoebaNet-A cells (Real et al. 2019) in the DARTS evaluation network, as in the BA
authors' code, at the width of the paper's Table 5, "AmoebaNet (width=128)": 20 cells,
128 initial channels (37.5M parameters). Regime as configs/darts_cifar10.py (the
authors' code trains both alike): B = 96, 600 epochs, SGD momentum 0.9, LR 0.025
cosine-annealed to 0, weight decay 3e-4 (not on batch-norm parameters or biases),
pad-4 crop + flip + one 16x16 cutout, drop-path 0.2. 50000 // 96 = 520 steps per
epoch x 600 epochs = 312k steps in all three:

    fixed_steps    B 96 unique x M 1                   600 epochs   1 rank x 96
    fixed_samples  B 768 unique x M 1                  4800 epochs  8 ranks x 96
    ba             B 96 unique x M 8 = 768 per step    600 epochs   8 ranks x (1 copy x 96), groups of 8

Every rank normalises over 96 distinct images in all three variants. The paper's B and
epochs for this row are not stated; section 4.1 adds that with M = 12 AmoebaNet reaches
94.46% after 14 epochs without changing the LR schedule. Auxiliary head (weight
0.4), drop-path ramp 0 -> 0.2 and gradient clipping at norm 5 as in configs/darts_cifar10.py.

Launch (CIFAR-10 prepared once with `tfds build cifar10`, see docs/reproduce.md):
    launch/local.sh 8 ba-train --config configs/amoebanet_cifar10.py:ba --workdir workdirs/amoebanet_cifar10/ba
    launch/local.sh 1 ba-train --config configs/amoebanet_cifar10.py:fixed_steps --workdir workdirs/amoebanet_cifar10/fixed_steps
    launch/local.sh 8 ba-train --config configs/amoebanet_cifar10.py:fixed_samples --workdir workdirs/amoebanet_cifar10/fixed_samples
or all three and the comparison table:
    ba-experiment --config configs/amoebanet_cifar10.py --workdir workdirs/amoebanet_cifar10
Test-time augmentation (Table 5): ba-eval --workdir workdirs/amoebanet_cifar10/ba --tta 10
Paper, validation top-1: fixed #steps 98.16%, fixed #samples 98.10%, BA 98.24%
(Table 5, 10-copy TTA: baseline 98.15%, BA 98.42%).
"""
from ba_dist import paper_tables


def get_config(arg=None):
    c = paper_tables.cell_network_config("amoebanet")   # B 96, 600 epochs, cosine LR 0.025, wd 3e-4
    c.model.auxiliary_weight = 0.4     # DARTS's auxiliary classifier
    c.model.drop_path_rate = 0.2       # ramped 0 -> 0.2 over training
    c.optim.grad_clip_norm = 5.0
    return paper_tables.variant(c, arg, paper_tables.TABLE2["amoebanet_cifar10"])
