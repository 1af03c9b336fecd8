"""Evaluation data: each rank's exact shard of the evaluation split, with optional TTA copies."""
from __future__ import annotations

import concurrent.futures
from typing import Optional

import numpy as np
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as aug
from ba_dist.data.batching import normalize
from ba_dist.data.loader import DataError, PipelineSpec
from ba_dist.data.sampler import eval_shard
from ba_dist.data.sources import CorruptSampleError, Source

__all__ = ["make_eval_dataset"]


def make_eval_dataset(source: Source, spec: PipelineSpec, rank: int, world_size: int, batch_size: int,
                      image_shape: Optional[tuple] = None, tta: int = 0) -> tuple[tf.data.Dataset, int]:
    """This rank's shard of the evaluation split: ``(images, labels, weights)`` batches.

    Every rank gets the same number of batches; padding has weight 0 so
    ``sum(correct * w)`` and ``sum(w)`` reduced over ranks count each sample once.
    Returns the dataset and its number of batches.

    With ``tta = N > 0`` (test-time augmentation, paper Table 5) images are
    ``[batch, N, H, W, C]``: N copies of each sample under the *training*
    augmentation, seeded by (seed, ``ba.TTA_EPOCH``, sample id, copy). The rank is
    left out of the seed on purpose, so the result does not depend on how
    many ranks share the evaluation.
    """
    ids, weights = eval_shard(len(source), rank, world_size)
    channels = image_shape[-1] if image_shape else 3
    hw = tuple(image_shape[:2]) if image_shape else (None, None)

    def gen():
        with concurrent.futures.ThreadPoolExecutor(max(1, spec.read_threads)) as pool:
            for i, w, img in zip(ids, weights, pool.map(lambda k: _load_checked(source, int(k)), ids)):
                yield img, source.label(int(i)), w, i

    sig = (tf.TensorSpec(hw + (channels,), tf.uint8), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.float32),
           tf.TensorSpec([], tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    if tta:
        augment_fn = aug.get_augment(spec.augment)

        def prepare(x, y, w, i):
            copies = ba.sample_copies(x, ba.copy_seeds(spec.seed, ba.TTA_EPOCH, 0, i, tta), augment_fn)
            return normalize(copies, spec), y, w
    else:
        transform = aug.get_augment(spec.eval_transform)
        zero_seed = tf.zeros([2], tf.int64)

        def prepare(x, y, w, i):
            return normalize(transform(x, zero_seed), spec), y, w
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    n_batches = -(-len(ids) // batch_size)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), n_batches


def _load_checked(source: Source, i: int) -> np.ndarray:
    try:
        img = source.load(i)
    except CorruptSampleError as e:
        raise DataError(f"evaluation sample {e}") from None
    return img[..., None] if img.ndim == 2 else img
