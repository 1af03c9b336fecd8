"""Per-step gradient norm and gradient variance: the paper's Figure 2 measurement.

The paper (section 3, "Variance Reduction") plots the L2 norm of the weight
gradient through training, one curve per M, as a proxy for the variance that
BA reduces. ``metrics.jsonl`` holds its epoch mean; this callback logs it every
``every`` steps, together with a direct variance estimate that costs one
scalar in an allreduce that happens anyway.

The estimator. :class:`ba_dist.train_step.BATrainModel` computes every rank's
local gradient ``g_r`` of the loss (mean over the rank's ``m_local x b``
examples; weight decay excluded, as in the paper's Figure 2, which is about the
loss gradient), their Horovod average ``g = mean_r g_r`` (the applied update
is ``g``, clipped if ``optim.grad_clip_norm`` is set, plus ``wd w``) and, from one more
element of the summed flags allreduce, ``mean_r |g_r|^2``. Then::

    grad_var         = mean_r |g_r|^2 - |g|^2 = mean_r |g_r - g|^2 >= 0
    grad_var_of_mean = grad_var / (N - 1)      (N > 1 ranks)

``grad_var x N / (N - 1)`` is the unbiased estimate of ``tr Cov(g_r)``, the
variance of one rank's gradient, so ``grad_var_of_mean`` estimates
``E|g - E g|^2``, the variance of the gradient the optimizer applies, as long
as ranks draw independent examples. Under BA the ranks of a group
(``m_ranks > 1``) share their unique samples and differ only in the
augmentation, so there the spread measures augmentation noise inside the group
plus sampling noise between groups. On one rank both are 0 (no spread to
measure), and they are exactly 0 when all ranks compute the same gradient.
The weight-decay term, the same on every rank, would cancel in ``grad_var``
anyway; it is left out of ``grad_norm``.

Usage (rank 0 only; the values are identical on all ranks)::

    callbacks.append(GradStatsLogger(workdir, every=10, world_size=ctx.size))

writes ``<workdir>/grad_norm.jsonl`` rows ``{"step", "grad_norm", "grad_var",
"grad_var_of_mean"}`` (``step`` = optimizer steps completed, as in
``metrics.jsonl``) and TensorBoard scalars ``step/grad_norm``, ``step/grad_var``.
No ordering constraint with the other callbacks: it only reads two variables
that the training step has set.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import tensorflow as tf

from ba_dist.analysis import GRAD_LOG

__all__ = ["GRAD_LOG", "GradStatsLogger", "variance_of_mean"]


def variance_of_mean(grad_var: float, world_size: int) -> Optional[float]:
    """``E|g - E g|^2`` of the averaged gradient from the spread over ``world_size`` ranks.

    ``None`` on one rank, where a spread cannot be measured.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return None
    return grad_var / (world_size - 1)


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None   # JSON has no NaN/inf; null marks a bad step


class GradStatsLogger(tf.keras.callbacks.Callback):
    """Rank 0: gradient norm and spread over ranks every ``every`` steps.

    Args:
      workdir: run directory; ``grad_norm.jsonl`` is appended to (resume-safe).
      every: log steps whose count is a multiple of ``every``.
      world_size: number of ranks N (for ``grad_var_of_mean``).
      tensorboard: also write ``step/*`` scalars to ``<workdir>/tensorboard``.

    The model must be a :class:`ba_dist.train_step.BATrainModel` (it owns the
    ``step_grad_norm`` and ``step_grad_var`` variables).
    """

    def __init__(self, workdir, every: int = 10, world_size: int = 1, tensorboard: bool = True):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.path = Path(workdir) / GRAD_LOG
        self.every, self.world_size, self.tensorboard = every, world_size, tensorboard
        self.rows: list[dict] = []
        self.writer = None
        self.step = 0

    def on_train_begin(self, logs=None):
        for name in ("step_grad_norm", "step_grad_var"):
            if not hasattr(self.model, name):
                raise TypeError(f"GradStatsLogger needs a ba_dist.train_step.BATrainModel (no {name} on "
                                f"{type(self.model).__name__})")
        # Counted here, not read per step: a skipped (non-finite) step does not advance iterations.
        self.step = int(self.model.optimizer.iterations.numpy())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard and self.writer is None:
            self.writer = tf.summary.create_file_writer(str(self.path.parent / "tensorboard"))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every:
            return
        norm = float(self.model.step_grad_norm.numpy())
        var = float(self.model.step_grad_var.numpy())
        of_mean = variance_of_mean(var, self.world_size)
        self.rows.append({"step": self.step, "grad_norm": _finite(norm), "grad_var": _finite(var),
                          "grad_var_of_mean": None if of_mean is None else _finite(of_mean)})
        if self.writer is not None:
            with self.writer.as_default(step=self.step):
                tf.summary.scalar("step/grad_norm", norm)
                tf.summary.scalar("step/grad_var", var)

    def on_epoch_end(self, epoch, logs=None):
        self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        if self.rows:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.rows)
            self.rows = []
        if self.writer is not None:
            self.writer.flush()

