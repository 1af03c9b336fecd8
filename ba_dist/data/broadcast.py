"""Moving one step's unique samples from a group's reader to the other ranks.

Two wire formats over the group's channel (``ba_dist.dist.group_channel()``, reader = root):

* ``decoded``: pixels of variable-size ``uint8 HxWxC`` images
  (:class:`DecodedSender` on the reader, :class:`DecodedReceiver` elsewhere);
* ``encoded``: the files' bytes, decoded by every rank itself (:func:`bcast_encoded`).

Everything travels in ``Bcast`` calls on flat numpy buffers (no pickling). In
``decoded`` a status other than OK carries an error message instead of samples,
so a reader that hits a fatal error takes the group down with a message instead
of leaving the other ranks waiting (in ``encoded`` every rank decodes, so a bad
sample fails, or is substituted, on every rank alike).

``encoded``: two ``Bcast`` per step, a fixed-size int64 header (status,
per-sample id and length) and one contiguous blob; the end is a header of its own.

``decoded``: one ``Bcast`` per step. A message is the step's int64 header
followed by its pixels, in one buffer; its header also announces the status and
size of the next message, so the receivers know what to receive without a
second collective (the first message is announced by a 16-byte ``Bcast`` when
the stream opens; the end of the stream is announced, not sent). The reader
therefore sends a step once the next one is decoded. On a loaded machine every
collective costs milliseconds of scheduling, as much as the 8.6 MiB of a step
(docs/performance.md), which is why the header does not get one of its own.

Copies of the decoded pixels. The reader's decoder (``tf.io.decode_image``)
writes into a buffer of its own, and nothing in our stack decodes into a buffer
the caller gives, so every byte is copied once on the reader: each read thread
copies the image it has just decoded into the step's :class:`DecodedPayload`,
at its offset, beside the decoding of the other images. That copy is moved off
the send, not removed: the send is one ``Bcast`` of the buffer as the threads
left it, with no packing pass, and each receiver's images are views into the
buffer MPI wrote. A substituted corrupt sample points at its substitute's bytes
(nothing is copied or sent twice). When a step needs more room than the payload
was given, the payload grows and the bytes already in it are copied once more
(the loader sizes the next payloads from the largest step so far, so this is
rare after the first step). Both ends take their step buffers from a
:class:`BufferPool`: huge-page backed where the kernel allows, and reused from
step to step, so a step's bytes go out of and into buffers already mapped by
earlier steps (at 2 ranks this decided whether the send ran at raw ``Bcast``
speed: docs/performance.md).
"""
from __future__ import annotations

import mmap
import sys
import threading
from typing import Optional, Sequence

import numpy as np

__all__ = ["BufferPool", "DecodedPayload", "DecodedReceiver", "DecodedSender", "GroupBroadcastError", "GroupEnd",
           "bcast_encoded", "bcast_end", "recv_end", "steps_in_flight"]

_OK, _ERROR, _END = 0, 1, 2
# header = [status, count, payload_bytes, substituted, next_status, next_bytes,
#           then per sample: id, label, offset, d0, d1, d2]
# (decoded: offset into the message; encoded: per sample id, -, length; next_* unused)
_PER_SAMPLE = 6
_FIXED = 6


class GroupBroadcastError(RuntimeError):
    """The group's reader reported a fatal error; the message is the reader's."""


class GroupEnd(Exception):
    """The group's reader has no more steps (end of data or stop)."""


