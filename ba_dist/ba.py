"""Batch Augmentation as pure functions: the one seed recipe and the copies of a batch.

BA (paper section 3) puts every unique sample ``M`` times in the batch, each copy
with its own augmentation (or dropout mask). Everything here is a pure function
whose randomness is passed in as stateless seeds, so a test can check outputs
exactly and a rerun reproduces every copy. ``ba-train``, ``ba_dist.keras``,
test-time augmentation (``ba-eval --tta``), the sequence models' dropout copies
and the gradient-correlation analysis all take their seeds and copies from here.

The seed recipe (``fold`` = ``tf.random.experimental.stateless_fold_in``)::

    sample seed   = fold(fold(fold([seed, 0], epoch), rank), sample id)
    copy draws    = stateless_uniform([M, k], sample seed), row c for copy c
    mixup seed    = fold(fold([seed, 1], epoch * 1_000_003 + step), rank)
    dropout seed  = fold(fold([seed, 0], step), rank)      (then per site and copy)
    analysis seed = fold(fold([seed, 0], sample id), augmentation set)

The order (seed, epoch, global rank, sample id, copy row) must not change: it fixes
which transform every copy of every run got, and checkpoints resume onto it.
(Issue 15 changed the copy part: the copy index used to be folded into a seed
per copy, which every op then split; now a sample draws its copies' uniforms
in one call and an op reads its columns. The transforms of a given seed
changed then, their distributions did not.)

Layout: a rank's batch is copy-major, ``[copy 0 of the b samples, copy 1, ...]``
(row ``c * b + i`` is copy ``c`` of sample ``i``), so any ``G <= b`` consecutive
rows are G distinct samples, which is what ghost batch norm normalises over.

Example::

    op = augment.get_augment("cifar")
    u = tf.stack([ba.copy_draws(0, 3, 1, i, 4, op.draws) for i in ids])   # [b, 4, op.draws]
    x = ba.copies(images, None, u, op)                                   # [4*b, H, W, C]
    y = ba.repeat(labels, 4)                                             # [4*b]
"""
from __future__ import annotations

from typing import Union

import numpy as np
import tensorflow as tf

from ba_dist.data import augment as aug

__all__ = [
    "fold",
    "sample_seed",
    "copy_draws",
    "mixup_seed",
    "step_seed",
    "analysis_seed",
    "sample_copies",
    "copies",
    "repeat",
    "TTA_EPOCH",
]

# Test-time augmentation seeds use this in place of the epoch: training epochs
# are >= 0, so a TTA copy never repeats a training copy's transform.
TTA_EPOCH = -1

# Spreads (epoch, step) over one integer for the mixup seed; more steps per
# epoch than this would only make two steps share a mixup draw.
_STEPS_STRIDE = 1_000_003


def _fold(seed, data, dtype) -> tf.Tensor:
    # stateless_fold_in draws the new key with data's dtype: int32 and int64 data
    # give different seeds, so each recipe keeps the dtype it was defined with.
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, dtype))


def fold(seed, data) -> tf.Tensor:
    """A new ``int64 [2]`` stateless seed from ``seed`` and an integer ``data`` (a keyed hash)."""
    return tf.cast(_fold(tf.cast(seed, tf.int64), data, tf.int64), tf.int64)


def _base(seed, stream: int) -> tf.Tensor:
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])


def sample_seed(seed, epoch, rank, sample_id) -> tf.Tensor:
    """``int64 [2]`` seed of one sample's copies on one rank: folds in (base seed, epoch, global rank, sample id)."""
    s = _base(seed, 0)
    for part in (epoch, rank, sample_id):
        s = fold(s, part)
    return s


def copy_draws(seed, epoch, rank, sample_id, m_local: int, k: int) -> tf.Tensor:
    """``float32 [m_local, k]``: the augmentation draws of one sample's copies on one rank.

    Row ``c`` is copy ``c``'s (``k`` = the op's ``draws``); a row does not depend
    on ``m_local``, so copy ``c`` is the same transform whatever the number of copies.
    """
    return tf.random.stateless_uniform([m_local, k], sample_seed(seed, epoch, rank, sample_id), dtype=tf.float32)


