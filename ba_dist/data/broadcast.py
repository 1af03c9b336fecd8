"""Moving one step's unique samples from a group's reader to the other ranks.

Two wire formats over the group's channel (``ba_dist.dist.group_channel()``, reader = root):

* ``decoded``: pixels of variable-size ``uint8 HxWxC`` images;
* ``encoded``: the files' bytes, decoded by every rank itself.

Each broadcast is two ``Bcast`` calls on flat numpy buffers (no pickling): a
fixed-size int64 header (status, per-sample id, label, offset and shape or
length) and one contiguous payload. A status other than OK carries an error
message instead of a payload, so a reader that hits a fatal error takes the
group down with a message instead of leaving the other ranks waiting.

Copies of the decoded pixels. The reader's decoder (``tf.io.decode_image``)
writes into a buffer of its own, and nothing in our stack decodes into a buffer
the caller gives, so every byte is copied once on the reader: each read thread
copies the image it has just decoded into the step's :class:`DecodedPayload`,
at its offset, beside the decoding of the other images. That copy is moved off
the send, not removed: the send itself (``bcast_decoded``) is the header plus
one ``Bcast`` of the payload as the threads left it, with no packing pass, and
each receiver's images are views into the buffer MPI wrote. A substituted
corrupt sample points at its substitute's bytes (nothing is copied or sent
twice). When a step needs more room than the payload was given, the payload
grows and the bytes already in it are copied once more (the loader sizes the
next payloads from the largest step so far, so this is rare after the first step).
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

__all__ = ["DecodedPayload", "GroupBroadcastError", "GroupEnd", "bcast_decoded", "bcast_encoded", "bcast_error",
           "bcast_end", "recv_end"]

_OK, _ERROR, _END = 0, 1, 2
# header = [status, count, payload_bytes, substituted, then per sample: id, label, offset, d0, d1, d2]
# (encoded: per sample id, -, length, ...)
_PER_SAMPLE = 6
_FIXED = 4


class GroupBroadcastError(RuntimeError):
    """The group's reader reported a fatal error; the message is the reader's."""


class GroupEnd(Exception):
    """The group's reader has no more steps (end of data or stop)."""


class DecodedPayload:
    """One step's decoded images, written into the one buffer the reader broadcasts.

    The reader's read threads :meth:`put` each image as soon as it is decoded
    (thread-safe; images land in the order they finish, each at an offset of its
    own); a corrupt slot is then pointed at its substitute with :meth:`alias`.
    :func:`bcast_decoded` sends the buffer as it is, and :meth:`images` gives
    the reader the same pixels as views into it.

    Args:
      count: images (slots) of the step.
      capacity: bytes to reserve; the buffer grows when a step needs more.
    """

    def __init__(self, count: int, capacity: int = 0):
        self.count = count
        self._buf = np.empty(max(0, int(capacity)), np.uint8)
        self._used = 0
        self._offsets = np.full(count, -1, np.int64)
        self._shapes = np.zeros((count, 3), np.int64)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of pixels in the payload: what is broadcast."""
        return self._used

    @property
    def buffer(self) -> np.ndarray:
        """The bytes broadcast: a view of the payload's buffer, no copy."""
        return self._buf[:self._used]

    def put(self, k: int, image: np.ndarray) -> None:
        """Copy the decoded ``HxWxC`` uint8 ``image`` of slot ``k`` into the payload."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"slot {k}: expected a uint8 HxWxC image, got {image.dtype} {image.shape}")
        n = image.nbytes
        # The copy is made under the lock: a concurrent grow would otherwise move
        # the buffer under a copy in flight. It is short next to the decode
        # (~0.1 ms per 375x500 image against ~2 ms), so the threads rarely wait.
        with self._lock:
            if self._used + n > self._buf.size:
                self._grow(self._used + n)
            self._buf[self._used:self._used + n].reshape(image.shape)[...] = image
            self._offsets[k], self._shapes[k] = self._used, image.shape
            self._used += n

    def _grow(self, need: int) -> None:
        # the first image of a payload given no capacity sizes it for the whole step
        first = self.count * need * 5 // 4 if self._used == 0 else 0
        bigger = np.empty(max(need, 2 * self._buf.size, first), np.uint8)
        bigger[:self._used] = self._buf[:self._used]
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
    if header[0] == _ERROR:
        msg = np.empty(int(header[2]), np.uint8)
        channel.bcast(msg)
        raise GroupBroadcastError(msg.tobytes().decode("utf-8", "replace"))
    return header


def bcast_error(channel, count: int, message: str) -> None:
    """Reader only: tell the group that this step cannot be produced."""
    data = np.frombuffer(message.encode("utf-8"), np.uint8)
    header = np.zeros(_header_size(count), np.int64)
    header[0], header[1], header[2] = _ERROR, count, len(data)
    channel.bcast(header)
    channel.bcast(np.ascontiguousarray(data))


def bcast_end(channel, count: int) -> None:
    """Reader only: there are no more steps; receivers raise :class:`GroupEnd`."""
    header = np.zeros(_header_size(count), np.int64)
    header[0] = _END
    channel.bcast(header)


def recv_end(channel, count: int) -> None:
    """Non-reader: consume the reader's end marker after the last step."""
    try:
        _recv_header(channel, count)
    except GroupEnd:
        return
    raise RuntimeError("group broadcast out of step: expected the reader's end marker, got data")


def bcast_decoded(channel, count: int, ids: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                  payload: Optional[DecodedPayload] = None, substituted: int = 0):
    """Broadcast ``count`` decoded images from the reader (group rank 0).

    The reader passes ``ids``, ``labels``, the step's filled ``payload`` and how
    many corrupt samples it ``substituted``; the payload's buffer is sent as it
    is (no packing). Every rank returns ``(ids, labels, images, substituted)``,
    ``images`` being views into the payload bytes (the reader's own buffer on
    the reader, the received one elsewhere).
    """
    if channel.is_root:
        images = payload.images()  # checks that every slot holds an image before anything is sent
        header = np.zeros(_header_size(count), np.int64)
        per = header[_FIXED:].reshape(count, _PER_SAMPLE)
        per[:, 0], per[:, 1], per[:, 2], per[:, 3:] = ids, labels, payload._offsets, payload._shapes
        header[1], header[2], header[3] = count, payload.nbytes, substituted
        channel.bcast(header)
        channel.bcast(payload.buffer)
        return ids, labels, images, substituted
    header = _recv_header(channel, count)
    per = header[_FIXED:].reshape(count, _PER_SAMPLE)
    buf = np.empty(int(header[2]), np.uint8)
    channel.bcast(buf)
    return per[:, 0].copy(), per[:, 1].copy(), _views(buf, per[:, 2], per[:, 3:]), int(header[3])


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
