"""Learning-rate regimes, LR scaling rules, weight decay and the SGD optimizer.

Batch Augmentation keeps the baseline's optimisation regime: the same LR and
the same number of SGD steps (paper section 4). An epoch is one pass over the
UNIQUE samples, so with ``B`` unique samples x ``M`` copies per global step::

    steps_per_epoch = num_train_examples // B      (independent of M)

and a regime written in epochs gives BA exactly the baseline's step count.
Code counts steps (``optimizer.iterations``); configs say epochs and convert
once through :func:`epochs_to_steps`.

Nothing here imports Horovod: the optimizer of :func:`make_optimizer` is not
wrapped in ``hvd.DistributedOptimizer``; ``BATrainModel.train_step``
(ba_dist/train_step.py) averages the gradients over the ranks itself (one
grouped allreduce) and then calls ``optimizer.apply_gradients``, so that it
also sees each rank's local gradient for the gradient statistics.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import tensorflow as tf

__all__ = [
    "epochs_to_steps",
    "scale_lr",
    "PiecewiseConstantWithWarmup",
    "REGIMES",
    "regime_epochs",
    "make_schedule",
    "decayed_variables",
    "l2_regularization_loss",
    "make_optimizer",
]


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Converts a duration in epochs to optimizer steps, halves rounded up."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
    if epochs < 0:
        raise ValueError(f"A duration in epochs must be >= 0, got {epochs}.")
    # floor(x + 0.5), not round(): round() sends halves to the even neighbour
    # (196.5 -> 196 but 197.5 -> 198), an off-by-one that depends on parity.
    return int(math.floor(epochs * steps_per_epoch + 0.5))


def scale_lr(base_lr: float, batch_size: int, rule: str, reference_batch: int = 256) -> float:
    """Scales a learning rate tuned at ``reference_batch`` to ``batch_size``.

    Args:
      base_lr: LR that works at ``reference_batch``.
      batch_size: the batch the rule should see. For BA this is by default the
        UNIQUE global batch ``B``: BA's premise is that replicas do not call for
        a larger LR, so BA keeps the baseline's LR. A config may pass the
        augmented batch ``M * B`` instead (e.g. the paper's "fixed #samples"
        large-batch baseline, or BA with a scaled LR, appendix C.1).
      rule: "none" (keep ``base_lr``), "linear" (Goyal et al. 2017:
        ``base_lr * batch / ref``) or "sqrt" (Hoffer et al. 2017:
        ``base_lr * sqrt(batch / ref)``).
      reference_batch: batch at which ``base_lr`` was tuned (256 for ImageNet).

    Returns:
      The scaled learning rate.
    """
    if batch_size <= 0 or reference_batch <= 0:
        raise ValueError(f"batch_size ({batch_size}) and reference_batch "
                         f"({reference_batch}) must be positive.")
    ratio = batch_size / reference_batch
    if rule == "none":
        return float(base_lr)
    if rule == "linear":
        return float(base_lr * ratio)
    if rule == "sqrt":
        return float(base_lr * math.sqrt(ratio))
    raise ValueError(f"Unknown LR scaling rule {rule!r}; use 'none', 'linear' or 'sqrt'.")


@tf.keras.utils.register_keras_serializable(package="ba_dist")
class PiecewiseConstantWithWarmup(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Step-wise LR regime with optional linear gradual warmup (Goyal et al.).

    For step ``s`` (completed optimizer steps, starting at 0)::

        s <  warmup_steps:  warmup_start_lr + (base_lr - warmup_start_lr) * s / warmup_steps
        otherwise:          values[i], i = number of boundaries with boundary_step <= s

    so the first step of epoch 30 (0-based) already runs at the decayed LR, and
    the LR equals ``base_lr`` exactly when warmup ends. Warmup is per step, not
    per epoch, to avoid LR jumps of ``1/warmup_epochs`` at large batches.

    Goyal et al. (2017, section 2.2) warm up from the LR tuned at the reference
    batch (0.1 at 256) to the scaled LR (``0.1 k`` for a ``k`` x larger batch):
    pass that reference LR as ``warmup_start_lr``, as :func:`make_schedule` does
    when given ``reference_lr``. Left at 0 the warmup starts from nothing (step 0
    is then a no-op update).

    Args:
      base_lr: LR after warmup and before the first drop; ``values[0]``.
      boundaries_epochs: epochs at which the LR drops, increasing.
      steps_per_epoch: optimizer steps per epoch (unique samples / B).
      decay: factor applied at each boundary (0.1 = divide by 10). Exclusive
        with ``values``.
      values: explicit LRs, one more than boundaries, ``values[0] == base_lr``.
      warmup_epochs: length of the linear warmup, may be fractional.
      warmup_start_lr: LR at step 0 when warming up.
      name: name scope of the ops.
    """

    def __init__(self, base_lr: float, boundaries_epochs: Sequence[float], steps_per_epoch: int,
                 decay: Optional[float] = None, values: Optional[Sequence[float]] = None,
                 warmup_epochs: float = 0.0, warmup_start_lr: float = 0.0,
                 name: str = "PiecewiseConstantWithWarmup"):
        super().__init__()
        boundaries_epochs = [float(b) for b in boundaries_epochs]
        if (decay is None) == (values is None):
            raise ValueError("Give exactly one of `decay` (a factor per boundary) or explicit "
                             f"`values`; got decay={decay}, values={values}.")
        if values is None:
            lrs = [base_lr * decay ** i for i in range(len(boundaries_epochs) + 1)]
        else:
            lrs = [float(v) for v in values]
            if len(lrs) != len(boundaries_epochs) + 1:
                raise ValueError(f"Need len(values) == len(boundaries_epochs) + 1, got "
                                 f"{len(lrs)} values for {len(boundaries_epochs)} boundaries.")
            if not math.isclose(lrs[0], base_lr):
                raise ValueError(f"values[0] ({lrs[0]}) must equal base_lr ({base_lr}).")
        boundary_steps = [epochs_to_steps(b, steps_per_epoch) for b in boundaries_epochs]
        if any(b1 >= b2 for b1, b2 in zip(boundary_steps, boundary_steps[1:])):
            raise ValueError(f"Boundaries {boundaries_epochs} (epochs) give steps {boundary_steps} "
                             f"at {steps_per_epoch} steps/epoch; they must strictly increase.")
        warmup_steps = epochs_to_steps(warmup_epochs, steps_per_epoch)
        if boundary_steps and warmup_steps > boundary_steps[0]:
            raise ValueError(f"warmup_epochs={warmup_epochs} runs past the first LR drop at "
                             f"epoch {boundaries_epochs[0]}; shorten the warmup.")
        self.base_lr = float(base_lr)
        self.boundaries_epochs = boundaries_epochs
        self.steps_per_epoch = int(steps_per_epoch)
        self.decay = None if decay is None else float(decay)
        self.values = None if values is None else lrs
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start_lr = float(warmup_start_lr)
        self.name = name
        self.boundary_steps = boundary_steps
        self.lr_values = lrs
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        with tf.name_scope(self.name):
            # Integer comparisons: float32 steps stop being exact past 2**24.
            step = tf.cast(step, tf.int64)
            values = tf.constant(self.lr_values, tf.float32)
            if self.boundary_steps:
                past = tf.cast(step >= tf.constant(self.boundary_steps, tf.int64), tf.int32)
                lr = tf.gather(values, tf.reduce_sum(past))
            else:
                lr = values[0]
            if self.warmup_steps > 0:
                frac = tf.cast(step, tf.float32) / float(self.warmup_steps)
                warm = self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * frac
                lr = tf.where(step < self.warmup_steps, warm, lr)
            return lr

    def get_config(self) -> Dict[str, Any]:
        return {"base_lr": self.base_lr, "boundaries_epochs": list(self.boundaries_epochs),
                "steps_per_epoch": self.steps_per_epoch, "decay": self.decay,
                "values": self.values, "warmup_epochs": self.warmup_epochs,
                "warmup_start_lr": self.warmup_start_lr, "name": self.name}


