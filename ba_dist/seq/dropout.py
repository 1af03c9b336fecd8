"""Dropout masks as the Batch Augmentation transform (paper section 4.3).

Sequence models have no input augmentation: BA repeats every sequence ``M``
times in the batch and lets dropout make the copies differ. Here that is
explicit rather than a side effect of a stateful RNG. Every mask is drawn with
stateless ops from a seed that names exactly what it belongs to::

    step seed  = fold(fold([seed, 0], step), rank)     one per rank per step (ba_dist.ba.step_seed)
    site seed  = fold(step seed, key)                   one per dropout layer (``key``)
    copy seed  = fold(site seed, copy)                  one per local copy c < m_local

A rank's batch is copy-major, ``[copy 0 of the b sequences, copy 1, ...]``, and
the mask rows of copy ``c`` are drawn from its copy seed. So copy ``c`` of a
sequence on rank ``r`` at step ``s`` always gets the same mask, copies never
share one, and the ``m_ranks`` ranks of a group, which hold identical tokens,
differ because the rank is folded in.

Why not ``tf.keras.layers.Dropout``: it also draws independent masks per
example, but from the global RNG; a run seeded with
``tf.keras.utils.set_random_seed`` on every rank (``train.deterministic``)
then draws the *same* masks on every rank, and a group's ``m_ranks`` copies
would collapse into one.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from ba_dist.ba import fold, step_seed

__all__ = ["fold", "step_seed", "dropout_mask", "ba_dropout", "SeededDropout"]


def dropout_mask(shape, rate: float, seed, copies: int = 1) -> tf.Tensor:
    """Inverted-dropout mask (entries 0 or ``1 / (1 - rate)``), float32, of ``shape``.

    Args:
      shape: mask shape; its first dimension is the rank's batch, ``copies x b``
        rows in copy-major order. Dimensions of size 1 broadcast (e.g.
        ``[rows, 1, features]`` is variational / locked dropout: one mask per
        sequence, shared over time).
      rate: drop probability in [0, 1).
      seed: ``int [2]`` site seed.
      copies: ``m_local``; copy ``c``'s rows come from ``fold(seed, c)``.

    Returns:
      The mask. Rows of different copies are drawn from different seeds.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive int, got {copies!r}")
    shape = tf.convert_to_tensor(shape, tf.int32)
    rows = shape[0]
    tf.debugging.assert_equal(rows % copies, 0, message=f"batch rows must be a multiple of copies={copies}")
    block = tf.concat([[rows // copies], shape[1:]], 0)
    keep = [tf.random.stateless_uniform(block, seed=fold(seed, c)) >= rate for c in range(copies)]
    keep = keep[0] if copies == 1 else tf.concat(keep, 0)
    return tf.cast(keep, tf.float32) / (1.0 - rate)


def ba_dropout(x: tf.Tensor, rate: float, seed, copies: int = 1, shared_axes: Sequence[int] = ()) -> tf.Tensor:
    """``x`` times :func:`dropout_mask`; ``shared_axes`` get one mask value (size 1 in the mask)."""
    if rate == 0.0:
        return x
    shape = tf.unstack(tf.shape(x))
    for axis in shared_axes:
        shape[axis] = tf.constant(1, tf.int32)
    return x * tf.cast(dropout_mask(tf.stack(shape), rate, seed, copies), x.dtype)


class SeededDropout(tf.keras.layers.Layer):
    """Dropout whose masks come from an explicit seed (see :func:`dropout_mask`).

    Args:
      rate: drop probability.
      key: integer that tells this dropout site from the others of the model.
      shared_axes: axes sharing one mask value, e.g. ``(1,)`` for locked
        (variational) dropout over time on ``[batch, time, features]``.

    Call with ``training``, the step's ``seed`` (``int [2]``) and ``copies``
    (the rank's ``m_local``). In training with ``rate > 0`` a seed is
    required: a silent default would give every step the same masks.
    """

    def __init__(self, rate: float, key: int, shared_axes: Sequence[int] = (), **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.key, self.shared_axes = float(rate), int(key), tuple(shared_axes)

    def call(self, x, training=False, seed: Optional[tf.Tensor] = None, copies: int = 1):
        if not training or self.rate == 0.0:
            return x
        if seed is None:
            raise ValueError(f"{self.name}: training=True needs the step's dropout seed "
                             f"(ba_dist.seq.dropout.step_seed)")
        return ba_dropout(x, self.rate, fold(seed, self.key), copies, self.shared_axes)

    def get_config(self):
        return dict(super().get_config(), rate=self.rate, key=self.key, shared_axes=self.shared_axes)