def mixup_seed(seed, epoch, step, rank) -> tf.Tensor:
    """``[2]`` seed of one rank's mixup draw at one step (stream 1, apart from the copies)."""
    s = _fold(_base(seed, 1), tf.cast(epoch, tf.int64) * _STEPS_STRIDE + tf.cast(step, tf.int64), tf.int64)
    return _fold(s, rank, tf.int32)


def step_seed(seed, step, rank) -> tf.Tensor:
    """``int64 [2]`` dropout seed of one rank at one optimizer step (sequence models)."""
    return fold(fold(_base(seed, 0), step), rank)


def analysis_seed(seed, sample_id, aug_set) -> tf.Tensor:
    """``[2]`` seed of augmentation set ``aug_set`` of one sample (gradient correlation).

    No epoch and no rank: the analysis does not depend on how samples are split over ranks.
    """
    return _fold(_fold(_base(seed, 0), sample_id, tf.int32), aug_set, tf.int32)


def sample_copies(image, draws, augment) -> tf.Tensor:
    """The copies of one sample: ``float32 [M, H', W', C]``, copy ``c`` made with ``draws[c]``.

    Args:
      image: one ``[H, W, C]`` image, decoded once and augmented M times.
      draws: ``[M, augment.draws]`` (:func:`copy_draws`).
      augment: an ``augment.Augment`` (or a plain ``fn(image, seed)``).
    """
    augment = aug.as_augment(augment)
    draws = tf.convert_to_tensor(draws, tf.float32)
    if draws.shape.rank is not None and draws.shape.rank != 2:
        raise ValueError(f"draws must have shape [M, {augment.draws}], got {draws.shape}")
    image = tf.convert_to_tensor(image)
    return augment.batch(image[None], None, tf.zeros(tf.shape(draws)[:1], tf.int32), draws)


def copies(images, sizes, draws, augment, host: bool = False) -> tf.Tensor:
    """BA of one batch in one batched op: ``b`` images -> ``M * b`` augmented examples, copy-major.

    Args:
      images: ``[b, H, W, C]`` uint8 (or float) images, zero-padded to one size
        when they differ (``padded_batch``): each unique image is read once, by
        every one of its copies.
      sizes: ``[b, 2]`` true ``(height, width)`` of each image, or None when all fill ``H x W``.
      draws: ``[b, M, augment.draws]`` (:func:`copy_draws` of each sample).
      augment: an ``augment.Augment`` (or a plain ``fn(image, seed)``).
      host: made on the host CPU (``tf.data``): ops with a host kernel use it
        (``Augment.batch``); False keeps to TensorFlow ops (any device).

    Returns:
      float32 ``[M * b, H', W', C]``, row ``c * b + i`` = copy ``c`` of image ``i``;
      pair it with ``repeat(labels, M)``.
    """
    augment = aug.as_augment(augment)
    draws = tf.convert_to_tensor(draws, tf.float32)
    if draws.shape.rank is not None and draws.shape.rank != 3:
        raise ValueError(f"draws must have shape [b, M, {augment.draws}], got {draws.shape}")
    b, m = draws.shape[0], draws.shape[1]
    if b is None or m is None:
        b, m = tf.shape(draws)[0], tf.shape(draws)[1]
    index = tf.tile(tf.range(b), [m])                                         # row c*b + i -> image i
    u = tf.reshape(tf.transpose(draws, [1, 0, 2]), [-1, augment.draws])      # copy-major draws
    return augment.batch(images, sizes, index, u, host=host)


def repeat(x: Union[np.ndarray, tf.Tensor], m_local: int):
    """``m_local`` copies of the rows of ``x``, copy-major (``[x; x; ...]``): labels, ids, token rows.

    NumPy in, NumPy out (the sequence batchers); otherwise a tensor.
    """
    if isinstance(m_local, bool) or not isinstance(m_local, (int, np.integer)) or m_local < 1:
        raise ValueError(f"m_local must be an int >= 1, got {m_local!r}")
    if isinstance(x, np.ndarray):
        return np.concatenate([x] * m_local, axis=0) if m_local > 1 else x
    x = tf.convert_to_tensor(x)
    return tf.tile(x, tf.concat([[m_local], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
