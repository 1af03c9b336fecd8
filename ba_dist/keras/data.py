"""Batch Augmentation for a user's own ``tf.data`` dataset.

:func:`ba_dataset` turns a finite dataset of ``(image, label)`` into this
rank's BA training batches with the very pieces ``ba-train`` uses:

* group-synchronised sampling by :class:`ba_dist.data.sampler.GroupSampler`
  (the element position is the sample id): the ranks of a group see the same
  ids in the same order, groups get disjoint ids, a new order every epoch, and
  every rank runs the same number of steps;
* the group loader (:class:`ba_dist.data.loader.GroupLoader`); with
  ``broadcast=True`` only the group's reader holds and reads the samples and
  the decoded images go to the other ranks of the group;
* every rank makes ``m_local`` copies of each sample with its own stateless
  seeds ``(seed, epoch, rank, id, copy)`` (:mod:`ba_dist.ba`), laid out
  copy-major (:func:`ba_dist.data.batching.ba_batches`).

Random access by id needs the samples in memory: the dataset is iterated once,
on the ranks that read (every rank, or only the readers with ``broadcast=True``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from ba_dist import dist
from ba_dist.data import augment as aug
from ba_dist.data.batching import ba_batches
from ba_dist.data.loader import GroupLoader, PipelineSpec, loader_elements
from ba_dist.data.sampler import GroupSampler
from ba_dist.data.sources import Source

__all__ = ["BADataset", "ba_dataset"]


@dataclasses.dataclass
class BADataset:
    """This rank's BA training data.

    Attributes:
      dataset: infinite ``tf.data.Dataset`` of ``(images [m_local*b, ...], labels)``
        (labels in the input's format: class ids ``[m_local*b]`` or one-hot ``[m_local*b, K]``);
        pass it to ``model.fit`` together with ``steps_per_epoch``.
      steps_per_epoch: identical on every rank (the remainder of each epoch's
        permutation is dropped, a different one every epoch).
      per_rank_unique: ``b``, unique samples per rank per step.
      m_local: copies per sample made on this rank.
      audit: the same pipeline yielding ``(images, labels, ids)``, for checks
        (None when the group broadcasts: its reader reads for ``dataset`` only).
      loaders: the group loaders behind ``dataset`` and ``audit``.
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    per_rank_unique: int
    m_local: int
    audit: Optional[tf.data.Dataset]
    loaders: list = dataclasses.field(default_factory=list)

    def stop(self) -> None:
        """End the group's background loaders; on every rank (the BA callbacks call this on_train_end)."""
        for loader in self.loaders:
            loader.stop()


class _MemorySource(Source):
    """A user's finite dataset held in memory, random access by position.

    Images are kept as uint8 (what the augmentations expect): float images in
    [0, 1] are scaled by 255 and rounded. Labels are kept as class ids (a
    one-hot label becomes its class; :func:`ba_dataset` turns it back into
    one-hot). The payload of a sample is its decoded array (nothing to decode);
    with ``dataset=None`` this rank does not read (a non-reader of a
    broadcasting group). ``problem`` holds what is wrong with the data, if
    anything, so that all ranks can fail together.
    """

    def __init__(self, dataset: Optional[tf.data.Dataset], n: int, onehot_labels: bool):
        self.name, self._n = "dataset", n
        self._images, self._labels = [], np.zeros(0, np.int64)
        self.problem: Optional[str] = None
        if dataset is None:
            return
        images, labels = [], []
        lo, hi = np.inf, -np.inf
        for x, y in dataset.take(n).as_numpy_iterator():
            if x.dtype != np.uint8:  # float (dtype checked by ba_dataset)
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
                x = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
            if onehot_labels:
                if np.count_nonzero(y) != 1 or y.max() != 1:
                    self.problem = (f"sample {len(labels)}: label {y.tolist()} is not one-hot "
                                    "(soft labels are not supported: pass class ids or exact one-hot rows)")
                    return
                y = int(np.argmax(y))
            images.append(x[..., None] if x.ndim == 2 else x)
            labels.append(int(y))
        if len(labels) < n:
            self.problem = f"the dataset has {len(labels)} samples, fewer than num_examples={n}"
        elif lo < -1e-6 or hi > 1 + 1e-6:
            self.problem = (f"float images must be in [0, 1] (they are scaled by 255 for the augmentations); "
                            f"found values in [{lo:g}, {hi:g}]: divide by 255, or pass uint8 images in 0..255")
        self._images, self._labels = images, np.array(labels, np.int64)

    def __len__(self) -> int:
        return self._n

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def read(self, index: int):
        return self._images[index]

    def decode(self, payload, index: int) -> np.ndarray:
        return payload


def _label_format(label_spec: tf.TensorSpec, num_classes: Optional[int]) -> tuple[bool, int]:
    """(one-hot?, num_classes) of the dataset's labels; ValueError for anything else."""
    shape = label_spec.shape
    if shape.rank == 0 and label_spec.dtype.is_integer:
        return False, num_classes
    if shape.rank == 1 and shape[0] is not None:
        if num_classes not in (None, shape[0]):
            raise ValueError(f"one-hot labels have {shape[0]} classes but num_classes={num_classes}")
        return True, int(shape[0])
    raise ValueError(f"labels must be integer class ids (shape []) or one-hot rows (shape [K]); "
                     f"got {label_spec.dtype.name} of shape {shape}")


def _check_image_dtype(image_spec: tf.TensorSpec) -> None:
    if image_spec.dtype != tf.uint8 and not image_spec.dtype.is_floating:
        raise ValueError(f"images of dtype {image_spec.dtype.name} are not accepted: pass uint8 in 0..255 "
                         f"(e.g. tf.cast(x, tf.uint8)) or floats in [0, 1]")


def ba_dataset(dataset: tf.data.Dataset, augment: Union[str, Callable], *, per_rank_unique: int,
               num_classes: Optional[int] = None, seed: int = 0, num_examples: Optional[int] = None,
               broadcast: bool = False,
               normalize: Optional[tuple[Sequence[float], Sequence[float]]] = None,
               mixup_alpha: float = 0.0, ctx: Optional[dist.Context] = None) -> BADataset:
    """Turn ``(image, label)`` samples into this rank's Batch Augmentation batches.

    Args:
      dataset: finite, deterministic dataset of single ``(image HxWxC, label)``
        samples, in the same order on every rank (do not shard or shuffle it yourself).
        Images are uint8 in 0..255 or floats in [0, 1] (scaled by 255 to the
        uint8 the augmentations work on; values outside [0, 1] are an error).
        Labels are integer class ids or one-hot rows; the batches keep that
        format (mixup always gives one-hot).
      augment: an op name of ``ba_dist.data.augment`` (e.g. "cifar", "digits") or
        ``fn(image, seed) -> image`` using stateless TF random ops only.
      per_rank_unique: unique samples per rank per step (``b``); the rank's batch is
        ``m_local * b`` and the global batch ``B x M`` with ``B = groups x b``.
      num_classes: classes; needed for integer labels with mixup (one-hot labels give it).
      seed: base seed; the same on every rank.
      num_examples: size of ``dataset`` if its cardinality is unknown.
      broadcast: only the group's reader iterates ``dataset``; decoded images are
        broadcast to the group (worth it when reading/decoding is the cost).
      normalize: ``(mean, std)`` per channel in 0..255 units; default ``x / 255``.
      mixup_alpha: > 0 applies mixup after the copies are made.
      ctx: from ``ba_dist.keras.init``; default the process's context.

    Returns:
      A :class:`BADataset`; train with ``model.fit(d.dataset, steps_per_epoch=d.steps_per_epoch, ...)``.

    Raises:
      ValueError: unknown size, fewer samples than one global unique batch, an
        image dtype other than uint8/float, float images outside [0, 1], or
        labels that are neither class ids nor one-hot (raised on every rank).
    """
    ctx = ctx or dist.context()
    t = ctx.topology
    n = num_examples
    if n is None:
        n = int(dataset.cardinality())
        if n < 0:
            raise ValueError("the dataset's size is unknown or infinite: pass num_examples= (and do not .repeat() it)")
    image_spec, label_spec = dataset.element_spec
    _check_image_dtype(image_spec)
    onehot, num_classes = _label_format(label_spec, num_classes)
    if (onehot or mixup_alpha > 0) and not num_classes:
        raise ValueError("mixup makes one-hot labels: pass num_classes=")
    augment_fn = aug.get_augment(augment) if isinstance(augment, str) else augment
    mean, std = normalize if normalize is not None else (None, None)
    broadcasting = broadcast and t.m_ranks > 1
    sampler = GroupSampler(n, t.num_groups, per_rank_unique, seed=seed)  # ValueError if n < one global step
    spec = PipelineSpec(per_rank_unique=per_rank_unique, m_local=t.m_local, mixup_alpha=mixup_alpha,
                        mean=mean, std=std, seed=seed, broadcast="decoded" if broadcasting else "none")
    source = _MemorySource(dataset if (t.is_reader or not broadcasting) else None, n, onehot)
    # Only the ranks that read see the data: every rank raises the same error, or none does.
    problems = [p for p in dist.allgather(source.problem) if p]
    if problems:
        raise ValueError(f"ba_dataset: {problems[0]}")
    shape = image_spec.shape
    image_shape = (tuple(shape) + ((1,) if shape.rank == 2 else ())) if shape.is_fully_defined() else None

    def stream(with_ids: bool):
        loader = GroupLoader(source, sampler, spec, t)  # until stop()
        elements = loader_elements(loader, per_rank_unique, image_shape)
        return ba_batches(elements, augment_fn, spec, t.rank, num_classes, with_ids=with_ids, onehot=onehot), loader

    train, loader = stream(with_ids=False)
    loaders = [loader]
    audit = None
    if not broadcasting:  # the reader of a broadcasting group reads for one stream only
        audit, audit_loader = stream(with_ids=True)
        loaders.append(audit_loader)
    return BADataset(train, sampler.steps_per_epoch, per_rank_unique, t.m_local, audit, loaders)
