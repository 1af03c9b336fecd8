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
      dataset: infinite ``tf.data.Dataset`` of ``(images [m_local*b, ...], onehot labels)``;
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

    The payload of a sample is its decoded array (nothing to decode); ``None``
    samples mean this rank does not read (a non-reader of a broadcasting group).
    """

    def __init__(self, dataset: Optional[tf.data.Dataset], n: int):
        self.name, self._n = "dataset", n
        self._images, self._labels = [], np.zeros(0, np.int64)
        if dataset is not None:
            rows = [(np.asarray(x, np.uint8), int(y)) for x, y in dataset.take(n).as_numpy_iterator()]
            if len(rows) < n:
                raise ValueError(f"the dataset has {len(rows)} samples, fewer than num_examples={n}")
            self._images = [x[..., None] if x.ndim == 2 else x for x, _ in rows]
            self._labels = np.array([y for _, y in rows], np.int64)

    def __len__(self) -> int:
        return self._n

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def read(self, index: int):
        return self._images[index]

    def decode(self, payload, index: int) -> np.ndarray:
        return payload


def ba_dataset(dataset: tf.data.Dataset, augment: Union[str, Callable], *, per_rank_unique: int,
               num_classes: int, seed: int = 0, num_examples: Optional[int] = None,
               broadcast: bool = False,
               normalize: Optional[tuple[Sequence[float], Sequence[float]]] = None,
               mixup_alpha: float = 0.0, ctx: Optional[dist.Context] = None) -> BADataset:
    """Turn ``(image, label)`` samples into this rank's Batch Augmentation batches.

    Args:
      dataset: finite, deterministic dataset of single ``(image uint8 HxWxC, int label)``
        samples, in the same order on every rank (do not shard or shuffle it yourself).
      augment: an op name of ``ba_dist.data.augment`` (e.g. "cifar", "digits") or
        ``fn(image, seed) -> image`` using stateless TF random ops only.
      per_rank_unique: unique samples per rank per step (``b``); the rank's batch is
        ``m_local * b`` and the global batch ``B x M`` with ``B = groups x b``.
      num_classes: labels become one-hot of this size.
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
      ValueError: unknown size, or fewer samples than one global unique batch.
    """
    ctx = ctx or dist.context()
    t = ctx.topology
    n = num_examples
    if n is None:
        n = int(dataset.cardinality())
        if n < 0:
            raise ValueError("the dataset's size is unknown or infinite: pass num_examples= (and do not .repeat() it)")
    augment_fn = aug.get_augment(augment) if isinstance(augment, str) else augment
    mean, std = normalize if normalize is not None else (None, None)
    broadcasting = broadcast and t.m_ranks > 1
    sampler = GroupSampler(n, t.num_groups, per_rank_unique, seed=seed)  # ValueError if n < one global step
    spec = PipelineSpec(per_rank_unique=per_rank_unique, m_local=t.m_local, mixup_alpha=mixup_alpha,
                        mean=mean, std=std, seed=seed, broadcast="decoded" if broadcasting else "none")
    source = _MemorySource(dataset if (t.is_reader or not broadcasting) else None, n)
    shape = dataset.element_spec[0].shape
    image_shape = (tuple(shape) + ((1,) if shape.rank == 2 else ())) if shape.is_fully_defined() else None

    def stream(with_ids: bool):
        loader = GroupLoader(source, sampler, spec, t, ctx.group_comm)  # until stop()
        elements = loader_elements(loader, per_rank_unique, image_shape)
        return ba_batches(elements, augment_fn, spec, t.rank, num_classes, with_ids=with_ids), loader

    train, loader = stream(with_ids=False)
    loaders = [loader]
    audit = None
    if not broadcasting:  # the reader of a broadcasting group reads for one stream only
        audit, audit_loader = stream(with_ids=True)
        loaders.append(audit_loader)
    return BADataset(train, sampler.steps_per_epoch, per_rank_unique, t.m_local, audit, loaders)
