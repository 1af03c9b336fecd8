"""Smoke run on the embedded UCI digits (scikit-learn ships them: no download).

BA with M = 4 on 2 ranks: both ranks form one group (m_ranks = 2) that trains
on the same 64 unique digits per step, and each rank makes 2 augmented copies
(small random translations; no flips, digits are not mirror-symmetric):

    2 ranks x (2 copies x 64 unique) = B 64 unique x M 4 = 256 examples per step

Launch (README's main job):
    mpirun -np 2 .venv/bin/ba-train --config configs/digits_smoke.py --workdir workdirs/digits_smoke

Expected: 97.49% validation top-1 on the 359 held-out digits (measured in two
runs; tests/test_train_mpi.py requires >= 95%) in a few minutes on 2 CPU cores
(22 steps per epoch x 15 epochs; 2m21s in docs/performance.md). The M = 1 run
of docs/performance.md reaches 98.05%.

The same three-way comparison as the paper's Table 2 rows (ba_dist/paper_tables.py),
in about a minute per variant:
    ba-experiment --config configs/digits_smoke.py --ranks 2 --workdir workdirs/digits_table2
i.e. `configs/digits_smoke.py:fixed_steps` (B 64, M 1), `:fixed_samples` (B 256,
M 1, 60 epochs) and `:ba` (this config). The paper has no numbers for digits.
"""
from ba_dist import paper_tables
from ba_dist.config import base_config


def get_config(arg=None):
    c = base_config()
    c.input.dataset = "digits"
    c.input.batch_size = 64          # B unique
    c.input.augment = "digits"
    c.ba.multiplicity = 4            # M
    c.ba.m_ranks = 2                 # -> m_local = 2 copies per rank
    c.model.name = "digits_cnn"
    c.optim.base_lr = 0.05
    c.optim.regime = "cosine"        # decays to 0 over train.epochs
    c.optim.weight_decay = 5e-4
    c.train.epochs = 15
    c.train.verbose = 2
    if arg is None:                  # the smoke run, exactly as above
        return c
    c.ba.multiplicity, c.ba.m_ranks = 1, 1
    return paper_tables.variant(c, arg, paper_tables.TABLE2["digits_smoke"])
