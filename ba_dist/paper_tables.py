"""The paper's result tables (Table 2 image rows, Table 5), and the three ways to run a row.

Every row of Table 2 compares Batch Augmentation with two baselines. With a
baseline of ``B`` unique samples per step for ``E`` epochs of ``N`` samples::

    variant        B (unique)  M   epochs   LR drops at       steps          examples/step
    fixed_steps    B           1   E        regime            E x N/B        B
    fixed_samples  M x B       1   M x E    regime x M        E x N/B        M x B
    ba             B           M   E        regime            E x N/B        B x M

so ``fixed_samples`` sees exactly as many examples as BA (a larger batch of
distinct images), ``fixed_steps`` as many steps, and all three take the same
number of SGD steps. The LR is the same in all three (section 4: "we neither
change the learning rate nor the number of training steps for BA"; C.1: a grid
of larger LRs did not improve the large-batch baseline).

Configs under ``configs/`` build the baseline of their row and call
:func:`variant` with the string after the colon of ``--config``::

    ba-train --config configs/resnet44_cifar10.py:fixed_samples --workdir ...
    ba-train --config configs/resnet44_cifar10.py:ba,epochs=20 --workdir ...   # shorter budget

``epochs=E`` sets the row's epoch budget *before* the variant is derived, so
the ``fixed_samples`` run gets ``M x E``; overriding ``--config.train.epochs``
instead acts after the derivation and would break the equal-steps contract.

Nothing here imports TensorFlow: configs are loaded before it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple, Optional

import ml_collections

from ba_dist.config import ConfigError, base_config

__all__ = [
    "VARIANTS",
    "VARIANT_TITLES",
    "Row",
    "TABLE2",
    "TABLE5",
    "TTARow",
    "parse_arg",
    "variant",
    "world_size",
    "ba_only",
    "row_for_config",
    "cifar_config",
    "cell_network_config",
    "imagenet_config",
]

VARIANTS = ("fixed_steps", "fixed_samples", "ba")
VARIANT_TITLES = {"fixed_steps": "Fixed #Steps", "fixed_samples": "Fixed #Samples", "ba": "BA"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One image row of Table 2 (validation top-1 as fractions; None: not in the paper).

    Attributes:
      key: name of the config file, ``configs/<key>.py``.
      network, dataset: as printed in the paper.
      multiplicity: the paper's M for this row.
      fixed_steps, fixed_samples, ba: the paper's top-1 of the three variants.
      ranks: reference world size of the BA run (and of ``fixed_samples``, which
        has the same examples per step); see :func:`world_size`.
    """

    key: str
    network: str
    dataset: str
    multiplicity: int
    fixed_steps: Optional[float]
    fixed_samples: Optional[float]
    ba: Optional[float]
    ranks: int

    @property
    def config(self) -> str:
        return f"configs/{self.key}.py"

    @property
    def title(self) -> str:
        return f"{self.network} / {self.dataset}, M={self.multiplicity}"

    def top1(self, name: str) -> Optional[float]:
        """The paper's top-1 of variant ``name``."""
        return getattr(self, name)


def _row(key, network, dataset, m, steps, samples, ba, ranks) -> tuple[str, Row]:
    pct = lambda v: None if v is None else round(v / 100, 6)
    return key, Row(key, network, dataset, m, pct(steps), pct(samples), pct(ba), ranks)


# Table 2 of the paper, image rows. Reference world sizes keep the per-rank
# batch of the three variants equal (64 images per node for ImageNet, as in
# appendix D; one 8-GPU machine for CIFAR).
TABLE2: dict[str, Row] = dict([
    _row("resnet44_cifar10", "ResNet44", "Cifar10", 40, 93.70, 93.80, 95.43, 8),
    _row("vgg16_cifar10", "VGG16", "Cifar10", 32, 93.82, 94.49, 95.32, 8),
    _row("wrn28_10_cifar10", "Wide-ResNet28-10", "Cifar10", 6, 96.60, 96.60, 97.15, 8),
    _row("darts_cifar10", "DARTS", "Cifar10", 8, 97.65, 97.63, 97.85, 8),
    _row("amoebanet_cifar10", "AmoebaNet", "Cifar10", 8, 98.16, 98.10, 98.24, 8),
    _row("resnet44_cifar100", "ResNet44", "Cifar100", 40, 72.97, 70.30, 74.13, 8),
    _row("vgg16_cifar100", "VGG", "Cifar100", 32, 73.03, 67.20, 75.50, 8),
    _row("wrn28_10_cifar100", "Wide-ResNet28-10", "Cifar100", 10, 79.85, 80.12, 83.45, 8),
    _row("densenet100_12_cifar100", "DenseNet100-12", "Cifar100", 4, 77.73, 75.35, 78.80, 8),
    _row("alexnet_imagenet", "AlexNet", "ImageNet", 8, 58.25, 57.60, 62.31, 16),
    _row("mobilenet_imagenet", "MobileNet", "ImageNet", 4, 70.60, 69.50, 71.40, 16),
    _row("resnet50_imagenet", "ResNet50", "ImageNet", 4, 76.30, 75.70, 76.86, 16),
    # Not in the paper: the embedded digits, to try the three-way comparison in seconds.
    _row("digits_smoke", "digits_cnn", "UCI digits", 4, None, None, None, 2),
])



