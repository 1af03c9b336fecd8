"""TFRecord shards of ``tf.train.Example`` with JPEG bytes (``get_source("tfrecord", ...)``).

    get_source("tfrecord", split="validation", data_dir="/data/imagenet-tfr", label_offset=-1)

Random access by sample id: each shard is framed once (record offsets and
lengths), and every read checks the record's CRC32C (``google-crc32c``), so a
damaged record is a corrupt sample naming shard and record.

The framing comes from an index file per shard when there is one
(``DIR/index/<shard>.idx``, written by ``ba-make-tfrecords`` and by
``ba-tfrecord-index DIR`` for existing shards, as DALI's ``tfrecord2idx``): one
small read per shard instead of one header read per record (~1.28 M on ImageNet
train, on every reader rank). Without it the shard's record headers are scanned
as before. An index whose recorded shard size differs from the shard's, or whose
records do not tile the shard exactly, is an error naming the shard and the
command that rebuilds it: re-scanning silently would bring back, at 512 ranks,
the file-system load the index exists to avoid.
"""
from __future__ import annotations

import collections
import errno
import glob
import importlib.util
import logging
import os
import resource
import struct
import threading
from typing import Optional, Sequence

import google_crc32c
import numpy as np
import tensorflow as tf

from ba_dist.data.images import check_dir, decode_image_bytes, split_names
from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source

__all__ = ["TFRecordSource", "crc32c", "masked_crc32c", "scan_tfrecord", "index_path", "write_index",
           "read_index", "INDEX_DIR"]

log = logging.getLogger(__name__)


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, as used by the TFRecord framing."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC stored in TFRecord framing."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scan_tfrecord(path: str, max_open_files: int = 0) -> tuple[np.ndarray, np.ndarray, Optional[str]]:
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
    fd = _open(path, max_open_files)
    try:
        size, pos = os.fstat(fd).st_size, 0
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
    finally:
        os.close(fd)
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), problem


INDEX_DIR = "index"          # index files live in DIR/index/, where no shard glob can match them
_INDEX_MAGIC = b"BATFRIDX"   # + uint32 version; then uint64 shard size, uint64 n, int64 offsets[n], int64 lengths[n]
_INDEX_VERSION = 1


def index_path(shard: str) -> str:
    """The index file of ``shard``: ``<shard dir>/index/<shard name>.idx``."""
    return os.path.join(os.path.dirname(os.path.abspath(shard)), INDEX_DIR, os.path.basename(shard) + ".idx")


def write_index(shard: str) -> tuple[int, Optional[str]]:
    """Scans ``shard`` and writes its index file (atomically: temporary name, then rename).

    Returns:
      ``(records, problem)``; a shard with a truncated or damaged tail gets no
      index (``problem`` says why; an older one is removed), so reading it
      scans and applies ``on_truncated``.
    """
    offsets, lengths, problem = scan_tfrecord(shard)
    path = index_path(shard)
    if problem:
        if os.path.exists(path):  # an older index of this shard is stale now
            os.remove(path)
        return len(offsets), problem
    os.makedirs(os.path.dirname(path), exist_ok=True)
    head = _INDEX_MAGIC + struct.pack("<IQQ", _INDEX_VERSION, os.path.getsize(shard), len(offsets))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(head + offsets.astype("<i8").tobytes() + lengths.astype("<i8").tobytes())
    os.replace(tmp, path)
    return len(offsets), None


