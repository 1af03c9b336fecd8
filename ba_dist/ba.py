"""Batch Augmentation as pure functions: the one seed recipe and the copies of a batch.

BA (paper section 3) puts every unique sample ``M`` times in the batch, each copy
with its own augmentation (or dropout mask). Everything here is a pure function
whose randomness is passed in as stateless seeds, so a test can check outputs
exactly and a rerun reproduces every copy. ``ba-train``, ``ba_dist.keras``,
test-time augmentation (``ba-eval --tta``), the sequence models' dropout copies
and the gradient-correlation analysis all take their seeds and copies from here.

The seed recipe (``fold`` = ``tf.random.experimental.stateless_fold_in``)::

    copy seed     = fold(fold(fold(fold([seed, 0], epoch), rank), sample id), copy)
    mixup seed    = fold(fold([seed, 1], epoch * 1_000_003 + step), rank)
    dropout seed  = fold(fold([seed, 0], step), rank)      (then per site and copy)
    analysis seed = fold(fold([seed, 0], sample id), augmentation set)

The order (seed, epoch, global rank, sample id, copy) must not change: it fixes
which transform every copy of every run got, and checkpoints resume onto it.

Layout: a rank's batch is copy-major, ``[copy 0 of the b samples, copy 1, ...]``
(row ``c * b + i`` is copy ``c`` of sample ``i``), so any ``G <= b`` consecutive
rows are G distinct samples, which is what ghost batch norm normalises over.

Example::

    seeds = ba.batch_seeds(seed=0, epoch=3, rank=1, ids=ids, m_local=4)   # [b, 4, 2]
    x = ba.ba_batch(images, seeds, augment.get_augment("cifar"))         # [4*b, H, W, C]
    y = ba.repeat(labels, 4)                                             # [4*b]
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np
import tensorflow as tf

__all__ = [
    "fold",
    "copy_seeds",
    "batch_seeds",
    "mixup_seed",
    "step_seed",
    "analysis_seed",
    "sample_copies",
    "copy_major",
    "ba_batch",
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


def copy_seeds(seed, epoch, rank, sample_id, m_local: int) -> tf.Tensor:
    """``int64 [m_local, 2]`` augmentation seeds of one sample's copies on one rank.

    Folds in (base seed, epoch, global rank, sample id, copy) in that order
    (epoch, rank and id as int64, the copy index as int32).
    """
    s = _base(seed, 0)
    for part in (epoch, rank, sample_id):
        s = fold(s, part)
    return tf.cast(tf.stack([_fold(s, c, tf.int32) for c in range(m_local)]), tf.int64)


def batch_seeds(seed, epoch, rank, ids, m_local: int) -> tf.Tensor:
    """``int64 [len(ids), m_local, 2]``: :func:`copy_seeds` of every sample of a batch."""
    return tf.map_fn(lambda i: copy_seeds(seed, epoch, rank, i, m_local), tf.cast(ids, tf.int64),
                     fn_output_signature=tf.TensorSpec([m_local, 2], tf.int64))


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


def sample_copies(image, seeds, augment_fn: Callable) -> tf.Tensor:
    """The copies of one sample: ``float32 [M, H', W', C]``, copy ``c`` = ``augment_fn(image, seeds[c])``.

    Args:
      image: one ``[H, W, C]`` image, decoded once and augmented M times.
      seeds: ``[M, 2]`` int seeds (:func:`copy_seeds`).
      augment_fn: ``fn(image, seed) -> image`` using stateless random ops only.

    Raises:
      ValueError: ``seeds`` is not ``[M, 2]``.
    """
    seeds = tf.convert_to_tensor(seeds)
    if seeds.shape.rank is not None and (seeds.shape.rank != 2 or not seeds.shape[1:].is_compatible_with([2])):
        raise ValueError(f"seeds must have shape [M, 2], got {seeds.shape}")
    image = tf.convert_to_tensor(image)
    m = seeds.shape[0]
    if m is not None:  # known M (the pipelines): one op per copy, no loop in the graph
        return tf.stack([tf.cast(augment_fn(image, seeds[c]), tf.float32) for c in range(m)])
    # map_fn, not vectorized_map: pfor has no rule for the bounding-box sampler
    return tf.map_fn(lambda s: tf.cast(augment_fn(image, s), tf.float32), seeds, fn_output_signature=tf.float32)


def copy_major(x) -> tf.Tensor:
    """``[b, M, ...]`` (copies per sample) -> ``[M * b, ...]``, row ``c * b + i`` = copy ``c`` of sample ``i``."""
    x = tf.convert_to_tensor(x)
    perm = [1, 0] + list(range(2, x.shape.rank))
    b, m = x.shape[0], x.shape[1]
    # static rows when known, so the batch keeps a static shape (ghost batch norm splits it)
    rows = b * m if b is not None and m is not None else tf.shape(x)[0] * tf.shape(x)[1]
    return tf.reshape(tf.transpose(x, perm), tf.concat([[rows], tf.shape(x)[2:]], 0))


def ba_batch(images, seeds, augment_fn: Callable) -> tf.Tensor:
    """BA of one batch: ``b`` images -> ``M * b`` augmented examples, copy-major.

    Args:
      images: ``[b, H, W, C]`` images of one size (ragged ImageNet images go
        through :func:`sample_copies` one by one in the tf.data pipeline).
      seeds: ``[b, M, 2]`` (:func:`batch_seeds`).
      augment_fn: ``fn(image, seed) -> image``.

    Returns:
      float32 ``[M * b, H', W', C]``; pair it with ``repeat(labels, M)``.
    """
    seeds = tf.convert_to_tensor(seeds)
    if seeds.shape.rank is not None and seeds.shape.rank != 3:
        raise ValueError(f"seeds must have shape [b, M, 2], got {seeds.shape}")
    per_sample = tf.map_fn(lambda a: sample_copies(a[0], a[1], augment_fn), (tf.convert_to_tensor(images), seeds),
                           fn_output_signature=tf.float32)
    return copy_major(per_sample)


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