class DecodedPayload:
    """One step's decoded images, written into the buffer the reader broadcasts.

    The buffer is the whole message: room for the step's header, then the
    pixels. The reader's read threads :meth:`put` each image as soon as it is
    decoded (thread-safe; images land in the order they finish, each at an
    offset of its own); a corrupt slot is then pointed at its substitute with
    :meth:`alias`. :class:`DecodedSender` writes the header in place and sends
    the buffer as it is; :meth:`images` gives the reader the same pixels as
    views into it.

    Args:
      count: images (slots) of the step.
      capacity: bytes of pixels to reserve; the buffer grows when a step needs more.
      pool: where the buffer comes from (the reader's :class:`BufferPool`, so
        steps reuse the buffers of steps already sent); a new one when omitted.
    """

    def __init__(self, count: int, capacity: int = 0, pool: Optional[BufferPool] = None):
        self.count = count
        self._start = 8 * _header_size(count)  # pixels follow the header
        self._new = pool.get if pool is not None else (lambda n: np.empty(n, np.uint8))
        self._buf = self._new(self._start + max(0, int(capacity)))
        self._used = 0
        self._offsets = np.full(count, -1, np.int64)
        self._shapes = np.zeros((count, 3), np.int64)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of pixels in the payload."""
        return self._used

    @property
    def pixels(self) -> np.ndarray:
        """The pixel bytes, packed in the order they were put (a view, no copy)."""
        return self._buf[self._start:self._start + self._used]

    @property
    def message(self) -> np.ndarray:
        """Header room + pixels: the bytes broadcast (a view, no copy)."""
        return self._buf[:self._start + self._used]

    def put(self, k: int, image: np.ndarray) -> None:
        """Copy the decoded ``HxWxC`` uint8 ``image`` of slot ``k`` into the payload."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"slot {k}: expected a uint8 HxWxC image, got {image.dtype} {image.shape}")
        n = image.nbytes
        # The copy is made under the lock: a concurrent grow would otherwise move
        # the buffer under a copy in flight. It is short next to the decode
        # (~0.1 ms per 375x500 image against ~2 ms), so the threads rarely wait.
        with self._lock:
            at = self._start + self._used
            if at + n > self._buf.size:
                self._grow(at + n, n)
            self._buf[at:at + n].reshape(image.shape)[...] = image
            self._offsets[k], self._shapes[k] = at, image.shape
            self._used += n

    def _grow(self, need: int, n: int) -> None:
        # the first image of a payload given no room sizes it for the whole step
        first = self._start + self.count * n * 5 // 4 if self._used == 0 else 0
        bigger = self._new(max(need, 2 * self._buf.size, first))
        bigger[:self._start + self._used] = self._buf[:self._start + self._used]
        self._buf = bigger

    def alias(self, k: int, src: int) -> None:
        """Slot ``k`` carries slot ``src``'s pixels (a substituted corrupt sample): no bytes move."""
        if self._offsets[src] < 0:
            raise ValueError(f"slot {src} holds no image to stand in for slot {k}")
        self._offsets[k], self._shapes[k] = self._offsets[src], self._shapes[src]

    def images(self) -> list[np.ndarray]:
        """One view into the payload per slot, in slot order."""
        missing = np.flatnonzero(self._offsets < 0)
        if missing.size:
            raise ValueError(f"slot(s) {missing.tolist()} of the step hold no image")
        return _views(self._buf, self._offsets, self._shapes)

    def _header(self) -> np.ndarray:
        return self._buf[:self._start].view(np.int64)


def _views(buf: np.ndarray, offsets, shapes) -> list[np.ndarray]:
    out = []
    for off, (h, w, c) in zip(offsets, shapes):
        off, n = int(off), int(h * w * c)
        out.append(buf[off:off + n].reshape(int(h), int(w), int(c)))
    return out


def _header_size(count: int) -> int:
    return _FIXED + _PER_SAMPLE * count


def _recv_header(channel, count: int) -> np.ndarray:
    header = np.empty(_header_size(count), np.int64)
    channel.bcast(header)
    if header[0] == _END:
        raise GroupEnd()
    return header


def bcast_end(channel, count: int) -> None:
    """Reader only (``encoded``): there are no more steps; receivers raise :class:`GroupEnd`."""
    header = np.zeros(_header_size(count), np.int64)
    header[0] = _END
    channel.bcast(header)


def recv_end(channel, count: int) -> None:
    """Non-reader (``encoded``): consume the reader's end marker after the last step."""
    try:
        _recv_header(channel, count)
    except GroupEnd:
        return
    raise RuntimeError("group broadcast out of step: expected the reader's end marker, got data")