# name -> (drop epochs, factor per drop, total epochs). None = no fixed length.
REGIMES: Dict[str, tuple] = {
    # Goyal et al. 2017, used for every ImageNet model in the paper (appendix C.2).
    "imagenet": ([30, 60, 80], 0.1, 90),
    # Paper section 4.2: BA reaches 76.86% (ResNet50, M=4) in 40 epochs...
    "imagenet_ba_fast": ([30, 35], 0.1, 40),
    # ...and 75.7% at epoch 23 with drops at 15, 20 and 22.
    "imagenet_ba_faster": ([15, 20, 22], 0.1, 23),
    # He et al. 2016: /10 at 32k and 48k of 64k iterations at batch 128. On the
    # 50k CIFAR train images that is 32000*128/50000 = 81.92 and 122.88 of 163.84
    # epochs, written as the usual 81, 122, 164. Kept in epochs so BA, whose
    # epoch counts unique samples, matches the baseline's steps at any B (at the
    # paper's B=64 that is twice He et al.'s iteration count, as in its runs).
    "cifar_resnet": ([81, 122], 0.1, 164),
    # Zagoruyko & Komodakis 2016 (WRN): x0.2 at 60, 120, 160 of 200 epochs.
    "cifar_wrn": ([60, 120, 160], 0.2, 200),
    # Huang et al. 2017 (DenseNet): /10 at 50% and 75% of 300 epochs.
    "cifar_densenet": ([150, 225], 0.1, 300),
    "constant": ([], 1.0, None),
    "cosine": (None, None, None),  # cosine to 0 over `total_epochs` (Loshchilov & Hutter)
}


