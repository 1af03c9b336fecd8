"""Image-folder run of the fault suite: tiny 8x8 images, BA on one group of 2 ranks, 2 epochs.

    mpirun -np 2 .venv/bin/ba-train --config tests/faults/folder_config.py --workdir W \\
        --config.input.source_kwargs.data_dir=DIR [--config.input.on_corrupt=error]

``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` are written by
tests/faults/test_fault_data.py (with damaged files among the training images).
The reader rank decodes and broadcasts (M = 2 ranks x 1 copy):

    2 ranks x (1 copy x 8 unique) = B 8 unique x M 2 = 16 examples per step

A few seconds of training; there is nothing to learn, only files to survive.
"""
from ba_dist.config import base_config


def get_config():
    c = base_config()
    c.input.dataset = "folder"
    c.input.source_kwargs.data_dir = ""   # declared, so the command line can set it
    c.input.augment = "digits"            # +-1 px shifts: keeps 8x8, any channel count
    c.input.eval_transform = "none"
    c.input.batch_size = 8                # B unique
    c.input.eval_batch_size = 16
    c.input.prefetch = 2
    c.input.read_threads = 2
    c.ba.multiplicity = 2                 # M
    c.ba.m_ranks = 2                      # one group: reader + one receiver
    c.model.name = "digits_cnn"
    c.train.epochs = 2
    c.train.verbose = 0
    return c
