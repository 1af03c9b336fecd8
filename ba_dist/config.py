"""The experiment config: defaults, validation, and the global-batch arithmetic.

Configs are Python files under ``configs/`` whose ``get_config()`` returns an
``ml_collections.ConfigDict`` built on :func:`base_config`. Validation here is
pure (no TensorFlow, no collectives) so every rank rejects a bad config or an
impossible layout within a second of starting, with the same message.

Batch arithmetic, with N ranks::

    B (input.batch_size)  global batch of UNIQUE samples
    M (ba.multiplicity)   copies of every unique sample in the global batch
    m_ranks (ba.m_ranks)  ranks per group that share the same unique samples
    m_local = M / m_ranks copies made on each rank
    groups  = N / m_ranks
    b       = B / groups  unique samples per rank per step
    per-rank batch = m_local x b;   N x m_local x b = B x M examples per step
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import ml_collections

__all__ = ["ConfigError", "Layout", "base_config", "check_values", "num_groups", "validate", "layout",
           "load_config_file", "to_json"]


class ConfigError(ValueError):
    """A config value or combination that cannot work; the message names the key and the fix."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults every experiment config starts from (then overrides)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.input = ml_collections.ConfigDict()
    c.input.dataset = "digits"           # a name registered in ba_dist.data.sources
    c.input.source_kwargs = ml_collections.ConfigDict()  # e.g. data_dir, manual_dir
    c.input.train_split = "train"
    c.input.eval_split = "validation"
    c.input.batch_size = 64              # B: global batch of UNIQUE samples
    c.input.eval_batch_size = 256        # per rank
    c.input.augment = ""                 # "" = the source's label-preserving default
    c.input.eval_transform = ""          # "" = the source's default
    c.input.broadcast = "decoded"        # decoded | encoded | none
    c.input.copies_on = "auto"           # where the BA copies are made: auto (the GPU if one is visible,
                                         # else the host) | host (tf.data) | device (the train step)
    c.input.on_corrupt = "skip"          # skip (count) | error (stop, name the file)
    c.input.mixup_alpha = 0.0
    c.input.normalize = "none"           # none (x/255) | cifar10 | imagenet
    c.input.prefetch = 4
    c.input.read_threads = 4

    c.ba = ml_collections.ConfigDict()
    c.ba.multiplicity = 1                # M
    c.ba.m_ranks = 1                     # ranks per group; M / m_ranks copies per rank

    c.model = ml_collections.ConfigDict()
    c.model.name = "digits_cnn"
    c.model.bn = "batch"                 # batch | ghost | none
    c.model.ghost_batch_size = 32
    c.model.dropout = ml_collections.config_dict.placeholder(float)  # None: the network's reference value
    c.model.auxiliary_weight = 0.0       # >0: build the auxiliary head, loss += weight x CE(aux) (darts, amoebanet)
    c.model.drop_path_rate = ml_collections.config_dict.placeholder(float)  # None: the network's own, constant;
    #                                      a rate: ramp the drop-path probability 0 -> rate over training (DARTS)

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 0.1
    c.optim.lr_scaling = "none"          # none | linear | sqrt
    c.optim.lr_scaling_batch = "unique"  # unique (B) | augmented (M*B): the batch the rule sees
    c.optim.reference_batch = 256
    c.optim.regime = "constant"          # see ba_dist.optim.REGIMES
    c.optim.regime_scale = 1.0           # x the regime's LR-drop epochs (M for the "fixed #samples" baseline)
    c.optim.warmup_epochs = 0.0
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 1e-4
    c.optim.decay_biases = True
    c.optim.label_smoothing = 0.0
    c.optim.grad_compression = "none"    # none | fp16 (Horovod allreduce compression)
    c.optim.grad_clip_norm = 0.0         # >0: clip the averaged loss gradient to this global norm; 0: off

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10                  # epochs of UNIQUE samples; BA keeps the baseline's step count
    c.train.max_steps = -1               # >0: stop after this many steps (smoke tests)
    c.train.stop_after_epoch = -1        # >0: checkpoint and exit "requeue me" after this epoch (testing resume)
    c.train.eval_every = 1               # epochs
    c.train.checkpoint_every = 1         # epochs
    c.train.keep_checkpoints = 3
    c.train.mixed_precision = False      # float16 compute + loss scaling
    c.train.xla = False
    c.train.deterministic = False        # tf op determinism (CPU: bitwise reproducible runs)
    c.train.verbose = 1                  # Keras progress bar on rank 0 (0 silent, 1 bar, 2 line/epoch)
    c.train.resume = True
    c.train.resume_fallback = True       # newest checkpoint unloadable: resume from the previous one (False: stop)
    c.train.grad_stats_every = 10        # rank 0 logs step gradient norm/variance to grad_norm.jsonl (0: off)
    c.train.precise_bn_batches = 0       # >0: re-estimate BN statistics on this many training batches before
                                         # the final evaluation (ba_dist.precise_bn; 0: off)
    return c