class TTARow(NamedTuple):
    """One row of Table 5: top-1 of single-crop and 10-copy TTA evaluation (fractions)."""

    baseline: float
    ba: float
    baseline_tta: float
    ba_tta: float

    def error_reduction(self, name: str) -> float:
        """Relative top-1 error reduction by TTA, the table's "Improvement" (``"baseline"``/``"ba"``)."""
        single, tta = getattr(self, name), getattr(self, f"{name}_tta")
        return ((1 - single) - (1 - tta)) / (1 - single)


# Table 5 (appendix E): single-crop vs 10-copy test-time augmentation, keyed by the
# Table 2 row; the paper says BA was trained with M=10 (yet for DARTS and AmoebaNet its
# single-crop numbers repeat Table 2's M = 8 ones). docs/reproduce.md and the configs'
# docstrings quote it (tests/test_configs.py checks both, and the "Improvement" column).
TABLE5: dict[str, TTARow] = {
    "resnet44_cifar10": TTARow(0.9341, 0.9503, 0.9433, 0.9600),
    "darts_cifar10": TTARow(0.9763, 0.9785, 0.9773, 0.9813),
    "amoebanet_cifar10": TTARow(0.9816, 0.9824, 0.9815, 0.9842),
    "wrn28_10_cifar100": TTARow(0.7985, 0.8345, 0.8029, 0.8488),
    "resnet50_imagenet": TTARow(0.7630, 0.7785, 0.7710, 0.7790),
}


def parse_arg(arg: Optional[str]) -> tuple[str, dict]:
    """``"ba"`` / ``"fixed_samples,epochs=20"`` -> ``(variant, {"epochs": 20})``.

    None or "" means "ba". Raises ConfigError naming the bad part.
    """
    parts = [p.strip() for p in (arg or "ba").split(",") if p.strip()]
    name, options = (parts[0] if parts else "ba"), {}
    if name not in VARIANTS:
        raise ConfigError(f"config variant {name!r} is unknown: write configs/<row>.py:<variant> with "
                          f"variant one of {', '.join(VARIANTS)} (optionally followed by ',epochs=E')")
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key != "epochs" or not sep or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"config argument {part!r} in {arg!r}: the only option is epochs=<positive int>")
        options["epochs"] = int(value)
    return name, options


def variant(c: ml_collections.ConfigDict, arg: Optional[str], row: Row) -> ml_collections.ConfigDict:
    """Derives one variant of a Table 2 row from the row's baseline config.

    Args:
      c: the ``fixed_steps`` baseline of the row (``B`` unique, ``E`` epochs, M = 1).
      arg: the config-file argument, e.g. ``"ba"`` (see :func:`parse_arg`).
      row: the row, for M and the reference world size.

    Returns:
      ``c``, changed in place (see the module docstring for the arithmetic).
    """
    name, options = parse_arg(arg)
    if "epochs" in options:
        c.train.epochs = options["epochs"]
    M = row.multiplicity
    c.ba.multiplicity, c.ba.m_ranks = 1, 1
    if name == "ba":
        c.ba.multiplicity = M
        # Spread the copies over ranks that share the unique samples, so each
        # rank normalises its BN batch over as many distinct images as it can
        # (M copies of few images on one rank would degenerate BN, section 4.5).
        c.ba.m_ranks = math.gcd(M, row.ranks)
    elif name == "fixed_samples":
        # M x the batch and M x the epochs: the same steps, the same examples as BA.
        c.input.batch_size *= M
        c.train.epochs *= M
        c.optim.regime_scale *= M       # LR drops land on the same steps as BA's
        c.optim.warmup_epochs *= M
        c.train.eval_every *= M         # evaluate/checkpoint at the same steps as BA
        c.train.checkpoint_every *= M
    return c


def ba_only(row_config: str | Path, arg: Optional[str]) -> ml_collections.ConfigDict:
    """``get_config`` of a BA-only file (``configs/<row>_ba.py``): ``<row>.py:ba``.

    Such files exist because other tools name a single file (the slurm/
    templates check that ``CONFIG`` is a file). ``arg`` may add options
    (``"ba,epochs=40"``) but not choose another variant.
    """
    name, options = parse_arg(arg)
    if name != "ba":
        raise ConfigError(f"this config is the BA run of {Path(row_config).name} only; "
                          f"use {Path(row_config).name}:{name}")
    from ba_dist.config import load_config_file
    return load_config_file(f"{row_config}:ba" + "".join(f",{k}={v}" for k, v in options.items()))


