"""One call from config, layout and topology to everything a trainer needs from the data.

    data = build.build(cfg, layout, ctx)
    data.steps_per_epoch, data.input_shape, data.num_classes
    ds, loader = data.train_dataset(start_epoch, start_step, num_steps)   # loader.stop() at the end
    eval_ds = data.eval_dataset()
    data.skipped()        # corrupt samples this rank's loaders replaced (the reader's count)

The trainer does not touch sources, sampler, spec or loader internals: those
are put together here (:mod:`sources` -> :class:`GroupSampler` ->
:class:`GroupLoader` -> :mod:`batching`; :mod:`evaluation` for the eval split).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from ba_dist import dist
from ba_dist.data import augment
from ba_dist.data.batching import CopyMaker, first_loadable, fixed_size, make_train_dataset, output_shape
from ba_dist.data.evaluation import make_eval_dataset
from ba_dist.data.loader import GroupLoader, PipelineSpec
from ba_dist.data.sampler import GroupSampler
from ba_dist.data.sources import CorruptSampleError, DataSourceError, RemoteSource, Source, get_source

__all__ = ["TrainerData", "build", "make_spec", "first_loadable", "input_shape"]

_NORMALIZE = {"none": (None, None), "cifar10": (augment.CIFAR10_MEAN, augment.CIFAR10_STD),
              "imagenet": (augment.IMAGENET_MEAN, augment.IMAGENET_STD)}


def copies_on(setting: str) -> str:
    """``input.copies_on`` resolved: "auto" is "device" when TensorFlow sees a GPU, else "host"."""
    if setting == "auto":
        return "device" if tf.config.list_logical_devices("GPU") else "host"
    return setting


def make_spec(cfg, lay, train_src: Source) -> PipelineSpec:
    """The input pipeline's :class:`PipelineSpec` from the config and the batch layout."""
    mean, std = _NORMALIZE[cfg.input.normalize]
    return PipelineSpec(
        per_rank_unique=lay.per_rank_unique, m_local=lay.m_local,
        augment=cfg.input.augment or train_src.default_augment,
        eval_transform=cfg.input.eval_transform or train_src.default_eval,
        broadcast=cfg.input.broadcast, on_corrupt=cfg.input.on_corrupt, mixup_alpha=cfg.input.mixup_alpha,
        mean=mean, std=std, prefetch=cfg.input.prefetch, read_threads=cfg.input.read_threads, seed=cfg.seed,
        copies_on=copies_on(cfg.input.get("copies_on", "auto")))


def input_shape(spec: PipelineSpec, src: Source) -> tuple:
    """Shape of one augmented training example: what the model's input layer must accept."""
    return output_shape(spec.augment, first_loadable(src))


@dataclasses.dataclass
class TrainerData:
    """A trainer's data, built by :func:`build`.

    Attributes:
      train_source, eval_source: the two splits.
      spec: the input pipeline's settings.
      sampler: which unique samples each group trains on, per epoch.
      steps_per_epoch: identical on every rank.
      input_shape: shape of one augmented example.
      num_classes: label count of the training split.
    """

    train_source: Source
    eval_source: Source
    spec: PipelineSpec
    sampler: GroupSampler
    steps_per_epoch: int
    input_shape: tuple
    num_classes: int
    eval_batch_size: int
    topology: object
    loaders: list = dataclasses.field(default_factory=list)

    def train_dataset(self, start_epoch: int, start_step: int, num_steps: int) -> tuple[tf.data.Dataset, GroupLoader]:
        """This rank's BA batches for ``num_steps`` steps from ``(start_epoch, start_step)``.

        Returns the dataset and its loader; call ``loader.stop()`` on every rank
        when done with the dataset (it ends the group's background broadcasts).
        """
        loader = GroupLoader(self.train_source, self.sampler, self.spec, self.topology,
                             start_epoch=start_epoch, start_step=start_step, num_steps=num_steps)
        self.loaders.append(loader)
        ds = make_train_dataset(loader, self.spec, self.topology, self.num_classes, self.train_source.image_shape)
        return ds, loader

    def copy_maker(self) -> Optional[CopyMaker]:
        """What the train step calls on each unique batch when ``spec.copies_on == 'device'``, else None."""
        if self.spec.copies_on != "device":
            return None
        return CopyMaker(augment.get_augment(self.spec.augment), self.spec, self.topology.rank, self.num_classes)

    def eval_dataset(self, batch_size: Optional[int] = None, tta: int = 0) -> tf.data.Dataset:
        """This rank's exact shard of the evaluation split (see :func:`make_eval_dataset`)."""
        t = self.topology
        ds, _ = make_eval_dataset(self.eval_source, self.spec, t.rank, t.world_size,
                                  batch_size or self.eval_batch_size, self.eval_source.image_shape, tta=tta)
        return ds

    def skipped(self) -> int:
        """Corrupt samples replaced so far, counted by the group's reader only (0 elsewhere).

        Summed over all ranks it counts every replaced sample once.
        """
        return sum(loader.skipped for loader in self.loaders) if self.topology.is_reader else 0

    def describe(self, epochs: int) -> str:
        return (f"{self.train_source.name} train {len(self.train_source)} / eval {len(self.eval_source)} samples, "
                f"{self.steps_per_epoch} steps per epoch x {epochs} epochs, augment '{self.spec.augment}', "
                f"broadcast '{self.spec.broadcast}', copies made on the {self.spec.copies_on}, "
                f"input {self.input_shape}")


