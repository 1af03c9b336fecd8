"""Moving one step's unique samples from a group's reader to the other ranks.

Two wire formats over the group's channel (``ba_dist.dist.group_channel()``, reader = root):

* ``decoded``: pixels of variable-size ``uint8 HxWxC`` images;
* ``encoded``: the files' bytes, decoded by every rank itself.

Each broadcast is two ``Bcast`` calls on flat numpy buffers (no pickling): a
fixed-size int64 header (status, per-sample shape/length, label, id) and one
contiguous payload. A status other than OK carries an error message instead of
a payload, so a reader that hits a fatal error takes the group down with a
message instead of leaving the other ranks waiting.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["GroupBroadcastError", "GroupEnd", "bcast_decoded", "bcast_encoded", "bcast_error", "bcast_end", "recv_end"]

_OK, _ERROR, _END = 0, 1, 2
# header = [status, count, payload_bytes, substituted, then per sample: id, label, d0, d1, d2]
_PER_SAMPLE = 5
_FIXED = 4


class GroupBroadcastError(RuntimeError):
    """The group's reader reported a fatal error; the message is the reader's."""


class GroupEnd(Exception):
    """The group's reader has no more steps (end of data or stop)."""


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
                  images: Optional[Sequence[np.ndarray]] = None, substituted: int = 0):
    """Broadcast ``count`` decoded images from the reader (group rank 0).

    The reader passes ``ids``, ``labels``, ``images`` and how many corrupt
    samples it ``substituted``; the others pass only ``count`` and receive
    ``(ids, labels, images, substituted)``.
    """
    if channel.is_root:
        header = np.zeros(_header_size(count), np.int64)
        per = header[_FIXED:].reshape(count, _PER_SAMPLE)
        per[:, 0], per[:, 1] = ids, labels
        for k, img in enumerate(images):
            per[k, 2:2 + img.ndim] = img.shape
        payload = np.concatenate([np.ascontiguousarray(img).reshape(-1) for img in images])
        header[1], header[2], header[3] = count, payload.size, substituted
        channel.bcast(header)
        channel.bcast(payload)
        return ids, labels, images, substituted
    header = _recv_header(channel, count)
    per = header[_FIXED:].reshape(count, _PER_SAMPLE)
    payload = np.empty(int(header[2]), np.uint8)
    channel.bcast(payload)
    out, offset = [], 0
    for h, w, c in per[:, 2:]:
        n = int(h * w * c)
        out.append(payload[offset:offset + n].reshape(int(h), int(w), int(c)))
        offset += n
    return per[:, 0].copy(), per[:, 1].copy(), out, int(header[3])


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