def read_index(shard: str, shard_size: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(data_offsets, data_lengths)`` of ``shard`` from its index file; None when it has none.

    Raises:
      DataSourceError: the index is damaged or was written for a shard of another size.
    """
    path = index_path(shard)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        raw = os.pread(fd, os.fstat(fd).st_size, 0)  # one read call per shard
    finally:
        os.close(fd)
    fix = f"rebuild it with `ba-tfrecord-index {os.path.dirname(os.path.abspath(shard))}`"
    head = len(_INDEX_MAGIC) + 20
    if raw[:len(_INDEX_MAGIC)] != _INDEX_MAGIC or len(raw) < head:
        raise DataSourceError(f"{path}: not a ba_dist TFRecord index file; delete it or {fix}")
    version, size, n = struct.unpack("<IQQ", raw[len(_INDEX_MAGIC):head])
    if version != _INDEX_VERSION or len(raw) != head + 16 * n:
        raise DataSourceError(f"{path}: damaged index (version {version}, {len(raw)} bytes for {n} records); {fix}")
    if size != shard_size:
        raise DataSourceError(f"{path}: stale index: written for a shard of {size} bytes, {shard} now has "
                              f"{shard_size}; {fix}")
    offsets = np.frombuffer(raw, "<i8", n, head).astype(np.int64)
    lengths = np.frombuffer(raw, "<i8", n, head + 8 * n).astype(np.int64)
    # The records must tile the shard exactly: 12-byte header, data, 4-byte CRC, next.
    ends = offsets + lengths + 4
    if (n == 0 and size != 0) or (n and (offsets[0] != 12 or ends[-1] != size or np.any(offsets[1:] != ends[:-1] + 12))):
        raise DataSourceError(f"{path}: damaged index (its records do not tile the {size}-byte shard); {fix}")
    return offsets, lengths


def _too_many_open_files(shard: str, e: OSError, max_open_files: int) -> DataSourceError:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    what = "this process" if e.errno == errno.EMFILE else "the whole system (ENFILE)"
    return DataSourceError(
        f"{shard}: too many open files in {what} (ulimit -n = {soft}; this source keeps up to {max_open_files} "
        f"shards open): raise the limit (`ulimit -n 4096` in the job script) or lower "
        f"input.source_kwargs.max_open_files")


def _open(shard: str, max_open_files: int) -> int:
    try:
        return os.open(shard, os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise _too_many_open_files(shard, e, max_open_files) from None
        raise


_SAID: set = set()


def _say_once(message: str) -> None:
    """Logs ``message`` once per process, on world rank 0 only (512 copies help nobody).

    The rank comes from the launcher's environment: a data source does not initialise MPI.
    """
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    if message not in _SAID and rank == 0:
        _SAID.add(message)
        log.warning("%s", message)


_IMAGENET_WNIDS: Optional[dict] = None


def _imagenet_wnids() -> dict:
    """ImageNet's 1000 synsets (WordNet ids) -> 0-based class, in the sorted order every converter uses.

    Read from the list shipped with tensorflow_datasets (without importing it);
    empty when it is not installed.
    """
    global _IMAGENET_WNIDS
    if _IMAGENET_WNIDS is None:
        _IMAGENET_WNIDS = {}
        spec = importlib.util.find_spec("tensorflow_datasets")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(root, "datasets", "imagenet2012", "labels.txt")
            if os.path.exists(path):
                with open(path) as f:
                    _IMAGENET_WNIDS = {w.strip(): k for k, w in enumerate(f.read().split())}
    return _IMAGENET_WNIDS


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
      name: the dataset's name in logs. The ImageNet configs set ``imagenet2012``,
        which is also the tfds name when ``input.dataset=tfds`` switches the same
        config to tensorflow_datasets.
      max_open_files: shard descriptors kept open at once (least recently used
        closed first). A reader holds one such cache for the training split and
        one for the evaluation split, so the default 128 stays far below the
        usual ``ulimit -n 1024``. Running out of descriptors anyway (EMFILE) is
        a DataSourceError saying so, never a corrupt sample.
    """

    def __init__(self, data_dir: Optional[str] = None, split: str = "train", pattern: Optional[str] = None,
                 num_classes: int = 1000, label_offset: int = 0, on_truncated: str = "error",
                 verify_crc: bool = True, files: Optional[Sequence[str]] = None,
                 image_key: str = "image/encoded", label_key: str = "image/class/label",
                 default_augment: str = "imagenet", default_eval: str = "imagenet_eval",
                 max_open_files: int = 128, name: str = "tfrecord"):
        if on_truncated not in ("error", "skip"):
            raise ValueError(f"on_truncated must be 'error' or 'skip', got {on_truncated!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.max_open_files = max_open_files
        self.name, self.num_classes, self.label_offset = name, num_classes, label_offset
        self.image_key, self.label_key, self.verify_crc = image_key, label_key, verify_crc
        self.default_augment, self.default_eval = default_augment, default_eval
        self.shards = [os.fspath(f) for f in files] if files is not None else self._find(data_dir, split, pattern)
        if not self.shards:
            raise DataSourceError("TFRecordSource: empty list of shard files")
        self.problems: list[str] = []
        shard_ids, offsets, lengths, positions = [], [], [], []
        self.scanned = 0  # shards framed by scanning their headers (no index file)
        for k, shard in enumerate(self.shards):
            try:
                framed = read_index(shard, os.path.getsize(shard))
                if framed is None:
                    self.scanned += 1
                    off, length, problem = scan_tfrecord(shard, max_open_files)
                else:
                    (off, length), problem = framed, None
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
        # Descriptors stay open (no open() per sample on a parallel file system),
        # up to max_open_files, least recently used closed first; os.pread has no
        # shared file position, so threads and forked children can share them.
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._in_use: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        if self.scanned:
            _say_once(f"{self.scanned} of {len(self.shards)} TFRecord shards in "
                      f"{os.path.dirname(os.path.abspath(self.shards[0]))} have no index file, so every "
                      f"rank that opens them scanned their record headers; write the index once with "
                      f"`ba-tfrecord-index {os.path.dirname(os.path.abspath(self.shards[0]))}`")

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

    def _acquire(self, shard: int) -> int:
        """An open descriptor of ``shard``, held until :meth:`_release` (never closed while held)."""
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                # close the least recently used idle ones first, so the cache never needs one more
                idle = [k for k in self._fds if not self._in_use[k]]
                for old in idle[:max(0, len(self._fds) + 1 - self.max_open_files)]:
                    os.close(self._fds.pop(old))
                fd = self._fds[shard] = _open(self.shards[shard], self.max_open_files)
            self._fds.move_to_end(shard)
            self._in_use[shard] += 1
            return fd

    def _release(self, shard: int) -> None:
        with self._lock:
            self._in_use[shard] -= 1

    @property
    def open_files(self) -> int:
        """Shard descriptors open now (at most ``max_open_files`` while no read is in flight)."""
        return len(self._fds)

    def close(self) -> None:
        """Closes cached shard file descriptors (reopened on demand)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        if getattr(self, "_fds", None):
            self.close()

    def __getstate__(self):
        # descriptors do not travel to another process
        state = dict(self.__dict__, _fds=collections.OrderedDict(), _in_use=collections.Counter())
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def _read(self, index: int, verify: bool) -> bytes:
        where, length, shard = self.describe(index), int(self._length[index]), int(self._shard[index])
        try:
            fd = self._acquire(shard)
        except OSError as e:
            raise CorruptSampleError(where, f"cannot open: {e.strerror or e}") from None
        try:
            buf = os.pread(fd, length + 4, int(self._offset[index]))
        except OSError as e:
            raise CorruptSampleError(where, f"cannot read: {e.strerror or e}") from None
        finally:
            self._release(shard)
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

    def check(self, max_shards: int = 8) -> None:
        """Start-up check of the label base on a few records (first and middle of up to 8 shards).

        The stored ``label_key`` plus ``label_offset`` must lie in ``[0, num_classes)``:
        a sampled label outside it is an error when another base (0 or -1) fits
        every sampled label, or when none fits (all outside); an isolated one
        among good labels is a damaged record, left to ``on_corrupt``.
        When the records carry ImageNet synsets (``image/class/synset``, as the
        TF-models and TPU converters and ``ba-make-tfrecords`` on an ImageNet
        folder write them) and ``num_classes`` is 1000, the synset fixes the
        true class, so a base that is off by one is caught even when no sampled
        record has class 0 or 1000. Records that do not parse are left to
        ``on_corrupt`` during training.

        Raises:
          DataSourceError: the labels do not match ``label_offset``; names the
          config key and the value that fits.
        """
        n = len(self.shards)
        seen = []  # (where, stored label, synset or None)
        for k in sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, max_shards))}):
            start, end = np.searchsorted(self._shard, [k, k + 1])  # records are in shard order
            for index in sorted({int(start), int(start + end) // 2} & set(range(start, end))):
                try:
                    example = tf.train.Example.FromString(self._read(index, verify=False))
                    stored = _example_feature(example, self.label_key, "int64_list", "")
                except Exception:  # corrupt: on_corrupt decides during training
                    continue
                synset = example.features.feature.get("image/class/synset")
                synset = synset.bytes_list.value[0].decode(errors="replace") if synset and synset.bytes_list.value else None
                seen.append((self.describe(index), stored, synset))
        if not seen:
            return
        off, nc = self.label_offset, self.num_classes
        wnids = _imagenet_wnids() if nc == 1000 else {}
        implied = {wnids[syn] - stored for _, stored, syn in seen if syn in wnids}
        outside = [(where, stored) for where, stored, _ in seen if not 0 <= stored + off < nc]
        fits = implied.pop() if len(implied) == 1 else None
        if not outside and fits in (None, off):
            return
        lo, hi = min(x[1] for x in seen), max(x[1] for x in seen)
        if fits is None and lo >= 1 and hi <= nc:
            fits = -1
        elif fits is None and lo >= 0 and hi <= nc - 1:
            fits = 0
        if fits in (None, off) and len(outside) < len(seen):
            # No base explains them and other labels fit: damaged records, for on_corrupt to handle.
            log.warning("%d of %d sampled records have labels outside [0, %d) with label_offset=%d, e.g. %s "
                        "(stored %d): treated as corrupt samples", len(outside), len(seen), nc, off, *outside[0])
            return
        found = (f"{outside[0][0]}: stored label {outside[0][1]} + label_offset {off} is outside [0, {nc})"
                 if outside else f"their image/class/synset put ImageNet class = stored label {fits:+d}")
        base = {-1: "1-based labels (1..N), as the TF-models / TPU ImageNet converters write them",
                0: "0-based labels (0..N-1), as ba-make-tfrecords writes them by default"}
        fix = (f"set --config.input.source_kwargs.label_offset={fits} ({base.get(fits, 'labels shifted by that')})"
               if fits is not None else f"check input.source_kwargs.num_classes={nc} and label_offset={off}")
        raise DataSourceError(
            f"label base does not match input.source_kwargs.label_offset={off}: {len(seen)} records sampled "
            f"from the shards of {os.path.dirname(os.path.abspath(self.shards[0]))} (labels {lo}..{hi}); "
            f"{found}. Training would drop or mislabel whole classes: {fix}")

    def label(self, index: int) -> int:
        if self._labels[index] < 0:
            self._parse(self._read(index, verify=False), index)
        return int(self._labels[index])

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        example, where = self._parse(payload, index)
        return decode_image_bytes(_example_feature(example, self.image_key, "bytes_list", where), where)