def _open(cfg, split: str) -> Source:
    src = get_source(cfg.input.dataset, split=split, **cfg.input.source_kwargs)
    src.check()  # e.g. the label base: seconds now instead of a crash at the first evaluation
    return src


def _train_source(cfg, topo) -> tuple[Source, np.ndarray]:
    """The training source and a first loadable sample; only the group's reader opens files when it can.

    With ``broadcast='decoded'`` the other ranks of a group receive every
    sample from the reader, so they get a :class:`RemoteSource` from it
    instead: length (for the sampler), classes and a sample (for the model).
    The reader's verdict on the data (a DataSourceError, e.g. a label-base
    mismatch) reaches its whole group, so every rank exits 2 alike.
    """
    if topo.m_ranks == 1 or cfg.input.broadcast != "decoded":
        src = _open(cfg, cfg.input.train_split)
        return src, first_loadable(src)
    channel = dist.group_channel()
    if topo.is_reader:
        try:
            src = _open(cfg, cfg.input.train_split)
            sample = first_loadable(src)
        except Exception as e:
            channel.bcast_object((e if isinstance(e, DataSourceError) else RuntimeError(f"reader: {e!r}"), None))
            raise
        channel.bcast_object((RemoteSource.of(src, topo.rank), sample))
        return src, sample
    remote, sample = channel.bcast_object()
    if isinstance(remote, Exception):
        raise remote
    return remote, sample


def build(cfg, lay, ctx) -> TrainerData:
    """Sources, sampler and pipeline settings for a ``ba-train`` run.

    Args:
      cfg: the run's config (``cfg.input``, ``cfg.seed``).
      lay: the batch layout (:func:`ba_dist.config.layout`).
      ctx: the distribution context (topology and the group communicator).

    Raises:
      DataSourceError: a dataset that is missing, empty or unloadable, or that
      fails its start-up check (:meth:`Source.check`).
    """
    topo = ctx.topology
    train_src, sample = _train_source(cfg, topo)
    eval_src = _open(cfg, cfg.input.eval_split)  # every rank evaluates its own shard of it
    spec = make_spec(cfg, lay, train_src)
    if train_src.image_shape is None:
        # e.g. a folder of 40x40 images: one 1x1 JPEG among them must be skipped (or named), not crash the batch
        spec = dataclasses.replace(spec, image_shape=fixed_size(spec.augment, train_src, sample))
    sampler = GroupSampler(len(train_src), topo.num_groups, lay.per_rank_unique, seed=cfg.seed)
    return TrainerData(train_src, eval_src, spec, sampler, sampler.steps_per_epoch,
                       output_shape(spec.augment, sample), train_src.num_classes, cfg.input.eval_batch_size,
                       topo)