def world_size(row: Row, name: str) -> int:
    """Reference number of ranks for a variant: the same examples per rank in all three.

    BA and ``fixed_samples`` process ``M x B`` examples per step on ``row.ranks``
    ranks; ``fixed_steps`` processes ``B`` and takes ``row.ranks / M`` of them (the
    paper's "maximal number of images per batch per node", appendix D).
    """
    parse_arg(name)
    return max(1, row.ranks // row.multiplicity) if name == "fixed_steps" else row.ranks


def row_for_config(path: str) -> Optional[Row]:
    """The Table 2 row of a config file path (``configs/<key>.py[:arg]``), or None."""
    stem = path.split(":", 1)[0].rsplit("/", 1)[-1]
    return TABLE2.get(stem[:-3] if stem.endswith(".py") else stem)


def cifar_config(dataset: str) -> ml_collections.ConfigDict:
    """Base config of a CIFAR row: tensorflow_datasets ``cifar10``/``cifar100``, test split.

    The data is read from ``~/tensorflow_datasets`` unless
    ``--config.input.source_kwargs.data_dir=...`` says otherwise; prepare it once
    with ``tfds build cifar10`` (see docs/reproduce.md).
    """
    if dataset not in ("cifar10", "cifar100"):
        raise ConfigError(f"cifar_config: dataset must be cifar10 or cifar100, got {dataset!r}")
    c = base_config()
    c.input.dataset = "tfds"
    c.input.source_kwargs.dataset = dataset
    c.input.source_kwargs.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
    c.input.source_kwargs.download = False   # True: let tfds download and prepare (needs a network)
    c.input.train_split = "train"
    c.input.eval_split = "test"        # CIFAR's 10k test images are the paper's "validation"
    c.input.normalize = "cifar10"
    c.input.eval_transform = "none"
    c.optim.momentum = 0.9
    return c


def cell_network_config(model: str) -> ml_collections.ConfigDict:
    """Base config of the DARTS and AmoebaNet rows: DARTS's CIFAR-10 evaluation regime.

    Liu et al. 2019 (A.2), as the BA authors' code trains both networks: B = 96,
    600 epochs, LR 0.025 cosine-annealed to 0, momentum 0.9, weight decay 3e-4 on
    neither batch-norm parameters nor biases, pad-4 crop + flip + 16x16 cutout.
    """
    c = cifar_config("cifar10")
    c.model.name = model
    c.input.augment = "cifar_cutout"
    c.input.batch_size = 96            # B unique
    c.optim.base_lr = 0.025
    c.optim.regime = "cosine"
    c.optim.weight_decay = 3e-4
    c.optim.decay_biases = False
    c.train.epochs = 600
    return c


def imagenet_config(augment: str) -> ml_collections.ConfigDict:
    """Base config of an ImageNet row: TFRecord shards, Goyal et al.'s regime (appendix C.2).

    90 epochs, LR 0.1 at ``B = 256`` dropped x0.1 at epochs 30, 60 and 80,
    weight decay 1e-4 on everything but batch-norm parameters, no warmup.
    Shards are ``data_dir/train-*-of-*`` and ``data_dir/validation-*-of-*`` in the
    standard format of the TF-models / TPU ImageNet converters, ``image/class/label``
    in 1..1000 (0 was their background class): read as 0..999 with ``label_offset=-1``,
    so such shards need no extra flag. Shards holding 0..999 (``ba-make-tfrecords``
    with its default ``--label-offset 0``) need ``--config.input.source_kwargs.label_offset=0``.
    """
    c = base_config()
    c.input.dataset = "tfrecord"       # tfds: tfds' imagenet2012 in data_dir (docs/usage.md)
    c.input.source_kwargs.name = "imagenet2012"   # the tfds name; a log label for TFRecord shards
    c.input.source_kwargs.data_dir = "data/imagenet-tfrecords"
    c.input.source_kwargs.label_offset = -1   # stored 1..1000 -> classes 0..999
    c.input.train_split = "train"
    c.input.eval_split = "validation"
    c.input.normalize = "imagenet"
    c.input.augment = augment
    c.input.eval_transform = "imagenet_eval"
    c.input.batch_size = 256           # B unique
    c.input.eval_batch_size = 125      # per rank
    c.optim.base_lr = 0.1
    c.optim.regime = "imagenet"
    c.optim.weight_decay = 1e-4
    c.optim.momentum = 0.9
    c.train.epochs = 90
    return c
