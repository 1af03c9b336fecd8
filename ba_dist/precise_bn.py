"""Precise BN: re-estimate batch-norm statistics with the final weights, averaged over ranks.

BN moving statistics are exponential averages of batch statistics computed
with *past* weights. With a constant or fast learning rate (the paper's fast
BA regimes) they lag the weights, and the network evaluates badly although the
weights are good: resnet20 at a constant LR of 0.05 reported 33% top-1, the
same weights 99.7% once the statistics were re-estimated on 50 training
batches. Precise BN (fvcore's ``update_bn_stats``, torch's
``swa_utils.update_bn``) replaces the moving statistics by the plain average of
the batch statistics of N training batches run through the final weights.

How: every BN layer (Keras ``BatchNormalization`` and our
:class:`~ba_dist.models.ghost_bn.GhostBatchNormalization`) gets momentum 0 for
the N forward passes, so after each pass its moving mean/variance *are* that
batch's statistics (for ghost BN: the mean over the batch's ghost batches, the
variance Bessel-corrected exactly as in training). We sum them, divide by N,
then average over ranks (:func:`ba_dist.dist.allreduce_mean`), so every rank
ends with identical statistics. Only BN statistics change: no optimizer step,
the weights are untouched, momenta are restored afterwards.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import tensorflow as tf

from ba_dist import dist
from ba_dist.models.ghost_bn import GhostBatchNormalization

__all__ = ["bn_layers", "update_bn_statistics"]


def bn_layers(net: tf.keras.Model) -> list:
    """The batch-norm layers of ``net`` (nested models included) that update statistics in training."""
    kinds = (tf.keras.layers.BatchNormalization, GhostBatchNormalization)
    return [m for m in net.submodules if isinstance(m, kinds) and m.trainable]


def update_bn_statistics(net: tf.keras.Model, batches: Iterable, num_batches: int,
                         prepare: Optional[Callable] = None) -> int:
    """Set every BN layer's moving statistics to their mean over ``num_batches`` batches and all ranks.

    Collective (after :func:`ba_dist.dist.init`): every rank calls it with the same ``num_batches``.

    Args:
      net: the network (called as ``net(x, training=True)``).
      batches: training batches, ``x`` or ``(x, y, ...)`` each; only the first ``num_batches`` are used.
      num_batches: N > 0.
      prepare: maps a dataset element to ``(x, y)`` first (the train step's
        ``prepare_batch`` when the data yields unique batches); None: as is.

    Returns:
      The number of batches used on this rank.

    Raises:
      ValueError: ``num_batches`` < 1, or ``batches`` was empty.
    """
    if num_batches < 1:
        raise ValueError(f"precise BN needs at least 1 batch, got num_batches={num_batches}")
    layers = bn_layers(net)
    if not layers:
        return 0
    stats = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    momenta = [layer.momentum for layer in layers]
    sums = [tf.zeros(v.shape, tf.float64) for v in stats]
    used = 0
    try:
        for layer in layers:
            layer.momentum = 0.0     # read when traced: each pass stores that batch's statistics
        forward = tf.function(lambda x: net(x, training=True))
        for batch in batches:
            if used == num_batches:
                break
            if prepare is not None:     # e.g. unique batches whose BA copies the train step makes
                batch = prepare(batch)
            forward(batch[0] if isinstance(batch, (tuple, list)) else batch)
            sums = [s + tf.cast(v, tf.float64) for s, v in zip(sums, stats)]
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if used == 0:
        raise ValueError("precise BN: the training data yielded no batch")
    means = [tf.cast(s / used, v.dtype) for s, v in zip(sums, stats)]
    means = dist.allreduce_mean(means, name="ba_precise_bn")
    for v, m in zip(stats, means):
        v.assign(m)
    return used
