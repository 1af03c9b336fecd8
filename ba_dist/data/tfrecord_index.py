"""Write the index files of existing TFRecord shards, so ranks stop scanning them at start-up.

    ba-tfrecord-index /data/imagenet-tfrecords --workers 8
    ba-tfrecord-index ~/tensorflow_datasets/imagenet2012/5.1.0 --pattern '*.tfrecord-*-of-*'

Writes ``DIR/index/<shard>.idx`` for every shard ``DIR/*-*-of-*`` (or
``--pattern``): the offset and length of each record and the shard's size, as
DALI's ``tfrecord2idx`` does. A :class:`~ba_dist.data.tfrecord.TFRecordSource`
then reads one small file per shard instead of every record header (~1.28 M
reads on ImageNet train, on every reader rank). Shards written by
``ba-make-tfrecords`` already have theirs. Rerun it after a shard changes: a
source refuses an index whose shard size differs (exit 2 naming the shard).
A shard with a truncated or damaged tail gets no index and is listed (exit 1).
"""
from __future__ import annotations

import glob
import multiprocessing
import os
import sys
import time
from typing import Optional, Sequence

from absl import app, flags

from ba_dist import cli

__all__ = ["index_shards", "main"]


def index_shards(data_dir: str, pattern: str = "*-*-of-*", workers: int = 1, log=print) -> list[str]:
    """Writes the index file of every shard of ``data_dir`` matching ``pattern``.

    Returns:
      "shard: problem" for each shard left without an index (truncated or damaged tail).

    Raises:
      ValueError: no shard matches.
    """
    from ba_dist.data.tfrecord import index_path, write_index  # TensorFlow: not for --help
    shards = sorted(p for p in glob.glob(os.path.join(data_dir, pattern)) if os.path.isfile(p))
    if not shards:
        raise ValueError(f"{data_dir}: no TFRecord shards matching {pattern!r}")
    start, problems = time.time(), []
    log = log or (lambda _: None)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(write_index, shards) if pool else map(write_index, shards)
        for k, (shard, (records, problem)) in enumerate(zip(shards, results)):
            if problem:
                problems.append(f"{shard}: {problem}")
                log(f"  NOT indexed {shard}: {problem} ({records} complete records before it)")
            elif k % 64 == 0 or k == len(shards) - 1:
                log(f"[{k + 1}/{len(shards)}] {index_path(shard)}: {records} records ({time.time() - start:.0f}s)")
    finally:
        if pool is not None:
            pool.terminate()
    log(f"done: {len(shards) - len(problems)} of {len(shards)} shards indexed in "
        f"{os.path.join(data_dir, 'index')}, {time.time() - start:.1f}s")
    return problems


FLAGS = flags.FLAGS
_FLAGS = [
    ("pattern", "string", "*-*-of-*", "glob of the shards inside DIR"),
    ("workers", "integer", 1, "parallel processes"),
]
FLAG_NAMES = [f[0] for f in _FLAGS]


def _main(argv) -> int:
    if len(argv) != 2:
        raise app.UsageError("give exactly one DIR holding the shards", exitcode=2)
    try:
        problems = index_shards(argv[1], FLAGS.pattern, FLAGS.workers)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ba-tfrecord-index``; with ``argv`` (``[DIR, flags...]``) it runs in-process and returns the exit code."""
    cli.define_flags(_FLAGS)
    if argv is None:
        cli.run(_main, usage=__doc__, flag_names=FLAG_NAMES)
    for name in FLAG_NAMES:
        FLAGS[name].unparse()
    rest = FLAGS(["ba-tfrecord-index", *argv])
    return _main(rest)


if __name__ == "__main__":
    sys.exit(main())