def _unknown(name: str) -> ValueError:
    return ValueError(f"Unknown LR regime {name!r}; known regimes: {', '.join(sorted(REGIMES))}.")


def regime_epochs(name: str) -> int:
    """Total training epochs of a named regime (see :data:`REGIMES`)."""
    if name not in REGIMES:
        raise _unknown(name)
    total = REGIMES[name][2]
    if total is None:
        raise ValueError(f"Regime {name!r} has no fixed length; set the number of epochs in "
                         "the config (and pass total_epochs= to make_schedule for 'cosine').")
    return total


def make_schedule(name: str, base_lr: float, steps_per_epoch: int,
                  **kwargs) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """Builds a named LR regime.

    Args:
      name: one of :data:`REGIMES`.
      base_lr: peak LR, already scaled by :func:`scale_lr` if wanted.
      steps_per_epoch: optimizer steps per epoch (unique samples / B).
      **kwargs: ``warmup_epochs`` and ``warmup_start_lr`` (all regimes, see
        :class:`PiecewiseConstantWithWarmup`); ``reference_lr``: the LR before
        :func:`scale_lr`, where the warmup of the step regimes starts when
        ``warmup_start_lr`` is not given and ``base_lr`` is larger (Goyal et
        al.'s gradual warmup from 0.1 to ``0.1 k``; with an unscaled LR, or
        for "cosine", the warmup starts at 0); ``total_epochs`` (required for
        "cosine", the length of warmup plus decay); ``epoch_scale`` (all
        regimes): multiplies the regime's own drop epochs, e.g. by M for the
        paper's "fixed #samples" baseline, whose M x larger batch makes an
        epoch M x fewer steps (cosine has no drop epochs: its length is
        ``total_epochs``).

    Returns:
      A Keras ``LearningRateSchedule`` taking the optimizer step.
    """
    if name not in REGIMES:
        raise _unknown(name)
    allowed = {"warmup_epochs", "warmup_start_lr", "reference_lr", "epoch_scale"} | (
        {"total_epochs"} if name == "cosine" else set())
    if set(kwargs) - allowed:
        raise ValueError(f"Regime {name!r} takes only {sorted(allowed)}, got {sorted(kwargs)}.")
    warmup_epochs = kwargs.get("warmup_epochs", 0.0)
    warmup_start_lr = kwargs.get("warmup_start_lr", 0.0)
    if name == "cosine":
        if "total_epochs" not in kwargs:
            raise ValueError("Regime 'cosine' needs total_epochs=...")
        total = epochs_to_steps(kwargs["total_epochs"], steps_per_epoch)
        warmup = epochs_to_steps(warmup_epochs, steps_per_epoch)
        if warmup >= total:
            raise ValueError(f"warmup_epochs={warmup_epochs} must be shorter than "
                             f"total_epochs={kwargs['total_epochs']}.")
        if warmup == 0:
            return tf.keras.optimizers.schedules.CosineDecay(base_lr, total)
        # Keras' CosineDecay warms up linearly from initial_learning_rate to
        # warmup_target, the same per-step rule as PiecewiseConstantWithWarmup.
        return tf.keras.optimizers.schedules.CosineDecay(
            warmup_start_lr, total - warmup, warmup_target=base_lr, warmup_steps=warmup)
    boundaries, decay, _ = REGIMES[name]
    scale = kwargs.get("epoch_scale", 1.0)
    if scale <= 0:
        raise ValueError(f"epoch_scale must be positive, got {scale}.")
    boundaries = [b * scale for b in boundaries]
    reference_lr = kwargs.get("reference_lr")
    if "warmup_start_lr" not in kwargs and reference_lr is not None and 0 < reference_lr < base_lr:
        warmup_start_lr = float(reference_lr)  # Goyal et al.: from the unscaled to the scaled LR
    return PiecewiseConstantWithWarmup(base_lr, boundaries, steps_per_epoch, decay=decay,
                                       warmup_epochs=warmup_epochs,
                                       warmup_start_lr=warmup_start_lr, name=name)