class DecodedSender:
    """The reader's end of a ``decoded`` stream: one ``Bcast`` per step.

    Each :meth:`push` hands over the next message (a filled step or an error)
    and sends the one pushed before it, whose header announces this one;
    :meth:`close` sends the last one, announcing the end. So a step leaves once
    the next one is ready.
    """

    def __init__(self, channel, count: int):
        self.channel, self.count = channel, count
        self._held: Optional[np.ndarray] = None  # the next message to send (uint8, int64 header first)
        self._opened = False

    def push_step(self, ids, labels, payload: DecodedPayload, substituted: int = 0) -> list[np.ndarray]:
        """Queue one step; returns the reader's images (views into ``payload``)."""
        images = payload.images()  # checks that every slot holds an image before anything is sent
        header = payload._header()
        header[:] = 0
        per = header[_FIXED:].reshape(self.count, _PER_SAMPLE)
        per[:, 0], per[:, 1], per[:, 2], per[:, 3:] = ids, labels, payload._offsets, payload._shapes
        header[0], header[1], header[2], header[3] = _OK, self.count, payload.nbytes, substituted
        self._push(payload.message)
        return images

    def push_error(self, message: str) -> None:
        """Queue an error: the receivers raise :class:`GroupBroadcastError` with ``message`` there."""
        text = np.frombuffer(message.encode("utf-8"), np.uint8)
        start = 8 * _header_size(self.count)
        buf = np.zeros(start + text.size, np.uint8)
        buf[start:] = text
        header = buf[:start].view(np.int64)
        header[0], header[1], header[2] = _ERROR, self.count, text.size
        self._push(buf)

    def close(self) -> None:
        """Send what is held, announcing the end of the stream (receivers then raise :class:`GroupEnd`)."""
        self._send_held(_END, 0)

    def _push(self, message: np.ndarray) -> None:
        self._send_held(int(message[:8].view(np.int64)[0]), message.size)
        self._held = message

    def _send_held(self, next_status: int, next_bytes: int) -> None:
        if not self._opened:  # nothing held yet: the opening announcement
            self.channel.bcast(np.array([next_status, next_bytes], np.int64))
            self._opened = True
        elif self._held is not None:
            header = self._held[:8 * _FIXED].view(np.int64)
            header[4], header[5] = next_status, next_bytes
            self.channel.bcast(self._held)
        self._held = None


def _refs(buffers: list, k: int) -> int:
    return sys.getrefcount(buffers[k])




def steps_in_flight(prefetch: int) -> int:
    """Decoded steps a rank of a ``decoded`` group holds at most: the loader's ``prefetch`` queued
    steps, one being filled (reader) or received, and one the sender holds (reader) or the
    consumer has (others). The step buffers a loader keeps, and what the preflight counts."""
    return max(1, prefetch) + 2


_HUGE_PAGE = 2 << 20


