"""BA batching in tf.data: a group's unique samples -> this rank's copy-major BA batches.

Every rank makes ``m_local`` augmentations of each of its ``b`` unique samples
with its own draws (:func:`ba_dist.ba.copy_draws`: seed, epoch, global rank,
sample id, then row c for copy c), all in one batched op, laid out copy-major, ``[copy 0 of b images, copy 1,
...]``, then (optionally) applies mixup. So each rank's batch is ``m_local x b``
examples and the global batch is ``N ranks x m_local x b = B unique x M copies``
with ``B = groups x b`` and ``M = m_ranks x m_local``. ba-train and the public
Keras API (:func:`ba_dist.keras.ba_dataset`) both batch through :func:`ba_batches`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as aug
from ba_dist.data.loader import GroupLoader, PipelineSpec, loader_elements
from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source

__all__ = ["make_train_dataset", "ba_batches", "CopyMaker", "normalize", "output_shape", "first_loadable", "fixed_size"]


def normalize(x, spec: PipelineSpec):
    """Pixels in 0..255 -> model input: ``(x - mean) / std`` per channel, or ``x / 255``."""
    if spec.mean is None:
        return x / 255.0
    return aug.normalize(x, spec.mean, spec.std)


def make_train_dataset(loader: GroupLoader, spec: PipelineSpec, topology, num_classes: int,
                       image_shape: Optional[tuple] = None) -> tf.data.Dataset:
    """tf.data dataset of this rank's steps, one element per step.

    ``spec.copies_on == "host"``: BA batches ``(images [m_local*b, ...], onehot labels)``.
    ``"device"``: unique batches ``(dict, labels [b])`` that :meth:`CopyMaker.on_device`
    turns into the same BA batches inside the train step. Elements follow the
    loader's steps one to one, so ``steps_per_epoch`` elements make one epoch on every rank.
    """
    return ba_batches(loader_elements(loader, spec.per_rank_unique, image_shape),
                      aug.get_augment(spec.augment), spec, topology.rank, num_classes,
                      unique_only=spec.copies_on == "device")


class CopyMaker:
    """A step's unique batch -> this rank's BA batch: copies, normalisation, labels, mixup.

    The one place a BA batch is made: in tf.data (``copies_on='host'``) or in
    the train step on the model's device (``'device'``: each unique image
    crosses to the device once, as uint8, and the M copies are made there).
    Same draws, same crops: the two placements give the same batch, except
    that on the host an op may use a faster host kernel (the Inception crop's
    resize: OpenCV on uint8, rounded to whole levels, < 1 level from the
    TensorFlow kernel the device uses; ``Augment.batch``).
    """

    def __init__(self, augment_fn, spec: PipelineSpec, rank: int, num_classes: int, onehot: bool = True):
        self.op = aug.as_augment(augment_fn)
        self.spec, self.rank, self.num_classes, self.onehot = spec, rank, num_classes, onehot

    def draws(self, epoch, sample_id) -> tf.Tensor:
        """``[m_local, op.draws]`` draws of one sample's copies on this rank."""
        return ba.copy_draws(self.spec.seed, epoch, self.rank, sample_id, self.spec.m_local, self.op.draws)

    def __call__(self, x, sizes, draws, label, epoch, step, host: bool = True):
        """``x [b, H, W, C]`` (zero-padded), ``sizes [b, 2]``, ``draws [b, m, k]``, ``label [b]``, epoch/step
        scalars -> ``(images [m*b, ...], labels)``, copy-major. ``host``: made in ``tf.data`` on the host."""
        spec, m = self.spec, self.spec.m_local
        x = normalize(ba.copies(x, sizes, draws, self.op, host=host), spec)
        y = ba.repeat(label, m)
        if self.onehot or spec.mixup_alpha > 0:
            y = tf.one_hot(y, self.num_classes)
        if spec.mixup_alpha > 0:
            x, y = aug.mixup_batch(x, y, spec.mixup_alpha, ba.mixup_seed(spec.seed, epoch, step, self.rank))
        return x, y

    def on_device(self, unique: dict, label):
        """The train step's half of ``copies_on='device'``: a unique-batch element -> the BA batch."""
        return self(unique["images"], unique["sizes"], unique["draws"], label, unique["epoch"], unique["step"],
                    host=False)