def _is_norm_layer(layer: Any) -> bool:
    if isinstance(layer, (tf.keras.layers.BatchNormalization, tf.keras.layers.LayerNormalization,
                          tf.keras.layers.GroupNormalization)):
        return True
    # By class hierarchy name so SyncBatchNormalization (whose base class is not
    # public), hvd.SyncBatchNormalization and our GhostBatchNormalization count
    # without importing them here.
    return any("BatchNormalization" in cls.__name__ for cls in type(layer).__mro__)


def decayed_variables(model: tf.keras.Model, decay_biases: bool = True,
                      exclude: Optional[Callable[[tf.Variable], bool]] = None) -> List[tf.Variable]:
    """Trainable variables that weight decay applies to, in model order.

    Excludes every trainable variable owned (directly or through sublayers) by a
    normalization layer, found by layer type rather than variable name, as the
    paper decays "every parameter except those of batch-norm layers" (C.2).

    Args:
      model: a built Keras model; nested models and layers are searched.
      decay_biases: if False, also exclude any layer's ``bias`` variable.
      exclude: optional predicate; variables for which it is True are skipped.

    Returns:
      The list of variables to decay.
    """
    skipped = set()
    for layer in [model] + list(model.submodules):
        if not isinstance(layer, tf.keras.layers.Layer):
            continue
        if _is_norm_layer(layer):
            skipped.update(v.ref() for v in layer.trainable_weights)
        bias = getattr(layer, "bias", None)
        if not decay_biases and isinstance(bias, tf.Variable):
            skipped.add(bias.ref())
    return [v for v in model.trainable_variables
            if v.ref() not in skipped and not (exclude and exclude(v))]


def l2_regularization_loss(model_or_variables: Union[tf.keras.Model, Iterable[tf.Variable]],
                           weight_decay: float,
                           exclude: Optional[Callable[[tf.Variable], bool]] = None,
                           decay_biases: bool = True) -> tf.Tensor:
    """``(weight_decay / 2) * sum ||w||^2``, to add to the training loss.

    Its gradient is ``weight_decay * w``, i.e. the coupled L2 of PyTorch's
    ``SGD(weight_decay=...)`` used by the paper's reference code, so 1e-4 here
    means what 1e-4 means there. Call it inside the ``GradientTape``.

    Args:
      model_or_variables: a Keras model (filtered by :func:`decayed_variables`)
        or variables to decay as given (only ``exclude`` applies).
      weight_decay: the decay factor, e.g. 1e-4.
      exclude: optional predicate of variables to skip.
      decay_biases: passed to :func:`decayed_variables` for a model.

    Returns:
      A float32 scalar.
    """
    if isinstance(model_or_variables, tf.keras.Model):
        variables = decayed_variables(model_or_variables, decay_biases, exclude)
    else:
        variables = [v for v in model_or_variables if not (exclude and exclude(v))]
    if not variables or weight_decay == 0:
        return tf.constant(0.0, tf.float32)
    # tf.nn.l2_loss(w) is sum(w**2) / 2.
    total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
    return tf.cast(weight_decay, tf.float32) * total


def make_optimizer(lr_schedule: Union[float, tf.keras.optimizers.schedules.LearningRateSchedule],
                   momentum: float = 0.9,
                   nesterov: bool = False) -> tf.keras.optimizers.legacy.SGD:
    """SGD with momentum driven by ``lr_schedule`` (called with the step count).

    Legacy SGD: the checkpoints of ba-train hold its variables, and it is the
    optimizer Horovod 0.28.1's ``hvd.DistributedOptimizer`` wraps reliably under
    TF 2.15 (for a plain Keras script that wraps it). Weight decay is not set here: add
    :func:`l2_regularization_loss` to the loss.

    Keras' momentum (``v = m*v - lr*g``) folds the LR into the velocity, while
    PyTorch's (``v = m*v + g; w -= lr*v``) applies the new LR at once; the two
    differ only for ~1/(1-m) = 10 steps after each LR drop.
    """
    return tf.keras.optimizers.legacy.SGD(learning_rate=lr_schedule, momentum=momentum,
                                          nesterov=nesterov)
