"""Synthetic images for benchmarks and smoke runs (no data needed).

Random 32x32x3 images whose class is a brightness offset (learnable), CIFAR-style
augmentation. Sizes are ordinary keys, so benchmarks override them:

    launch/local.sh 2 ba-train --config configs/synthetic.py --workdir /tmp/syn \\
        --config.input.source_kwargs.num_examples=4096 --config.model.name=resnet20

Default: 2 ranks x (1 copy x 32 unique) = B 64 unique x M 1 per step (no BA).
"""
from ba_dist.config import base_config


def get_config():
    c = base_config()
    c.input.dataset = "synthetic"
    c.input.source_kwargs.num_examples = 4096
    c.input.source_kwargs.image_shape = (32, 32, 3)
    c.input.source_kwargs.num_classes = 10
    c.input.augment = "cifar"
    c.input.batch_size = 64
    c.model.name = "resnet20"
    c.optim.regime = "constant"
    c.optim.weight_decay = 0.0
    c.train.epochs = 3
    c.train.verbose = 2
    return c
