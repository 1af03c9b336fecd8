"""Learning-rate schedules and optimizers of the sequence models.

Transformer (Vaswani et al. 2017, section 5.3)::

    lr(step) = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5),  step = 1, 2, ...
             = peak * min(step / warmup, sqrt(warmup / step)),      peak = (d_model * warmup)^-0.5

(:class:`InverseSqrtWarmup`, with ``peak`` computed in the config), Adam with
beta = (0.9, 0.98), eps = 1e-9. LSTM language model (Merity et al.): SGD at a
constant LR of 30 with gradient clipping at 0.25.

Like ``ba_dist.optim`` these schedules count optimizer steps and the
optimizers are Keras' legacy ones (what Horovod 0.28.1 supports under TF 2.15).
They live here rather than in ``ba_dist.optim`` because that module's regimes
are epoch-based step functions for SGD, and these are neither.
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

__all__ = ["InverseSqrtWarmup", "make_schedule", "make_optimizer"]


@tf.keras.utils.register_keras_serializable(package="ba_dist")
class InverseSqrtWarmup(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup_steps``, then ``peak * sqrt(warmup_steps / step)``.

    ``step`` is the optimizer's completed-step count; the LR of the first
    update uses ``step + 1`` so it is ``peak / warmup_steps``, not 0.
    """

    def __init__(self, peak: float, warmup_steps: int):
        super().__init__()
        if peak <= 0 or warmup_steps < 1:
            raise ValueError(f"need peak > 0 and warmup_steps >= 1, got {peak}, {warmup_steps}")
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)

    def __call__(self, step):
        s = tf.cast(step, tf.float32) + 1.0
        w = float(self.warmup_steps)
        return self.peak * tf.minimum(s / w, tf.sqrt(w / s))

    def get_config(self) -> Dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def make_schedule(name: str, base_lr: float, warmup_steps: int = 0):
    """``constant`` (``base_lr``) or ``inverse_sqrt`` (peak ``base_lr``)."""
    if name == "constant":
        return tf.keras.optimizers.schedules.PolynomialDecay(base_lr, 1, base_lr)  # a serialisable constant
    if name == "inverse_sqrt":
        return InverseSqrtWarmup(base_lr, warmup_steps)
    raise ValueError(f"unknown schedule {name!r}; use 'constant' or 'inverse_sqrt'")


def make_optimizer(name: str, schedule, momentum: float = 0.0, beta_1: float = 0.9, beta_2: float = 0.999,
                   epsilon: float = 1e-7):
    """Legacy Keras ``sgd`` (with ``momentum``) or ``adam`` driven by ``schedule``."""
    if name == "sgd":
        return tf.keras.optimizers.legacy.SGD(schedule, momentum=momentum)
    if name == "adam":
        return tf.keras.optimizers.legacy.Adam(schedule, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")
