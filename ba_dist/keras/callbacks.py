"""Horovod-enabled Keras callbacks doing Batch Augmentation's bookkeeping in a user script.

``ba_callbacks(...)`` returns the set, in the order they must run. Put them
FIRST in ``model.fit(callbacks=...)``, before your own callbacks:

1. ``BroadcastGlobalVariablesCallback(0)`` (Horovod): rank 0's initial weights
   and optimizer state go to every rank after the first batch, before any
   other callback looks at the model.
2. ``MetricAverageCallback`` (Horovod): epoch metrics averaged over ranks.
   Must precede callbacks that read metrics (``ReduceLROnPlateau``,
   ``EarlyStopping``, ``ModelCheckpoint(save_best_only=True)``), so that every
   rank takes the same decision from the same numbers.
3. :class:`BARegimeCallback` (if ``schedule`` is given): sets the learning rate
   every batch from a ``ba_dist.optim`` schedule (warmup, drops by epoch, BA's
   rule of keeping the baseline's LR and steps). Do not combine it with
   ``ReduceLROnPlateau`` or ``LearningRateScheduler``: the last writer of the
   LR wins, silently. (If you built the optimizer with the schedule object
   itself, leave ``schedule`` unset.)
4. :class:`GradNormCallback`: the L2 norm of the averaged gradient, mean per
   epoch, as ``logs["grad_norm"]``.
5. Rank 0 only, with ``workdir``: ``CSVLogger`` and ``ModelCheckpoint`` (weights).
6. :class:`BADataCallback` (with ``data``): ends the group's background
   broadcast when training ends, on every rank at the same step.

The per-epoch re-seeding of the group-synchronised sampler happens inside the
dataset (:func:`ba_dist.keras.ba_dataset` derives the epoch from the step), so
no callback has to race tf.data's prefetch.
"""
from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from ba_dist import dist

__all__ = ["ba_callbacks", "BARegimeCallback", "GradNormCallback", "BADataCallback"]


class BARegimeCallback(tf.keras.callbacks.Callback):
    """Set the optimizer's LR every batch from a step-indexed schedule."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.schedule(self.model.optimizer.iterations)
        tf.keras.backend.set_value(self.model.optimizer.learning_rate, float(lr))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))


class GradNormCallback(tf.keras.callbacks.Callback):
    """Record ``||g||`` of the gradient the optimizer applies (after Horovod's allreduce).

    Wraps ``model.optimizer.apply_gradients`` when training starts; with
    ``hvd.DistributedOptimizer`` the gradients reaching it are already
    averaged over ranks, so the value is the same on every rank.
    """

    def __init__(self):
        super().__init__()
        self.total = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.count = tf.Variable(0.0, trainable=False, dtype=tf.float32)

    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        if getattr(opt, "_ba_grad_norm_wrapped", False):
            return
        apply = opt.apply_gradients
        total, count = self.total, self.count

        def apply_gradients(grads_and_vars, *args, **kwargs):
            grads_and_vars = list(grads_and_vars)
            norm = tf.linalg.global_norm([g for g, _ in grads_and_vars if g is not None])
            total.assign_add(tf.cast(norm, tf.float32))
            count.assign_add(1.0)
            return apply(grads_and_vars, *args, **kwargs)

        opt.apply_gradients = apply_gradients
        opt._ba_grad_norm_wrapped = True

    def on_epoch_begin(self, epoch, logs=None):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and float(self.count.numpy()) > 0:
            logs["grad_norm"] = float(self.total.numpy() / self.count.numpy())


class BADataCallback(tf.keras.callbacks.Callback):
    """Stop the BA dataset's group broadcast when fit ends (all ranks, same step)."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_train_end(self, logs=None):
        self.data.stop()


def ba_callbacks(data=None, schedule=None, workdir: Optional[str] = None, grad_norm: bool = True,
                 ctx: Optional[dist.Context] = None) -> list:
    """The BA callback set for ``model.fit`` in a Horovod script, in the order it must run.

    Args:
      data: the :class:`ba_dist.keras.BADataset` being trained on.
      schedule: a ``ba_dist.optim`` schedule (``make_schedule``) to drive the LR by step.
      workdir: rank 0 writes ``metrics.csv`` and ``checkpoints/weights-{epoch}.h5`` there.
      grad_norm: log the averaged gradient's L2 norm per epoch.
      ctx: the BA context (default: the process's).

    Returns:
      A list to put first in ``model.fit(callbacks=...)``; see the module docstring
      for the ordering rules relative to your own callbacks.
    """
    import horovod.tensorflow.keras as hvd_keras
    ctx = ctx or dist.context()
    cbs: list = [hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd_keras.callbacks.MetricAverageCallback()]
    if schedule is not None:
        cbs.append(BARegimeCallback(schedule))
    if grad_norm:
        cbs.append(GradNormCallback())
    if workdir and ctx.topology.is_chief:
        os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
        cbs += [tf.keras.callbacks.CSVLogger(os.path.join(workdir, "metrics.csv"), append=True),
                tf.keras.callbacks.ModelCheckpoint(os.path.join(workdir, "checkpoints", "weights-{epoch:03d}.h5"),
                                                   save_weights_only=True)]
    if data is not None:
        cbs.append(BADataCallback(data))
    return cbs
