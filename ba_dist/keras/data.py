"""Batch Augmentation for a user's own ``tf.data`` dataset.

:func:`ba_dataset` turns a finite dataset of ``(image, label)`` into this
rank's BA training batches, with the same semantics as ``ba-train``:

* group-synchronised sampling: the dataset is enumerated (the position is
  the sample id), sharded by BA group, and shuffled with a seed shared by the
  group, so the ranks of a group see the same ids in the same order;
* every rank makes ``m_local`` copies of each sample with its own stateless
  seeds ``(seed, epoch, rank, id, copy)``, laid out copy-major;
* optional broadcast: only the group's reader iterates the dataset (reads and
  decodes); the decoded images go to the other ranks of the group.

The epoch used in the seeds is derived from the element position, so
re-seeding per epoch is exact even while tf.data prefetches across the epoch
boundary (a callback-driven re-seed would race with the prefetch).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from ba_dist import dist
from ba_dist.data import augment as aug
from ba_dist.data import broadcast as bc
from ba_dist.data import pipeline

__all__ = ["BADataset", "ba_dataset"]


@dataclasses.dataclass
class BADataset:
    """This rank's BA training data.

    Attributes:
      dataset: infinite ``tf.data.Dataset`` of ``(images [m_local*b, ...], onehot labels)``;
        pass it to ``model.fit`` together with ``steps_per_epoch``.
      steps_per_epoch: identical on every rank (the remainder of each group's
        shard is dropped, a different one every epoch).
      per_rank_unique: ``b``, unique samples per rank per step.
      m_local: copies per sample made on this rank.
      audit: the same pipeline yielding ``(images, labels, ids)``, for checks.
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    per_rank_unique: int
    m_local: int
    audit: tf.data.Dataset
    loader: Optional[pipeline.GroupLoader] = None

    def stop(self) -> None:
        """End the group's background broadcast (the BA callbacks call this on_train_end)."""
        if self.loader is not None:
            self.loader.stop()


class _DatasetGroupLoader(pipeline.GroupLoader):
    """GroupLoader whose reader iterates a tf.data stream instead of a Source."""

    def __init__(self, raw: tf.data.Dataset, steps_per_epoch: int, spec: pipeline.PipelineSpec, topology, group_comm):
        self.raw, self.spe = raw, steps_per_epoch
        self._it = None
        super().__init__(source=None, sampler=None, spec=spec, topology=topology, group_comm=group_comm)

    def _positions(self):
        step = 0
        while True:  # until stop(): the reader then sends the end marker
            yield step // self.spe, step % self.spe, None
            step += 1

    def _produce_step(self, epoch, step, ids):
        b = self.spec.per_rank_unique
        if not self.topo.is_reader:
            ids, labels, items, _ = bc.bcast_decoded(self.comm, b)
            return ids, labels, items
        if self._it is None:
            self._it = iter(self.raw)
        rows = [next(self._it) for _ in range(b)]
        ids = np.array([int(r[0]) for r in rows], np.int64)
        labels = np.array([int(r[1][1]) for r in rows], np.int64)
        items = [np.asarray(r[1][0], np.uint8) for r in rows]
        items = [im[..., None] if im.ndim == 2 else im for im in items]
        bc.bcast_decoded(self.comm, b, ids, labels, items)
        return ids, labels, items


def ba_dataset(dataset: tf.data.Dataset, augment: Union[str, Callable], *, per_rank_unique: int,
               num_classes: int, seed: int = 0, num_examples: Optional[int] = None,
               broadcast: bool = False, shuffle_buffer: Optional[int] = None,
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
      shuffle_buffer: default: the whole group shard (a full shuffle).
      normalize: ``(mean, std)`` per channel in 0..255 units; default ``x / 255``.
      mixup_alpha: > 0 applies mixup after the copies are made.
      ctx: from ``ba_dist.keras.init``; default the process's context.

    Returns:
      A :class:`BADataset`; train with ``model.fit(d.dataset, steps_per_epoch=d.steps_per_epoch, ...)``.

    Raises:
      ValueError: unknown size, or a shard smaller than one step.
    """
    ctx = ctx or dist.context()
    t = ctx.topology
    n = num_examples
    if n is None:
        n = int(dataset.cardinality())
        if n < 0:
            raise ValueError("the dataset's size is unknown or infinite: pass num_examples= (and do not .repeat() it)")
    b = per_rank_unique
    spe = (n // t.num_groups) // b  # groups' shards differ by at most one sample: use the smaller
    if spe < 1:
        raise ValueError(f"{n} samples over {t.num_groups} BA groups leave fewer than per_rank_unique={b} "
                         f"per group: use fewer ranks or a smaller per_rank_unique")
    augment_fn = aug.get_augment(augment) if isinstance(augment, str) else augment
    mean, std = normalize if normalize is not None else (None, None)
    spec = pipeline.PipelineSpec(per_rank_unique=b, m_local=t.m_local, mixup_alpha=mixup_alpha,
                                 mean=mean, std=std, seed=seed, broadcast="decoded" if broadcast else "none")
    group_shard = dataset.enumerate().shard(t.num_groups, t.group_id)  # (id, (image, label))
    # Same op seed on every rank of the group -> same order; a new order every
    # epoch (reshuffle_each_iteration), identical across the group.
    raw = (group_shard.shuffle(shuffle_buffer or (n // t.num_groups + 1), seed=seed, reshuffle_each_iteration=True)
           .take(spe * b).repeat())

    def stream(audit: bool):
        if broadcast and t.m_ranks > 1:
            loader = _DatasetGroupLoader(raw, spe, spec, t, ctx.group_comm)
            elements = pipeline.loader_elements(loader, b)
        else:
            loader = None
            elements = raw.enumerate().map(
                lambda pos, s: (s[1][0], tf.cast(s[1][1], tf.int64), s[0], pos // (spe * b), (pos // b) % spe))
        return pipeline.ba_batches(elements, augment_fn, spec, t.rank, num_classes, with_ids=audit), loader

    train, loader = stream(audit=False)
    audit, _ = (stream(audit=True) if not (broadcast and t.m_ranks > 1) else (None, None))
    return BADataset(train, spe, b, t.m_local, audit, loader)

