"""The group loader: one BA group's unique samples, read once and broadcast, step by step.

One training step on one rank, with ``b`` unique samples per rank::

    GroupSampler  -> b ids, identical on every rank of the group
    reader rank   -> read (+ decode) the b samples once for the whole group
    broadcast     -> the other m_ranks-1 ranks of the group get them

Reading runs in a background thread ``prefetch`` steps ahead of training, so
the broadcast overlaps compute. With ``broadcast='decoded'`` the read threads
decode each image straight into the step's broadcast payload, and the reader
sends a step (one Bcast) once the next one is decoded: it holds one decoded
step more than ``prefetch`` (see :mod:`ba_dist.data.broadcast`). The copies are made afterwards, on every rank,
by :mod:`ba_dist.data.batching`.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
import weakref
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from ba_dist import audit, dist
from ba_dist.data import broadcast
from ba_dist.data.sampler import GroupSampler
from ba_dist.data.sources import CorruptSampleError, Source

__all__ = ["DataError", "PipelineSpec", "GroupLoader", "loader_elements", "check_size", "BROADCAST_MODES"]

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
      image_shape: when set, the decoded shape every training sample must have
        (the augmentation keeps the input size); another size is a corrupt sample.
      copies_on: "host" (tf.data makes the BA batches) | "device" (tf.data yields
        the unique batch, the train step makes the copies where the model runs).
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
    image_shape: Optional[tuple] = None
    copies_on: str = "host"

    def __post_init__(self):
        if self.copies_on not in ("host", "device"):
            raise ValueError(f"copies_on must be 'host' or 'device', got {self.copies_on!r}")
        if self.broadcast not in BROADCAST_MODES:
            raise ValueError(f"broadcast must be one of {BROADCAST_MODES}, got {self.broadcast!r}")
        if self.on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {self.on_corrupt!r}")
        if self.m_local < 1 or self.per_rank_unique < 1:
            raise ValueError(f"m_local and per_rank_unique must be >= 1, got {self.m_local}, {self.per_rank_unique}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")


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
                 start_epoch: int = 0, start_step: int = 0, num_steps: Optional[int] = None):
        self.source, self.sampler, self.spec, self.topo = source, sampler, spec, topology
        # A private channel (collective over the group: every rank of the group
        # creates its loader at the same point): broadcasts of this loader can
        # never match those of another loader (e.g. one abandoned mid-epoch)
        # that is still running in the background.
        self.channel = dist.group_channel() if topology.m_ranks > 1 else None
        self._mode = spec.broadcast if self.channel is not None else "none"
        # Step buffers a decoded stream keeps per rank: the queued steps plus the one
        # being filled and the one the sender holds (reader) or the consumer has (others).
        in_flight = broadcast.steps_in_flight(spec.prefetch)
        self._receiver = (broadcast.DecodedReceiver(self.channel, spec.per_rank_unique, keep=in_flight)
                          if self._mode == "decoded" and not topology.is_reader else None)
        self.start_epoch, self.start_step = start_epoch, start_step
        self.num_steps = num_steps
        self.skipped = 0
        # bytes to reserve for a step's decoded broadcast payload (grows with the largest step)
        shape = spec.image_shape
        self._payload_capacity = spec.per_rank_unique * int(np.prod(shape)) if shape is not None else 0
        self._payloads = broadcast.BufferPool(in_flight)  # reader: buffers of steps already sent, reused
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
        try:
            check_size(img, self.spec.image_shape, self.source.describe(int(i)), self.spec.augment)
        except CorruptSampleError as e:
            return e
        return img

    def _substitute(self, ids, items, epoch, step) -> list[int]:
        """For each slot, the slot whose image it carries: itself, or for a failed item
        the next good one of the step; identical on every rank.

        The slot keeps its own sampler id (only the image and label are the
        substitute's): the id keys the augmentation draws (``ba.copy_draws``), so
        the substitute's copies get draws of their own instead of repeating, copy
        for copy, those of the sample it duplicates. The step's ids are therefore
        the sampler's ids, a corrupt sample's included.
        """
        bad = [k for k, it in enumerate(items) if isinstance(it, Exception) or it is None]
        source = list(range(len(items)))
        if not bad:
            return source
        where = [self.source.describe(int(ids[k])) + (f" ({items[k].reason})" if isinstance(items[k], CorruptSampleError) else "")
                 for k in bad]
        if self.spec.on_corrupt == "error":
            raise DataError(f"corrupt sample(s) at epoch {epoch} step {step}: {'; '.join(where)} "
                            f"(set input.on_corrupt='skip' to skip and count them)")
        good = [k for k in range(len(items)) if k not in set(bad)]
        if not good:
            raise DataError(f"every sample of epoch {epoch} step {step} is corrupt: {'; '.join(where)}")
        for k in bad:
            source[k] = min(good, key=lambda g: (g - k) % len(items))  # next good one, cyclically
        self.skipped += len(bad)
        if self.topo.is_chief:
            log.warning("skipped %d corrupt sample(s) at epoch %d step %d: %s", len(bad), epoch, step, "; ".join(where))
        return source

    def _label(self, i):
        # A source that reads the label from the record (TFRecord, tfds) can
        # fail here: that sample is corrupt like one that does not decode.
        try:
            return self.source.label(int(i))
        except CorruptSampleError as e:
            return e

    def _decode_into(self, payload: broadcast.DecodedPayload, k: int, raw, i: int):
        """Decode sample ``i`` straight into slot ``k`` of the step's broadcast payload.

        Runs in a read thread: the one copy of the pixels (decoder output ->
        payload) is made here, beside the other decodes, not at the send.
        Returns True, or the sample's error.
        """
        img = self._decode(raw, i)
        if isinstance(img, Exception):
            return img
        payload.put(k, img)
        return True

    def _labels(self, ids, items):
        # After decoding: a source that keeps the label inside the record
        # (TFRecord) has parsed it by now, so this reads nothing again. A label
        # that fails makes its sample a failed item.
        got = [it if isinstance(it, Exception) else self._label(i) for i, it in zip(ids, items)]
        labels = np.array([-1 if isinstance(y, Exception) else y for y in got], np.int64)
        return labels, [y if isinstance(y, Exception) else it for y, it in zip(got, items)]

    def _produce_step(self, epoch: int, step: int, ids: np.ndarray):
        """Read (and for 'encoded': broadcast) one step. Returns (ids, labels, items).

        Not used by the reader of a 'decoded' group (:meth:`_run_decoded_reader`).
        """
        mode = self._mode
        count = len(ids)
        if mode == "decoded":
            try:
                ids, labels, items, substituted = self._receiver.recv()
            except broadcast.GroupBroadcastError as e:
                raise DataError(f"reader rank {self.topo.reader_rank} of group {self.topo.group_id}: {e}") from None
            self.skipped += substituted  # every rank of the group reports the same count
            return ids, labels, items
        if mode == "none" or self.topo.is_reader:
            payloads = list(self._pool.map(self._read, ids))
        if mode == "encoded":
            if self.topo.is_reader:
                payloads = [None if isinstance(p, Exception) else p for p in payloads]
                broadcast.bcast_encoded(self.channel, count, ids, payloads)
            else:
                ids, payloads = broadcast.bcast_encoded(self.channel, count)
        labels, items = self._labels(ids, list(self._pool.map(self._decode, payloads, ids)))
        source = self._substitute(ids, items, epoch, step)
        return ids, labels[source], [items[s] for s in source]

    def _prepare_decoded(self, epoch: int, step: int, ids: np.ndarray):
        """Reader, broadcast='decoded': one step decoded into its broadcast payload.

        Returns ``(ids, labels, payload, substituted)``.
        """
        count, before = len(ids), self.skipped
        payloads = list(self._pool.map(self._read, ids))
        payload = broadcast.DecodedPayload(count, self._payload_capacity, pool=self._payloads)
        done = list(self._pool.map(self._decode_into, itertools.repeat(payload), range(count), payloads, ids))
        # (a sample whose label fails after its pixels were put leaves them in the
        # payload unreferenced: sent, never viewed)
        labels, done = self._labels(ids, done)
        source = self._substitute(ids, done, epoch, step)
        for k, s in enumerate(source):
            if s != k:
                payload.alias(k, s)
        if self.spec.image_shape is None:
            # Room for the next steps: the largest step so far, with headroom for
            # larger images (bytes reserved but never written cost no memory).
            self._payload_capacity = max(self._payload_capacity, payload.nbytes * 5 // 4)
        return ids, labels[source], payload, self.skipped - before

    def _run_decoded_reader(self) -> None:
        """The reader's loop for broadcast='decoded': a step is sent once the next one is decoded.

        (Its header announces the next message, so each step is one Bcast.) The
        reader's own copy of a step is queued once the step is sent.
        """
        sender = broadcast.DecodedSender(self.channel, self.spec.per_rank_unique)
        held = None  # the step pushed to the sender, not sent yet
        for epoch, step, ids in self._positions():
            if self._stop.is_set():
                break
            try:
                ids, labels, payload, substituted = self._prepare_decoded(epoch, step, ids)
            except Exception as e:  # the group waits for this step: tell it why there is none
                sender.push_error(str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}")
                sender.close()
                if held is not None:
                    self._put(held)
                raise
            images = sender.push_step(ids, labels, payload, substituted)
            if held is not None:
                self._put(held)
            held = (epoch, step, ids, labels, images)
        sender.close()
        if held is not None:
            self._put(held)

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
        mode, reader = self._mode, self.topo.is_reader
        try:
            if mode == "decoded" and reader:
                self._run_decoded_reader()
            else:
                for epoch, step, ids in self._positions():
                    if self._stop.is_set() and (reader or mode == "none"):
                        break
                    ids, labels, items = self._produce_step(epoch, step, ids)
                    self._put((epoch, step, ids, labels, items))
                if mode == "encoded" and reader:
                    broadcast.bcast_end(self.channel, self.spec.per_rank_unique)
                elif mode == "encoded":
                    broadcast.recv_end(self.channel, self.spec.per_rank_unique)
                elif mode == "decoded":
                    self._receiver.recv_end()
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
            audit.record_step(self.topo, item[0], item[1], item[2])  # BA_AUDIT_DIR only (rehearsals)
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


def check_size(img: np.ndarray, shape: Optional[tuple], where: str, transform: str) -> None:
    """CorruptSampleError if ``img`` does not have the ``shape`` a fixed-size pipeline batches."""
    if shape is not None and tuple(img.shape) != tuple(shape):
        size = "x".join(map(str, img.shape))
        raise CorruptSampleError(where, f"size {size} differs from the {'x'.join(map(str, shape))} of the other "
                                        f"images, and '{transform}' keeps the input size, so it cannot be batched "
                                        "(remove or resize the file, or use a transform that resizes)")


_LIVE_LOADERS: "weakref.WeakSet[GroupLoader]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _stop_live_loaders() -> None:
    # A loader thread still polling its queue while the interpreter shuts
    # down can crash the process (exit by SIGSEGV instead of the real code).
    loaders = list(_LIVE_LOADERS)
    for loader in loaders:
        loader.stop(timeout=5)
    if loaders:
        _release_iterators()


def _release_iterators() -> None:
    """Destroy the tf.data iterators still alive (e.g. ``it = iter(ds)`` in a custom loop).

    Left to module teardown, an iterator's destructor waits for its prefetch
    threads, one of which may be calling the loader's Python generator; during
    interpreter finalisation that thread can never take the GIL, so the rank
    hangs forever. From an atexit hook (before finalisation) the threads still
    run and the destructor returns.
    """
    import gc
    from tensorflow.python.data.ops.iterator_ops import OwnedIterator
    for obj in gc.get_objects():
        if isinstance(obj, OwnedIterator) and getattr(obj, "_iterator_resource", None) is not None:
            obj._iterator_resource = None


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
