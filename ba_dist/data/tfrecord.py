"""TFRecord shards of ``tf.train.Example`` with JPEG bytes (``get_source("tfrecord", ...)``).

    get_source("tfrecord", split="validation", data_dir="/data/imagenet-tfr", label_offset=-1)

Random access by sample id: the shards are framed once from their record
headers, and every read checks the record's CRC32C (``google-crc32c``), so a
damaged record is a corrupt sample naming shard and record.
"""
from __future__ import annotations

import glob
import logging
import os
import struct
import threading
from typing import Optional, Sequence

import google_crc32c
import numpy as np
import tensorflow as tf

from ba_dist.data.images import check_dir, decode_image_bytes, split_names
from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source

__all__ = ["TFRecordSource", "crc32c", "masked_crc32c", "scan_tfrecord"]

log = logging.getLogger(__name__)


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, as used by the TFRecord framing."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC stored in TFRecord framing."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scan_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray, Optional[str]]:
    """Frames a TFRecord file from its record headers, without reading payloads.

    Each record is ``uint64 length | uint32 masked_crc(length) | data | uint32
    masked_crc(data)`` (little-endian); only the 12-byte headers are read and the
    length CRC is checked.

    Returns:
      ``(data_offsets, data_lengths, problem)``: the complete records, and a
      message naming the byte offset where framing stopped early (truncated or
      damaged tail), else None.
    """
    offsets, lengths, problem = [], [], None
    with open(path, "rb", buffering=0) as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            head = os.pread(fd, 12, pos)
            if len(head) < 12:
                problem = f"truncated record header at byte {pos} ({size - pos} of 12 bytes)"
                break
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc32c(head[:8]) != length_crc:
                problem = f"damaged record header at byte {pos} (length CRC mismatch)"
                break
            if pos + 16 + length > size:
                problem = f"truncated record at byte {pos} ({length + 16} bytes needed, {size - pos} left)"
                break
            offsets.append(pos + 12)
            lengths.append(length)
            pos += 16 + length
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), problem


def _example_feature(example, key: str, kind: str, where: str):
    feature = example.features.feature.get(key)
    values = getattr(feature, kind).value if feature is not None else ()
    if len(values) != 1:
        raise CorruptSampleError(where, f"Example has no single {kind} feature {key!r}")
    return values[0]


