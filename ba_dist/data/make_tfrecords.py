"""Write an image folder as ImageNet-style TFRecord shards.

    ba-make-tfrecords --src /data/imagenet --out /data/imagenet-tfr \\
        --split train --num-shards 1024 [--label-offset 1] [--workers 8] [--strict]

``--src`` holds ``<split>/<class>/*.jpg`` (or the class folders directly).
Writes ``OUT/<split>-00000-of-01024`` ... with the features of the TF-models
ImageNet build script: ``image/encoded``, ``image/format``, ``image/height``,
``image/width``, ``image/colorspace``, ``image/channels``, ``image/filename``,
``image/class/label``, ``image/class/synset`` and ``image/class/text`` (both the
class folder name). JPEG bytes are stored as-is, so they decode to the same
pixels as from the folder; PNGs are decoded and re-encoded as JPEG (quality 100
as in that script, but without chroma subsampling), so their pixels change
slightly. Every image is decoded once to check it: bad files are reported and
skipped, or stop the run with ``--strict``.

Labels are the sorted class-folder index plus ``--label-offset``. The default ``1``
writes the TF-models/TPU converters' 1..1000 convention, which the ImageNet configs
read by default (``input.source_kwargs.label_offset=-1``); ``--label-offset 0`` writes
0-based labels (read them with ``label_offset=0``). The start-up label check of
``ba-train`` names a mismatch either way.
Samples are shuffled with a fixed seed and dealt round-robin to the shards.
Each shard is written to a temporary name and renamed when complete, then its
index file (``OUT/index/<shard>.idx``, see :mod:`ba_dist.data.tfrecord`), so
ranks reading the shards do not scan them at start-up.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags

from ba_dist import cli
from ba_dist.data.folder import ImageFolderSource
from ba_dist.data.images import decode_image_bytes, sniff_format, split_names
from ba_dist.data.sources import CorruptSampleError
from ba_dist.data.tfrecord import write_index

__all__ = ["ShardSummary", "write_shards", "main"]


@dataclasses.dataclass
class ShardSummary:
    """What :func:`write_shards` did."""
    shards: list[str]
    written: int
    skipped: list[str]  # "path: reason" per bad input file
    per_shard: list[int]
    seconds: float


def _feature(value) -> tf.train.Feature:
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _example(source: ImageFolderSource, index: int, label_offset: int) -> bytes:
    """Serialized Example for one file; raises CorruptSampleError for a bad file."""
    path = source.describe(index)
    payload = source.read(index)
    image = decode_image_bytes(payload, path)
    if sniff_format(payload) != "JPEG":
        payload = tf.io.encode_jpeg(image, format="rgb", quality=100, chroma_downsampling=False).numpy()
    class_name = source.class_names[source.label(index)].encode()
    features = {
        "image/height": _feature(image.shape[0]),
        "image/width": _feature(image.shape[1]),
        "image/colorspace": _feature(b"RGB"),
        "image/channels": _feature(3),
        "image/class/label": _feature(source.label(index) + label_offset),
        "image/class/synset": _feature(class_name),
        "image/class/text": _feature(class_name),
        "image/format": _feature(b"JPEG"),
        "image/filename": _feature(os.path.basename(path).encode()),
        "image/encoded": _feature(payload),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _write_one(args) -> tuple[str, int, list[str], Optional[tuple[str, str]]]:
    source, indices, path, label_offset, strict = args
    # Hidden temporary name: a crashed run leaves nothing that matches "<split>-*-of-*".
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    written, skipped = 0, []
    with tf.io.TFRecordWriter(tmp) as writer:
        for i in indices:
            try:
                writer.write(_example(source, int(i), label_offset))
                written += 1
            except CorruptSampleError as e:
                if strict:  # returned, not raised: the exception does not pickle back from a worker
                    writer.close()
                    os.remove(tmp)
                    return path, written, skipped, (e.where, e.reason)
                skipped.append(str(e))
    os.replace(tmp, path)
    write_index(path)
    return path, written, skipped, None


def write_shards(src: str, out_dir: str, split: str = "train", num_shards: int = 1, label_offset: int = 0,
                 seed: int = 0, strict: bool = False, workers: int = 1,
                 log: Optional[Callable[[str], None]] = print) -> ShardSummary:
    """Writes ``out_dir/<split>-%05d-of-%05d`` shards from an image folder.

    Args:
      src: folder with ``<split>/<class>/`` (``val`` for ``validation`` also
        works) or the class folders directly.
      workers: processes writing shards in parallel (spawned, one shard each).
      log: progress sink, e.g. ``print``; None for silence.

    Raises:
      DataSourceError: unusable ``src``. CorruptSampleError: a bad file with ``strict``.
    """
    if num_shards < 1 or workers < 1:
        raise ValueError(f"num_shards and workers must be >= 1, got {num_shards}, {workers}")
    start = time.time()
    has_split = any(os.path.isdir(os.path.join(src, n)) for n in split_names(split))
    source = ImageFolderSource(src, split if has_split else None)
    # A fixed-seed shuffle dealt round-robin: shard sizes differ by at most one
    # and every shard mixes all classes.
    order = np.random.default_rng(seed).permutation(len(source))
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(source, order[k::num_shards], os.path.join(out_dir, f"{split}-{k:05d}-of-{num_shards:05d}"),
             label_offset, strict) for k in range(num_shards)]
    log = log or (lambda _: None)
    log(f"{source.root}: {len(source)} images, {source.num_classes} classes -> {num_shards} shards in {out_dir}")
    shards, per_shard, skipped = [], [], []
    if workers == 1:
        results = map(_write_one, jobs)
        pool = None
    else:  # spawn, not fork: TensorFlow's runtime does not survive a fork
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_write_one, jobs)
    try:
        for path, written, bad, fatal in results:
            if fatal:
                raise CorruptSampleError(*fatal)
            shards.append(path)
            per_shard.append(written)
            skipped += bad
            for line in bad:
                log(f"  skipped {line}")
            log(f"[{len(shards)}/{num_shards}] {os.path.basename(path)}: {written} images "
                f"({sum(per_shard)}/{len(source)}, {time.time() - start:.0f}s)")
    finally:
        if pool is not None:
            pool.terminate()
    summary = ShardSummary(shards, sum(per_shard), skipped, per_shard, time.time() - start)
    log(f"done: {summary.written} images written, {len(skipped)} skipped, {num_shards} shards, "
        f"{summary.seconds:.1f}s")
    return summary


FLAGS = flags.FLAGS
# (name, kind, default, help); defined when the command runs, not on import, so
# importing write_shards next to another command's flags cannot clash.
_FLAGS = [
    ("src", "string", None, "image folder: <split>/<class>/*.jpg or <class>/*.jpg (required)"),
    ("out", "string", None, "output directory for the shards (required)"),
    ("split", "string", "train", "split name, also the shard prefix"),
    ("num-shards", "integer", 1, "number of shards"),
    ("label-offset", "integer", 1, "added to the class index (1: TF-models/TPU 1-based labels, "
                                   "as the ImageNet configs read them; 0: 0-based)"),
    ("seed", "integer", 0, "seed of the shuffle before sharding"),
    ("workers", "integer", 1, "parallel shard writers"),
    ("strict", "bool", False, "stop at the first bad image"),
]
FLAG_NAMES = [f[0] for f in _FLAGS]


def _main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    for name in ("src", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required", exitcode=2)
    try:
        write_shards(FLAGS.src, FLAGS.out, FLAGS.split, FLAGS["num-shards"].value, FLAGS["label-offset"].value,
                     FLAGS.seed, FLAGS.strict, FLAGS.workers)
    except (ValueError, CorruptSampleError) as e:  # DataSourceError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ba-make-tfrecords``; with ``argv`` (flags only) it runs in-process and returns the exit code."""
    cli.define_flags(_FLAGS)
    if argv is None:
        cli.run(_main, usage=__doc__, flag_names=FLAG_NAMES)
    for name in FLAG_NAMES:  # an in-process call starts from the defaults
        FLAGS[name].unparse()
    FLAGS(["ba-make-tfrecords", *argv])
    return _main(["ba-make-tfrecords"])


if __name__ == "__main__":
    sys.exit(main())