_CHOICES = {
    "input.broadcast": ("decoded", "encoded", "none"),
    "input.copies_on": ("auto", "host", "device"),
    "input.on_corrupt": ("skip", "error"),
    "input.normalize": ("none", "cifar10", "imagenet"),
    "model.bn": ("batch", "ghost", "none"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "optim.lr_scaling_batch": ("unique", "augmented"),
    "optim.grad_compression": ("none", "fp16"),
}


def _get(c, dotted):
    for part in dotted.split("."):
        c = c[part]
    return c


def check_values(c: ml_collections.ConfigDict, choices: dict, positive: Sequence[str],
                 non_negative: Sequence[str]) -> None:
    """The checks every config (image or sequence) shares. Raises ConfigError naming the key.

    Args:
      c: the config.
      choices: dotted key -> the values it may take.
      positive: dotted keys that must be numbers > 0.
      non_negative: dotted keys that must be >= 0.
    Also: ``ba.multiplicity`` must be divisible by ``ba.m_ranks``.
    """
    for key, allowed in choices.items():
        if _get(c, key) not in allowed:
            raise ConfigError(f"{key}={_get(c, key)!r}: must be one of {', '.join(allowed)}")
    for key in positive:
        v = _get(c, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{key}={v!r}: must be a positive number")
    for key in non_negative:
        if _get(c, key) < 0:
            raise ConfigError(f"{key}={_get(c, key)}: must be >= 0")
    if c.ba.multiplicity % c.ba.m_ranks:
        raise ConfigError(f"ba.multiplicity={c.ba.multiplicity} is not divisible by ba.m_ranks={c.ba.m_ranks}: "
                          f"each rank makes multiplicity/m_ranks copies")


def num_groups(c: ml_collections.ConfigDict, world_size: int) -> int:
    """BA groups of ``ba.m_ranks`` ranks in ``world_size``. Raises ConfigError if it does not divide."""
    if world_size % c.ba.m_ranks:
        raise ConfigError(f"world size {world_size} is not divisible by ba.m_ranks={c.ba.m_ranks}: "
                          f"launch a multiple of {c.ba.m_ranks} ranks or change ba.m_ranks")
    return world_size // c.ba.m_ranks


def validate(c: ml_collections.ConfigDict) -> None:
    """Check every value that can be checked without data or ranks. Raises ConfigError."""
    check_values(c, _CHOICES,
                 positive=["input.batch_size", "input.eval_batch_size", "ba.multiplicity", "ba.m_ranks",
                           "train.epochs", "train.eval_every", "train.checkpoint_every", "model.ghost_batch_size",
                           "input.prefetch", "input.read_threads", "train.keep_checkpoints", "optim.regime_scale"],
                 non_negative=["optim.base_lr", "optim.weight_decay", "optim.warmup_epochs", "input.mixup_alpha",
                               "optim.label_smoothing", "optim.momentum", "train.precise_bn_batches",
                               "model.auxiliary_weight", "optim.grad_clip_norm"])
    if c.optim.momentum >= 1:
        raise ConfigError(f"optim.momentum={c.optim.momentum}: must be < 1")
    if c.model.drop_path_rate is not None and not 0 <= c.model.drop_path_rate < 1:
        raise ConfigError(f"model.drop_path_rate={c.model.drop_path_rate}: must be in [0, 1) (or None: the "
                          f"network's own rate, constant)")
    if c.optim.warmup_epochs >= c.train.epochs:
        raise ConfigError(f"optim.warmup_epochs={c.optim.warmup_epochs} must be shorter than train.epochs={c.train.epochs}")
    _check_names(c)


def _check_names(c) -> None:
    # Names are checked against the registries without importing TensorFlow-heavy modules twice.
    from ba_dist.data import sources
    if c.input.dataset not in sources.source_names():
        raise ConfigError(f"input.dataset={c.input.dataset!r}: unknown; known: {', '.join(sources.source_names())}")
    from ba_dist import models
    if c.model.name not in models.MODEL_NAMES:
        raise ConfigError(f"model.name={c.model.name!r}: unknown; known: {', '.join(models.MODEL_NAMES)}")
    if c.model.auxiliary_weight > 0 and c.model.name not in models.AUXILIARY_HEAD_MODELS:
        raise ConfigError(f"model.auxiliary_weight={c.model.auxiliary_weight}: {c.model.name!r} has no auxiliary "
                          f"head (only {', '.join(models.AUXILIARY_HEAD_MODELS)}); set it to 0")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The global-batch arithmetic for one world size (see module docstring)."""

    world_size: int
    unique_batch: int      # B
    multiplicity: int      # M
    m_ranks: int
    m_local: int
    num_groups: int
    per_rank_unique: int   # b

    @property
    def per_rank_batch(self) -> int:
        return self.m_local * self.per_rank_unique

    @property
    def global_batch(self) -> int:
        """Examples (augmented copies) per step: B x M."""
        return self.unique_batch * self.multiplicity

    def describe(self) -> str:
        return (f"{self.world_size} ranks x {self.per_rank_batch} per rank ({self.m_local} copies x "
                f"{self.per_rank_unique} unique) = B {self.unique_batch} unique x M {self.multiplicity} "
                f"= {self.global_batch} per step; {self.num_groups} group(s) of {self.m_ranks} rank(s)")


def layout(c: ml_collections.ConfigDict, world_size: int) -> Layout:
    """Global-batch arithmetic for ``world_size`` ranks. Raises ConfigError if it does not divide."""
    m_ranks, M, B = c.ba.m_ranks, c.ba.multiplicity, c.input.batch_size
    groups = num_groups(c, world_size)
    if B % groups:
        raise ConfigError(f"input.batch_size={B} unique samples cannot be split over {groups} groups "
                          f"({world_size} ranks / m_ranks {m_ranks}); use a multiple of {groups}")
    lay = Layout(world_size, B, M, m_ranks, M // m_ranks, groups, B // groups)
    if c.model.bn == "ghost" and lay.per_rank_batch % c.model.ghost_batch_size:
        raise ConfigError(f"per-rank batch {lay.per_rank_batch} ({lay.describe()}) is not divisible by "
                          f"model.ghost_batch_size={c.model.ghost_batch_size}")
    if c.model.bn == "ghost" and c.model.ghost_batch_size > lay.per_rank_unique:
        # copy-major layout keeps a ghost batch distinct only when it fits in one copy block
        raise ConfigError(f"model.ghost_batch_size={c.model.ghost_batch_size} exceeds the {lay.per_rank_unique} "
                          f"unique samples per rank: a ghost batch would hold copies of the same image")
    return lay


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Import ``path`` and call its ``get_config()``.

    ``path:arg`` calls ``get_config(arg)``, as ``--config path:arg`` does
    (ml_collections' config-file argument).
    """
    path, sep, arg = str(path).partition(":")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"ba_config_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    return mod.get_config(arg) if sep else mod.get_config()


def to_json(c: ml_collections.ConfigDict) -> str:
    return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)