class TFRecordSource(Source):
    """ImageNet-style TFRecord shards of ``tf.train.Example`` with JPEG bytes.

    Shards are ``data_dir/<split>-*-of-*`` (``train-00000-of-01024``,
    ``validation-00000-of-00128``), or ``pattern`` (a glob relative to
    ``data_dir``), or an explicit ``files`` list. The index (shard, offset,
    length per record) is built in memory at construction by reading only the
    record headers: ~1.3 M headers for ImageNet train. ``read`` verifies the
    data CRC of every record (google-crc32c, in C), so flipped bytes
    surface as CorruptSampleError even where the JPEG would still decode.

    Labels are ``image/class/label + label_offset``. The shards built by the
    TF-models / slim ImageNet scripts use labels 1..1000 (0 = background): read
    them with ``label_offset=-1``. Labels are not in the index (that would need a
    pass over all the data): ``label(i)`` reads and parses record ``i`` once
    (without the CRC check, which ``read`` does) and caches it.

    Args:
      on_truncated: a shard whose tail is cut or damaged: "error" (default)
        raises DataSourceError naming shard and byte offset; "skip" keeps the
        complete records before it and notes it in ``problems``.
    """

    def __init__(self, data_dir: Optional[str] = None, split: str = "train", pattern: Optional[str] = None,
                 num_classes: int = 1000, label_offset: int = 0, on_truncated: str = "error",
                 verify_crc: bool = True, files: Optional[Sequence[str]] = None,
                 image_key: str = "image/encoded", label_key: str = "image/class/label",
                 default_augment: str = "imagenet", default_eval: str = "imagenet_eval"):
        if on_truncated not in ("error", "skip"):
            raise ValueError(f"on_truncated must be 'error' or 'skip', got {on_truncated!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.name, self.num_classes, self.label_offset = "tfrecord", num_classes, label_offset
        self.image_key, self.label_key, self.verify_crc = image_key, label_key, verify_crc
        self.default_augment, self.default_eval = default_augment, default_eval
        self.shards = [os.fspath(f) for f in files] if files is not None else self._find(data_dir, split, pattern)
        if not self.shards:
            raise DataSourceError("TFRecordSource: empty list of shard files")
        self.problems: list[str] = []
        shard_ids, offsets, lengths, positions = [], [], [], []
        for k, shard in enumerate(self.shards):
            try:
                off, length, problem = scan_tfrecord(shard)
            except OSError as e:
                raise DataSourceError(f"{shard}: cannot read TFRecord shard: {e.strerror or e}") from None
            if problem:
                message = f"{shard}: {problem}"
                if on_truncated == "error":
                    raise DataSourceError(f"{message}; {len(off)} complete records before it. Rewrite the "
                                          "shard, or pass on_truncated='skip' to use only those")
                log.warning("%s; using the %d complete records before it", message, len(off))
                self.problems.append(message)
            shard_ids.append(np.full(len(off), k, np.int32))
            offsets.append(off)
            lengths.append(length)
            positions.append(np.arange(len(off), dtype=np.int64))
        self._shard = np.concatenate(shard_ids)
        self._offset, self._length = np.concatenate(offsets), np.concatenate(lengths)
        self._position = np.concatenate(positions)
        if len(self._offset) == 0:
            raise DataSourceError(f"no records in the {len(self.shards)} shard(s) {self.shards[0]} ...")
        self._labels = np.full(len(self._offset), -1, np.int64)
        # Descriptors stay open (no open() per sample on a parallel file system);
        # os.pread has no shared file position, so threads and forked children can share them.
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _find(data_dir: Optional[str], split: str, pattern: Optional[str]) -> list[str]:
        data_dir = check_dir(data_dir, "TFRecord")
        patterns = [pattern] if pattern else [f"{name}-*-of-*" for name in split_names(split)]
        for p in patterns:
            shards = sorted(glob.glob(os.path.join(data_dir, p)))
            if shards:
                return shards
        raise DataSourceError(f"{data_dir}: no TFRecord shards matching {' or '.join(patterns)}; write them "
                              f"with `ba-make-tfrecords --src FOLDER --out {data_dir} "
                              f"--split {split} --num-shards N`")

    def __len__(self) -> int:
        return len(self._offset)

    def describe(self, index: int) -> str:
        return f"{self.shards[self._shard[index]]}:{self._position[index]}"

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            return self._fds[shard]

    def close(self) -> None:
        """Closes cached shard file descriptors (reopened on demand)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __getstate__(self):
        state = dict(self.__dict__, _fds={})  # descriptors do not travel to another process
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _read(self, index: int, verify: bool) -> bytes:
        where, length = self.describe(index), int(self._length[index])
        try:
            buf = os.pread(self._fd(int(self._shard[index])), length + 4, int(self._offset[index]))
        except OSError as e:
            raise CorruptSampleError(where, f"cannot read: {e.strerror or e}") from None
        if len(buf) != length + 4:
            raise CorruptSampleError(where, "shard is shorter than when it was indexed")
        data = buf[:length]
        if verify and masked_crc32c(data) != struct.unpack("<I", buf[length:])[0]:
            raise CorruptSampleError(where, "data CRC mismatch: the record's bytes changed after it was written")
        return data

    def read(self, index: int) -> bytes:
        """The serialized ``tf.train.Example`` of record ``index`` (CRC-checked)."""
        return self._read(index, self.verify_crc)

    def _parse(self, payload: bytes, index: int):
        where = self.describe(index)
        try:
            example = tf.train.Example.FromString(payload)
        except Exception as e:  # protobuf's DecodeError differs between implementations
            raise CorruptSampleError(where, f"not a tf.train.Example: {e}") from None
        label = _example_feature(example, self.label_key, "int64_list", where) + self.label_offset
        if not 0 <= label < self.num_classes:
            raise CorruptSampleError(where, f"label {label} (stored {label - self.label_offset}, label_offset="
                                            f"{self.label_offset}) outside [0, {self.num_classes})")
        self._labels[index] = label
        return example, where

    def label(self, index: int) -> int:
        if self._labels[index] < 0:
            self._parse(self._read(index, verify=False), index)
        return int(self._labels[index])

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        example, where = self._parse(payload, index)
        return decode_image_bytes(_example_feature(example, self.image_key, "bytes_list", where), where)
