"""Start-up cost of TFRecord training data per rank, against shard count (issue 12).

Writes ``--shards`` synthetic shards of ``--records`` small records each (the
framing and the Example of ImageNet shards, tiny payloads: start-up does not read
payloads), then measures in this one run, each in a fresh child process:

  scan        a reader rank without index files: every record header is read
              (what every rank did before index files)
  index       a reader rank with index files: one small read per shard
  non-reader  a non-reader rank of a group with broadcast='decoded': what it
              receives from its reader (a RemoteSource) and nothing else

plus the one-time cost of writing the index files (``ba-tfrecord-index``).
File-system calls are counted by the kernel (``/proc/self/io``: ``syscr``, read
syscalls including pread) and by Python's audit hook (``open`` events of a path,
failed ones included: looking for a missing index file is a metadata call too). Seconds
are on a warm page cache of a local disk: a parallel file system makes each call
dearer, and 512 ranks make all of them at once; the call counts carry over.

    .venv/bin/python benchmarks/bench_startup.py --shards 1024 --records 125
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHILD = r"""
import json, os, pickle, sys, time
OPENS = [0]
def hook(event, args):
    if event == "open" and not isinstance(args[0], int):  # a path (an fd wrapped in a file object is no syscall)
        OPENS[0] += 1
sys.addaudithook(hook)
from ba_dist.data.tfrecord import TFRecordSource
from ba_dist.data.sources import RemoteSource
mode, data_dir = sys.argv[1], sys.argv[2]
def syscr():
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith("syscr:")).split()[1])
blob = pickle.dumps(RemoteSource("tfrecord", 1, 1000, None, "imagenet", "imagenet_eval", 0)) if mode == "non-reader" else None
r0, o0, t0 = syscr(), OPENS[0], time.perf_counter()
if mode == "non-reader":
    src = pickle.loads(blob)       # what the group broadcast delivers; no shard is touched
else:
    src = TFRecordSource(data_dir, "train", num_classes=1000)
seconds = time.perf_counter() - t0
r1, o1 = syscr(), OPENS[0]
print(json.dumps({"seconds": seconds, "read_calls": r1 - r0 - 1, "opens": o1 - o0 - 1,
                  "scanned": getattr(src, "scanned", 0), "records": len(src) if mode != "non-reader" else None}))
"""


def write_shards(out: str, shards: int, records: int) -> int:
    import tensorflow as tf
    os.makedirs(out, exist_ok=True)
    for k in range(shards):
        with tf.io.TFRecordWriter(os.path.join(out, f"train-{k:05d}-of-{shards:05d}")) as w:
            for r in range(records):
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8" * 16])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1 + r % 1000]))}))
                w.write(ex.SerializeToString())
    return shards * records


def child(mode: str, data_dir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-c", CHILD, mode, data_dir], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=1024)
    p.add_argument("--records", type=int, default=125, help="records per shard (ImageNet train: ~1250)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        n = write_shards(d, args.shards, args.records)
        print(f"{args.shards} shards x {args.records} records = {n} records written in {time.perf_counter() - t:.1f}s")
        rows = [("scan (before)", child("scan", d))]
        from ba_dist.data.tfrecord_index import index_shards
        t = time.perf_counter()
        index_shards(d, log=None)
        index_seconds = time.perf_counter() - t
        rows.append(("index files (after)", child("index", d)))
        rows.append(("non-reader (after)", child("non-reader", d)))
    print(f"\nper rank, {args.shards} shards, {n} records (one-time `ba-tfrecord-index`: {index_seconds:.1f}s)\n")
    print("| rank start-up | seconds | opens | read syscalls | shards scanned |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.3f} | {r['opens']} | {r['read_calls']} | {r['scanned']} |")


if __name__ == "__main__":
    main()