def ba_batches(elements: tf.data.Dataset, augment_fn, spec: PipelineSpec, rank: int,
               num_classes: int, with_ids: bool = False, onehot: bool = True,
               unique_only: bool = False) -> tf.data.Dataset:
    """The BA batching shared by ba-train and the public Keras API.

    Per sample, only the draws of its copies (:func:`ba_dist.ba.copy_draws`);
    per step, the ``b`` unique images (zero-padded to one size if they differ)
    and all ``m_local x b`` copies made in one batched op (:class:`CopyMaker`).

    Args:
      elements: unique samples in training order, ``(image, label, id, epoch,
        step)``; every ``per_rank_unique`` consecutive elements form one step.
      augment_fn: an ``augment.Augment`` (or a plain ``fn(image, seed)``).
      spec: copies (``m_local``), normalisation, mixup and the base seed.
      rank: global rank (part of every augmentation seed).
      num_classes: for one-hot labels.
      with_ids: also yield the ``[m_local*b]`` sample ids (for audits and tests).
      onehot: labels as one-hot ``[m_local*b, K]`` floats; False keeps the
        integer class ids ``[m_local*b]`` (mixup needs one-hot: then it is forced).
      unique_only: yield the unique batch ``({"images", "sizes", "draws",
        "epoch", "step"}, labels [b])`` and leave the copies to
        ``CopyMaker.on_device`` in the train step.

    Returns:
      Batches ``(images [m_local*b, ...], labels)`` in copy-major order: row
      ``c*b + i`` is copy ``c`` of unique sample ``i``.
    """
    maker = CopyMaker(augment_fn, spec, rank, num_classes, onehot)

    def with_draws(img, label, i, epoch, step):
        return img, tf.shape(img)[:2], maker.draws(epoch, i), label, i, epoch, step

    ds = elements.map(with_draws, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # images of different sizes are zero-padded to the step's largest; their true sizes go along
    ds = ds.padded_batch(spec.per_rank_unique, drop_remainder=True)
    if unique_only:
        def unique(x, sizes, draws, label, ids, epoch, step):
            return {"images": x, "sizes": sizes, "draws": draws, "epoch": epoch[0], "step": step[0]}, label
        return ds.map(unique).prefetch(tf.data.AUTOTUNE)

    def make_copies(x, sizes, draws, label, ids, epoch, step):
        x, y = maker(x, sizes, draws, label, epoch[0], step[0])      # [m*b, H', W', C], copy-major
        return (x, y, ba.repeat(ids, spec.m_local)) if with_ids else (x, y)

    ds = ds.map(make_copies, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def output_shape(augment: str, example: np.ndarray) -> tuple:
    """Shape of one augmented example (what the model's input layer must accept)."""
    out = aug.get_augment(augment)(tf.constant(example), tf.zeros([2], tf.int64))
    return tuple(int(d) for d in out.shape)


def first_loadable(src: Source, tries: int = 100) -> np.ndarray:
    """A sample to size the network's input with: a corrupt sample 0 must not stop an on_corrupt='skip' run."""
    errors = []
    for i in range(min(len(src), tries)):
        try:
            return src.load(i)
        except CorruptSampleError as e:
            errors.append(str(e))
    raise DataSourceError(f"none of the first {len(errors)} samples of {src.name} loads: "
                          f"{'; '.join(errors[:3])} ...")


def fixed_size(transform: str, src: Source, example: Optional[np.ndarray] = None) -> Optional[tuple]:
    """The decoded shape every sample of ``src`` must have under ``transform``, or None if any will do.

    A transform that resizes (e.g. "imagenet") batches images of any size; one
    that keeps the input size (e.g. "none", "digits") can only batch images of
    one size: the source's, or else the first loadable sample's (the same on
    every rank), so a misfit is a corrupt sample naming its file.
    """
    if src.image_shape is not None:
        return tuple(src.image_shape)
    example = first_loadable(src) if example is None else example
    example = example[..., None] if example.ndim == 2 else example
    bigger = np.zeros((example.shape[0] + 8, example.shape[1] + 8, example.shape[2]), np.uint8)
    if output_shape(transform, bigger) == output_shape(transform, example):
        return None
    return tuple(example.shape)