def _huge_page_buffer(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, buffer)``: ``nbytes`` of fresh anonymous memory, 2 MiB aligned, advised for huge pages.

    ``owner`` is the array every view of ``buffer`` refers to (its base). Where
    the kernel has no transparent huge pages (or Python no ``madvise``) this is
    plain anonymous memory.
    """
    region = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(region, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP disabled in this kernel: 4 KiB pages
            pass
    owner = np.frombuffer(region, np.uint8)
    start = (-owner.ctypes.data) % _HUGE_PAGE
    return owner, owner[start:start + nbytes]


class BufferPool:
    """Large uint8 buffers of earlier steps, handed out again once no view of them is alive.

    A buffer is fresh anonymous memory, 2 MiB aligned and advised for
    transparent huge pages, and is reused from step to step. Measured at 2
    ranks (docs/performance.md): Open MPI's shared-memory Bcast reads the
    reader's buffer about 4x faster when huge pages back it, and a plain
    ``np.empty`` per step gets them only now and then (once the allocator
    serves large blocks from its heap, never). Every view of a buffer (a step's
    images, whoever holds them) holds a reference to its owner, so a buffer
    whose owner is referenced by the pool's list only is free.

    Args:
      keep: buffers kept; steps queued in the loader (prefetch) and held by the
        consumer stay alive meanwhile, so this bounds reuse, not correctness.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._owners: list[np.ndarray] = []  # newest first; each the base of the buffer beside it
        self._spare: list[np.ndarray] = []
        self._lock = threading.Lock()  # a payload may grow from a read thread

    def get(self, nbytes: int) -> np.ndarray:
        """A writable uint8 buffer of at least ``nbytes``: a free earlier one if one is large enough, else a new one."""
        with self._lock:
            for k in range(len(self._spare)):
                if self._spare[k].size >= nbytes and _refs(self._owners, k) == _FREE_OWNER_REFS:
                    return self._spare[k]
            owner, buf = _huge_page_buffer(nbytes * 5 // 4)  # headroom for larger steps; untouched bytes cost nothing
            self._owners = [owner] + self._owners[:self.keep - 1]
            self._spare = [buf] + self._spare[:self.keep - 1]
            return buf


def _free_owner_refs() -> int:
    owner, buf = _huge_page_buffer(1)
    owners, spare = [owner], [buf]  # as a BufferPool holds them
    del owner, buf
    return _refs(owners, 0)


# An owner referenced only by the pool: its list and its buffer's base.
_FREE_OWNER_REFS = _free_owner_refs()


class DecodedReceiver:
    """A non-reader's end of a ``decoded`` stream; :meth:`recv` once per step."""

    def __init__(self, channel, count: int, keep: int = 8):
        self.channel, self.count = channel, count
        self._next: Optional[tuple[int, int]] = None  # (status, bytes) of the next message
        self.buffers = BufferPool(keep)  # receive buffers, reused once no view of them is alive

    def recv(self):
        """The next step as ``(ids, labels, images, substituted)``; ``images`` are views into the received buffer.

        Raises:
          GroupEnd: the reader has no more steps.
          GroupBroadcastError: the reader could not produce the step (its message).
        """
        if self._next is None:
            opening = np.empty(2, np.int64)
            self.channel.bcast(opening)
            self._next = int(opening[0]), int(opening[1])
        status, nbytes = self._next
        if status == _END:
            raise GroupEnd()
        buf = self.buffers.get(nbytes)[:nbytes]
        self.channel.bcast(buf)
        start = 8 * _header_size(self.count)
        header = buf[:start].view(np.int64)
        if status == _ERROR:
            self._next = (_END, 0)
            raise GroupBroadcastError(buf[start:start + int(header[2])].tobytes().decode("utf-8", "replace"))
        self._next = int(header[4]), int(header[5])
        per = header[_FIXED:].reshape(self.count, _PER_SAMPLE)
        return per[:, 0].copy(), per[:, 1].copy(), _views(buf, per[:, 2], per[:, 3:]), int(header[3])

    def recv_end(self) -> None:
        """Expect the end of the stream after the last step."""
        try:
            self.recv()
        except GroupEnd:
            return
        raise RuntimeError("group broadcast out of step: expected the reader's end marker, got data")


def bcast_encoded(channel, count: int, ids: Optional[np.ndarray] = None,
                  payloads: Optional[Sequence[Optional[bytes]]] = None):
    """Broadcast ``count`` encoded payloads (file bytes) from the reader.

    The reader passes ``ids`` and ``payloads``; the others receive
    ``(ids, payloads)`` and decode (and label) the samples themselves. A
    payload of ``None`` on the reader means "could not be read"; it arrives as
    ``None`` everywhere so every rank applies the same substitution.
    """
    if channel.is_root:
        header = np.zeros(_header_size(count), np.int64)
        per = header[_FIXED:].reshape(count, _PER_SAMPLE)
        per[:, 0] = ids
        per[:, 2] = [-1 if p is None else len(p) for p in payloads]
        blob = bytearray().join(p for p in payloads if p is not None)  # writable, for Bcast
        header[1], header[2] = count, len(blob)
        channel.bcast(header)
        channel.bcast(np.frombuffer(blob, np.uint8))
        return ids, list(payloads)
    header = _recv_header(channel, count)
    per = header[_FIXED:].reshape(count, _PER_SAMPLE)
    blob = np.empty(int(header[2]), np.uint8)
    channel.bcast(blob)
    raw, out, offset = blob.tobytes(), [], 0
    for n in per[:, 2]:
        if n < 0:
            out.append(None)
            continue
        out.append(raw[offset:offset + int(n)])
        offset += int(n)
    return per[:, 0].copy(), out
