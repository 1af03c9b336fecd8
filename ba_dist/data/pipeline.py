"""The Batch Augmentation input pipeline (paper section 4.5 and appendix D).

One training step on one rank, with ``b`` unique samples per rank::

    GroupSampler  -> b ids, identical on every rank of the group
    reader rank   -> read (+ decode) the b samples once for the whole group
    broadcast     -> the other m_ranks-1 ranks of the group get them
    every rank    -> m_local augmentations per sample, own seeds per rank/copy
    copy-major    -> [copy 0 of b images, copy 1 of b images, ...]
    (mixup)       -> optional, after the copies exist

so each rank's batch is ``m_local x b`` examples and the global batch is
``N ranks x m_local x b = B unique x M copies`` with ``B = groups x b`` and
``M = m_ranks x m_local``. Copy-major layout means any ``G <= b`` consecutive
examples are G distinct images, which is what ghost batch norm must normalise.

Augmentation seeds are ``(seed, epoch, global rank, sample id, copy)``: copies
differ across ranks and within a rank, and a rerun reproduces them exactly.

Reading runs in a background thread ``prefetch`` steps ahead of training, so
the broadcast overlaps compute; tf.data then augments in parallel.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import weakref
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from ba_dist.data import augment as aug
from ba_dist.data import broadcast
from ba_dist.data.sampler import GroupSampler, eval_shard
from ba_dist.data.sources import CorruptSampleError, Source

__all__ = [
    "DataError",
    "PipelineSpec",
    "copy_seeds",
    "augment_seeds",
    "batch_augment",
    "GroupLoader",
    "make_train_dataset",
    "ba_batches",
    "loader_elements",
    "make_eval_dataset",
    "output_shape",
    "BROADCAST_MODES",
]

log = logging.getLogger(__name__)
BROADCAST_MODES = ("decoded", "encoded", "none")


class DataError(RuntimeError):
    """Training data cannot be produced (corrupt sample under on_corrupt='error', ...)."""


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """How to build a rank's BA batches.

    Attributes:
      per_rank_unique: unique samples per rank per step (``b``).
      m_local: augmented copies of each sample made on this rank.
      augment: training augmentation (name for ``augment.get_augment``).
      eval_transform: deterministic evaluation transform name.
      broadcast: "decoded" | "encoded" | "none" (who reads and what is sent).
      on_corrupt: "skip" (substitute and count) | "error" (stop, naming the file).
      mixup_alpha: 0 disables mixup.
      mean, std: per-channel normalisation in 0..255 units (None: divide by 255).
      prefetch: steps the reader thread runs ahead.
      read_threads: parallel reads/decodes on the reader.
      seed: base seed of the job.
    """

    per_rank_unique: int
    m_local: int = 1
    augment: str = "none"
    eval_transform: str = "none"
    broadcast: str = "decoded"
    on_corrupt: str = "skip"
    mixup_alpha: float = 0.0
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    prefetch: int = 4
    read_threads: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.broadcast not in BROADCAST_MODES:
            raise ValueError(f"broadcast must be one of {BROADCAST_MODES}, got {self.broadcast!r}")
        if self.on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {self.on_corrupt!r}")
        if self.m_local < 1 or self.per_rank_unique < 1:
            raise ValueError(f"m_local and per_rank_unique must be >= 1, got {self.m_local}, {self.per_rank_unique}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")


def copy_seeds(seed, epoch, rank, sample_id, m_local: int) -> tf.Tensor:
    """``int64 [m_local, 2]`` stateless seeds of one sample's copies on one rank.

    Folds in (base seed, epoch, global rank, sample id, copy) in that order.
    """
    s = tf.cast(tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]), tf.int64)
    for part in (epoch, rank, sample_id):
        s = tf.random.experimental.stateless_fold_in(s, tf.cast(part, tf.int64))
    return tf.cast(tf.stack([tf.random.experimental.stateless_fold_in(s, c) for c in range(m_local)]), tf.int64)


def augment_seeds(seed, epoch, rank, ids, m_local: int) -> tf.Tensor:
    """``int64 [len(ids), m_local, 2]``: :func:`copy_seeds` for every sample of a batch."""
    return tf.map_fn(lambda i: copy_seeds(seed, epoch, rank, i, m_local), tf.cast(ids, tf.int64),
                     fn_output_signature=tf.TensorSpec([m_local, 2], tf.int64))


def batch_augment(images, labels, seeds, augment_fn: Callable, m_local: int):
    """BA as a pure function: ``b`` images -> ``m_local * b`` augmented examples, copy-major.

    Args:
      images: ``[b, H, W, C]`` images (one fixed size; see the tf.data path for ragged input).
      labels: ``[b]`` or ``[b, K]``.
      seeds: ``[b, m_local, 2]`` stateless seeds (:func:`augment_seeds`).
      augment_fn: ``fn(image, seed) -> image``.
      m_local: copies per image.

    Returns:
      ``(images [m_local*b, H', W', C], labels [m_local*b, ...])`` where row
      ``c*b + i`` is copy ``c`` of image ``i``.
    """
    per_copy = []
    for c in range(m_local):
        per_copy.append(tf.map_fn(lambda a: augment_fn(a[0], a[1]), (tf.cast(images, tf.float32), seeds[:, c]),
                                  fn_output_signature=tf.float32))
    return tf.concat(per_copy, 0), tf.concat([labels] * m_local, 0)


class GroupLoader:
    """Background producer of one group's unique samples, step by step.

    The reader rank (or every rank when ``broadcast='none'``) reads the ids
    the sampler gives, decodes them in a thread pool and broadcasts to the
    group. A corrupt sample is replaced by the next good sample of the same
    step (the same rule on every rank, so the group stays in lockstep) and
    counted in :attr:`skipped`, or stops the run when ``on_corrupt='error'``.

    Yields ``(epoch, step, ids, labels, images)`` for ``num_steps`` steps
    starting at ``(start_epoch, start_step)``.
    """

    def __init__(self, source: Source, sampler: GroupSampler, spec: PipelineSpec, topology,
                 group_comm=None, start_epoch: int = 0, start_step: int = 0, num_steps: Optional[int] = None):
        self.source, self.sampler, self.spec, self.topo = source, sampler, spec, topology
        # A private duplicate of the group communicator: broadcasts of this
        # loader can never match those of another loader (e.g. one abandoned
        # mid-epoch) that is still running in the background.
        self.comm = group_comm.Dup() if topology.m_ranks > 1 else None
        self.start_epoch, self.start_step = start_epoch, start_step
        self.num_steps = num_steps
        self.skipped = 0
        self.skipped_where: list[str] = []
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, spec.prefetch))
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, spec.read_threads), "ba-read")
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:
            # registered after mpi4py's own exit hook, so it runs before MPI_Finalize
            atexit.register(_stop_live_loaders)
            _ATEXIT_REGISTERED = True
        _LIVE_LOADERS.add(self)

    # -- reading ------------------------------------------------------------
    def _read(self, i: int):
        try:
            return self.source.read(int(i))
        except CorruptSampleError as e:
            return e

    def _decode(self, payload, i: int):
        if isinstance(payload, Exception) or payload is None:
            return payload if payload is not None else CorruptSampleError(self.source.describe(int(i)), "unreadable")
        try:
            img = self.source.decode(payload, int(i))
        except CorruptSampleError as e:
            return e
        if img.ndim == 2:
            img = img[..., None]
        return img

    def _substitute(self, ids, labels, items, epoch, step):
        """Replace failed items by the next good one of the step; identical on every rank."""
        bad = [k for k, it in enumerate(items) if isinstance(it, Exception) or it is None]
        if not bad:
            return ids, labels, items
        where = [self.source.describe(int(ids[k])) + (f" ({items[k].reason})" if isinstance(items[k], CorruptSampleError) else "")
                 for k in bad]
        if self.spec.on_corrupt == "error":
            raise DataError(f"corrupt sample(s) at epoch {epoch} step {step}: {'; '.join(where)} "
                            f"(set input.on_corrupt='skip' to skip and count them)")
        good = [k for k in range(len(items)) if k not in set(bad)]
        if not good:
            raise DataError(f"every sample of epoch {epoch} step {step} is corrupt: {'; '.join(where)}")
        ids, labels, items = ids.copy(), labels.copy(), list(items)
        for k in bad:
            src = min(good, key=lambda g: (g - k) % len(items))  # next good one, cyclically
            ids[k], labels[k], items[k] = ids[src], labels[src], items[src]
        self.skipped += len(bad)
        self.skipped_where.extend(where)
        if self.topo.is_chief:
            log.warning("skipped %d corrupt sample(s) at epoch %d step %d: %s", len(bad), epoch, step, "; ".join(where))
        return ids, labels, items

    def _label(self, i):
        # A source that reads the label from the record (TFRecord, tfds) can
        # fail here: that sample is corrupt like one that does not decode.
        try:
            return self.source.label(int(i))
        except CorruptSampleError as e:
            return e

    def _produce_step(self, epoch: int, step: int, ids: np.ndarray):
        """Read (and on the reader: broadcast) one step. Returns (ids, labels, items)."""
        mode = self.spec.broadcast if self.comm is not None else "none"
        count = len(ids)
        if mode == "none" or self.topo.is_reader:
            payloads = list(self._pool.map(self._read, ids))
        if mode == "encoded":
            if self.topo.is_reader:
                payloads = [None if isinstance(p, Exception) else p for p in payloads]
                broadcast.bcast_encoded(self.comm, count, ids, payloads)
            else:
                ids, payloads = broadcast.bcast_encoded(self.comm, count)
        if mode in ("none", "encoded") or self.topo.is_reader:
            items = list(self._pool.map(self._decode, payloads, ids))
            # Labels after decoding: a source that keeps the label inside the
            # record (TFRecord) has parsed it by now, so this reads nothing again.
            got = [it if isinstance(it, Exception) else self._label(i) for i, it in zip(ids, items)]
            labels = np.array([-1 if isinstance(y, Exception) else y for y in got], np.int64)
            items = [y if isinstance(y, Exception) else it for y, it in zip(got, items)]
        if mode == "decoded":
            if self.topo.is_reader:
                before = self.skipped
                try:
                    ids, labels, items = self._substitute(ids, labels, items, epoch, step)
                except DataError as e:
                    broadcast.bcast_error(self.comm, count, str(e))
                    raise
                broadcast.bcast_decoded(self.comm, count, ids, labels, items, self.skipped - before)
            else:
                try:
                    ids, labels, items, substituted = broadcast.bcast_decoded(self.comm, count)
                except broadcast.GroupBroadcastError as e:
                    raise DataError(f"reader rank {self.topo.reader_rank} of group {self.topo.group_id}: {e}") from None
                self.skipped += substituted  # every rank of the group reports the same count
            return ids, labels, items
        return self._substitute(ids, labels, items, epoch, step)

    def _positions(self):
        """(epoch, step, ids) of every step this loader produces, in order."""
        epoch, step, produced = self.start_epoch, self.start_step, 0
        while self.num_steps is None or produced < self.num_steps:
            ids_epoch = self.sampler.epoch_ids(epoch, self.topo.group_id)
            while step < len(ids_epoch) and (self.num_steps is None or produced < self.num_steps):
                yield epoch, step, ids_epoch[step]
                step += 1
                produced += 1
            epoch, step = epoch + 1, 0

    def _put(self, item) -> None:
        # After stop() nobody consumes: keep taking part in the group's
        # broadcasts (so the reader is never left inside one) but drop the data.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self):
        broadcasting = self.comm is not None and self.spec.broadcast != "none"
        try:
            for epoch, step, ids in self._positions():
                if self._stop.is_set() and (self.topo.is_reader or not broadcasting):
                    break
                ids, labels, items = self._produce_step(epoch, step, ids)
                self._put((epoch, step, ids, labels, items))
            if broadcasting and self.topo.is_reader:
                broadcast.bcast_end(self.comm, self.spec.per_rank_unique)
            elif broadcasting:
                broadcast.recv_end(self.comm, self.spec.per_rank_unique)
            self._put(None)
        except broadcast.GroupEnd:
            self._put(None)  # the reader stopped (stop() was called on every rank)
        except BaseException as e:  # delivered to the consumer, which raises it in the main thread
            self._put(e)

    def __iter__(self) -> Iterator:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ba-group-loader", daemon=True)
            self._thread.start()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                # after stop() the producer drops its items: a consumer still
                # waiting (e.g. tf.data prefetching ahead) must end, not block
                if self._stop.is_set() and not self._thread.is_alive():
                    return
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop producing at a step boundary; call on every rank of the group.

        The reader sends an end marker; the other ranks keep receiving (and
        dropping) until they get it, so no rank is left inside a broadcast.
        Returns True if the background thread finished within ``timeout``.
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()


def output_shape(augment: str, example: np.ndarray) -> tuple:
    """Shape of one augmented example (what the model's input layer must accept)."""
    out = aug.get_augment(augment)(tf.constant(example), tf.zeros([2], tf.int64))
    return tuple(int(d) for d in out.shape)


_LIVE_LOADERS: "weakref.WeakSet[GroupLoader]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _stop_live_loaders() -> None:
    # A loader thread still polling its queue while the interpreter shuts
    # down can crash the process (exit by SIGSEGV instead of the real code).
    for loader in list(_LIVE_LOADERS):
        loader.stop(timeout=5)


def _normalize(x, spec: PipelineSpec):
    if spec.mean is None:
        return x / 255.0
    return aug.normalize(x, spec.mean, spec.std)


def make_train_dataset(loader: GroupLoader, spec: PipelineSpec, topology, num_classes: int,
                       image_shape: Optional[tuple] = None) -> tf.data.Dataset:
    """tf.data dataset of this rank's BA batches ``(images [m_local*b, ...], onehot labels)``.

    Elements follow the loader's steps one to one, so ``steps_per_epoch``
    batches make one epoch on every rank.
    """
    return ba_batches(loader_elements(loader, spec.per_rank_unique, image_shape),
                      aug.get_augment(spec.augment), spec, topology.rank, num_classes)


def loader_elements(loader: GroupLoader, per_rank_unique: int,
                    image_shape: Optional[tuple] = None) -> tf.data.Dataset:
    """A loader's steps as tf.data elements ``(image, label, id, epoch, step)``, one per unique sample."""
    if image_shape is not None:
        # Fixed-size images cross from Python to tf.data one step at a time
        # (b images per call): the per-element cost of from_generator would
        # otherwise be paid b times per step, under the GIL, beside training.
        b = per_rank_unique

        def per_step():
            for epoch, step, ids, labels, items in loader:
                yield np.stack(items), labels, ids, np.full(b, epoch), np.full(b, step)

        vec = tf.TensorSpec([b], tf.int64)
        sig = (tf.TensorSpec((b,) + tuple(image_shape), tf.uint8), vec, vec, vec, vec)
        return tf.data.Dataset.from_generator(per_step, output_signature=sig).unbatch()

    def per_image():  # images of different sizes (e.g. ImageNet JPEGs): one element per image
        for epoch, step, ids, labels, items in loader:
            for i, label, img in zip(ids, labels, items):
                yield img, label, i, epoch, step

    scalar = tf.TensorSpec([], tf.int64)
    sig = (tf.TensorSpec([None, None, None], tf.uint8), scalar, scalar, scalar, scalar)
    return tf.data.Dataset.from_generator(per_image, output_signature=sig)


def ba_batches(elements: tf.data.Dataset, augment_fn: Callable, spec: PipelineSpec, rank: int,
               num_classes: int, with_ids: bool = False) -> tf.data.Dataset:
    """The BA batching shared by ba-train and the public Keras API.

    Args:
      elements: unique samples in training order, ``(image, label, id, epoch,
        step)``; every ``per_rank_unique`` consecutive elements form one step.
      augment_fn: ``fn(image, seed) -> image``.
      spec: copies (``m_local``), normalisation, mixup and the base seed.
      rank: global rank (part of every augmentation seed).
      num_classes: for one-hot labels.
      with_ids: also yield the ``[m_local*b]`` sample ids (for audits and tests).

    Returns:
      Batches ``(images [m_local*b, ...], onehot [m_local*b, K])`` in copy-major
      order: row ``c*b + i`` is copy ``c`` of unique sample ``i``.
    """
    b, m = spec.per_rank_unique, spec.m_local

    def copies(img, label, i, epoch, step):
        seeds = copy_seeds(spec.seed, epoch, rank, i, m)
        x = tf.stack([augment_fn(img, seeds[c]) for c in range(m)])
        return _normalize(x, spec), label, i, epoch, step

    ds = elements.map(copies, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b, drop_remainder=True)

    def copy_major(x, label, ids, epoch, step):
        # [b, m, H, W, C] -> [m, b, H, W, C] -> [m*b, H, W, C]
        x = tf.reshape(tf.transpose(x, [1, 0, 2, 3, 4]), tf.concat([[m * b], tf.shape(x)[2:]], 0))
        y = tf.one_hot(tf.tile(label, [m]), num_classes)
        if spec.mixup_alpha > 0:
            seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(spec.seed, tf.int64), 1]),
                                                         epoch[0] * 1_000_003 + step[0]), rank)
            x, y = aug.mixup_batch(x, y, spec.mixup_alpha, seed)
        return (x, y, tf.tile(ids, [m])) if with_ids else (x, y)

    ds = ds.map(copy_major, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


# Test-time augmentation seeds use this in place of the epoch: training epochs
# are >= 0, so a TTA copy never repeats a training copy's transform.
TTA_EPOCH = -1


def make_eval_dataset(source: Source, spec: PipelineSpec, rank: int, world_size: int, batch_size: int,
                      image_shape: Optional[tuple] = None, tta: int = 0) -> tuple[tf.data.Dataset, int]:
    """This rank's shard of the evaluation split: ``(images, labels, weights)`` batches.

    Every rank gets the same number of batches; padding has weight 0 so
    ``sum(correct * w)`` and ``sum(w)`` reduced over ranks count each sample once.
    Returns the dataset and its number of batches.

    With ``tta = N > 0`` (test-time augmentation, paper Table 5) images are
    ``[batch, N, H, W, C]``: N copies of each sample under the *training*
    augmentation, seeded by (seed, TTA_EPOCH, sample id, copy). The rank is
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
            seeds = copy_seeds(spec.seed, TTA_EPOCH, 0, i, tta)
            return _normalize(tf.stack([augment_fn(x, seeds[c]) for c in range(tta)]), spec), y, w
    else:
        transform = aug.get_augment(spec.eval_transform)
        zero_seed = tf.zeros([2], tf.int64)

        def prepare(x, y, w, i):
            return _normalize(transform(x, zero_seed), spec), y, w
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    n_batches = -(-len(ids) // batch_size)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), n_batches


def _load_checked(source: Source, i: int) -> np.ndarray:
    try:
        img = source.load(i)
    except CorruptSampleError as e:
        raise DataError(f"evaluation sample {e}") from None
    return img[..., None] if img.ndim == 2 else img
