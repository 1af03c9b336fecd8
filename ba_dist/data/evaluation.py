"""Evaluation data: each rank's exact shard of the evaluation split, with optional TTA copies.

A sample that cannot be read, decoded or batched (a size that a fixed-size
transform cannot batch) never ends the run from inside the input pipeline: it
enters the batch as a zero image of weight 0 (so it is out of ``val_count``)
and is recorded in the dataset's :class:`EvalProblems`. After its pass every
rank reduces the counts (:func:`ba_dist.train_step.evaluate_sharded`): under
``on_corrupt='skip'`` they are reported as ``val_skipped``; under ``'error'``
every rank raises the same :class:`DataSourceError` naming the first file,
with no rank left behind in a collective.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as aug
from ba_dist.data.batching import fixed_size, normalize
from ba_dist.data.loader import PipelineSpec, check_size
from ba_dist.data.sampler import eval_shard
from ba_dist.data.sources import CorruptSampleError, Source

__all__ = ["make_eval_dataset", "EvalProblems"]

log = logging.getLogger(__name__)
_WARNED: set = set()  # files already named in this process's log (evaluation runs every epoch)


@dataclasses.dataclass
class EvalProblems:
    """The samples of one rank's evaluation pass that were left out (weight 0).

    Attributes:
      on_corrupt: "skip" or "error" (the run's ``input.on_corrupt``).
      bad: ``"file: reason"`` of each sample left out, in shard order.
    """

    on_corrupt: str
    bad: list = dataclasses.field(default_factory=list)

    def error_message(self, first: str, count: int) -> str:
        return (f"{count} corrupt evaluation sample(s), first {first} "
                f"(set input.on_corrupt='skip' to skip and count them)")


def make_eval_dataset(source: Source, spec: PipelineSpec, rank: int, world_size: int, batch_size: int,
                      image_shape: Optional[tuple] = None, tta: int = 0) -> tuple[tf.data.Dataset, int]:
    """This rank's shard of the evaluation split: ``(images, labels, weights)`` batches.

    Every rank gets the same number of batches; padding has weight 0 so
    ``sum(correct * w)`` and ``sum(w)`` reduced over ranks count each sample once.
    Returns the dataset and its number of batches. A sample that cannot be
    loaded or batched has weight 0 and is listed in the dataset's
    ``eval_problems`` (:class:`EvalProblems`; see the module docstring).

    With ``tta = N > 0`` (test-time augmentation, paper Table 5) images are
    ``[batch, N, H, W, C]``: N copies of each sample under the *training*
    augmentation, drawn from (seed, ``ba.TTA_EPOCH``, sample id; row c for copy c). The rank is
    left out of the seed on purpose, so the result does not depend on how
    many ranks share the evaluation.
    """
    ids, weights = eval_shard(len(source), rank, world_size)
    transform = spec.augment if tta else spec.eval_transform
    shape = fixed_size(transform, source)  # None: the transform resizes, any size batches
    channels = (shape or image_shape or (3,))[-1]
    hw = tuple(shape[:2]) if shape else (None, None)
    problems = EvalProblems(spec.on_corrupt)

    def gen():
        problems.bad.clear()
        with concurrent.futures.ThreadPoolExecutor(max(1, spec.read_threads)) as pool:
            for i, w, got in zip(ids, weights, pool.map(lambda k: _load(source, int(k), shape, transform), ids)):
                if isinstance(got, CorruptSampleError):
                    if w > 0:  # padding repeats a sample already counted
                        problems.bad.append(str(got))
                        if spec.on_corrupt == "skip" and got.where not in _WARNED:
                            _WARNED.add(got.where)
                            log.warning("rank %d: evaluation skips corrupt sample %s", rank, got)
                    yield np.zeros((shape or (8, 8, channels)), np.uint8), np.int64(0), np.float32(0), i
                else:
                    yield got[0], got[1], w, i

    sig = (tf.TensorSpec(hw + (channels,), tf.uint8), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.float32),
           tf.TensorSpec([], tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    if tta:
        augment_fn = aug.get_augment(spec.augment)

        def prepare(x, y, w, i):
            draws = ba.copy_draws(spec.seed, ba.TTA_EPOCH, 0, i, tta, augment_fn.draws)
            copies = ba.sample_copies(x, draws, augment_fn)
            return normalize(copies, spec), y, w
    else:
        transform = aug.get_augment(spec.eval_transform)
        zero_seed = tf.zeros([2], tf.int64)

        def prepare(x, y, w, i):
            return normalize(transform(x, zero_seed), spec), y, w
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    n_batches = -(-len(ids) // batch_size)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ds.eval_problems = problems  # read by evaluate_sharded once the pass is over
    return ds, n_batches


def _load(source: Source, i: int, shape: Optional[tuple], transform: str):
    """``(image, label)`` of sample ``i``, or the CorruptSampleError that names it."""
    try:
        img = source.load(i)
        img = img[..., None] if img.ndim == 2 else img
        check_size(img, shape, source.describe(i), transform)
        return img, np.int64(source.label(i))
    except CorruptSampleError as e:
        return e
