"""Input-pipeline benchmark for Batch Augmentation (issue 3).

Two parts, each comparing against the obvious alternative in the same run
(ratios, not absolute numbers: the machines are shared and noisy):

  augment  (1 process)   augmented images/s per core at M = 1, 2, 4, 8:
           BA path   = decode each JPEG once, M augmentations of the pixels
           obvious   = every copy decoded on its own with decode_and_crop_jpeg
           and the same for CIFAR-style uint8 arrays (no decode to save).
  bcast    (under mpirun, one group of all ranks)
           delivered unique images/s per rank for broadcast='decoded', 'encoded'
           and 'none' (every rank reads itself), and the decoded-image
           broadcast's send (the loader's DecodedSender: one Bcast of the
           payload the reader's threads decode into) against a raw MPI Bcast
           of the same bytes.

    .venv/bin/python benchmarks/bench_pipeline.py augment
    mpirun -np 2 .venv/bin/python benchmarks/bench_pipeline.py bcast
"""
from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ba_dist.data import augment as aug  # noqa: E402


def make_jpegs(n: int, size=(375, 500), seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth gradients + texture), about the size of ImageNet's."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = np.stack([np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)) * 90 + 128,
                         np.cos(yy / rng.uniform(20, 80) + rng.uniform(0, 6)) * 90 + 128,
                         (xx + yy) * 255.0 / (h + w)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _with_one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1  # per core: one thread does all the work
    opts.autotune.enabled = False
    return ds.with_options(opts)


def _pass(ds, per_element: int) -> float:
    t0, n = time.perf_counter(), 0
    for _ in ds:
        n += per_element
    return n / (time.perf_counter() - t0)


def _compare(a: tf.data.Dataset, a_per: int, b: tf.data.Dataset, b_per: int, repeats: int = 5):
    """Median images/s of a and b and the median of per-repeat ratios; passes alternate
    so that load changes on a shared machine hit both sides alike."""
    a, b = _with_one_thread(a), _with_one_thread(b)
    _pass(a, a_per), _pass(b, b_per)  # warm-up: tracing, caches
    ra, rb = [], []
    for _ in range(repeats):
        ra.append(_pass(a, a_per))
        rb.append(_pass(b, b_per))
    return statistics.median(ra), statistics.median(rb), statistics.median(x / y for x, y in zip(ra, rb))


def bench_augment(n_jpegs: int = 48, ms=(1, 2, 4, 8)) -> None:
    jpegs = make_jpegs(n_jpegs)
    imagenet = aug.get_augment("imagenet")
    cifar = aug.get_augment("cifar")
    arrays = np.random.default_rng(0).integers(0, 255, (512, 32, 32, 3), dtype=np.uint8)
    print(f"## Augmented images/s per core (1 tf.data thread), {n_jpegs} JPEGs of "
          f"{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB (375x500), 512 CIFAR arrays\n")
    print("| M | JPEG: BA (decode once) | JPEG: decode_and_crop per copy | ratio | "
          "CIFAR: BA (M augs of one array) | CIFAR: per-copy pipeline | ratio |")
    print("|---|---|---|---|---|---|---|")
    seed0 = tf.constant([7, 0], tf.int64)

    def seed(i, c):
        return tf.random.experimental.stateless_fold_in(seed0, i * 16 + c)

    raw_arrays = [a.tobytes() for a in arrays]
    # Both sides of each comparison have the same structure (one element in,
    # M augmented copies out, in one map function); only the decoding differs.
    for m in ms:
        def ba(j, i, m=m):
            img = tf.io.decode_jpeg(j, channels=3)  # once
            return tf.stack([imagenet(img, seed(i, c)) for c in range(m)])

        def obvious(j, i, m=m):
            return tf.stack([aug.decode_and_crop_imagenet(j, seed(i, c)) for c in range(m)])  # M decodes

        def cba(r, i, m=m):
            x = tf.reshape(tf.io.decode_raw(r, tf.uint8), [32, 32, 3])
            return tf.stack([cifar(x, seed(i, c)) for c in range(m)])

        def cobvious(r, i, m=m):
            return tf.stack([cifar(tf.reshape(tf.io.decode_raw(r, tf.uint8), [32, 32, 3]), seed(i, c))
                             for c in range(m)])

        src = tf.data.Dataset.from_tensor_slices((tf.constant(jpegs), tf.range(len(jpegs), dtype=tf.int64)))
        r_ba, r_ob, ratio = _compare(src.map(ba), m, src.map(obvious), m)
        csrc = tf.data.Dataset.from_tensor_slices((tf.constant(raw_arrays), tf.range(len(arrays), dtype=tf.int64)))
        c_ba, c_ob, cratio = _compare(csrc.map(cba), m, csrc.map(cobvious), m)
        print(f"| {m} | {r_ba:.0f} | {r_ob:.0f} | {ratio:.2f}x | {c_ba:.0f} | {c_ob:.0f} | {cratio:.2f}x |",
              flush=True)
    _profile(jpegs, imagenet, seed)


def _profile(jpegs, imagenet, seed, n: int = 200) -> None:
    """Per-image cost of each stage on one thread: what bounds the BA speed-up."""
    j = tf.constant(jpegs[0])
    img = tf.io.decode_jpeg(j, channels=3)
    stages = {
        "decode_jpeg (full image)": tf.function(lambda: tf.io.decode_jpeg(j, channels=3)),
        "decode_and_crop_jpeg + resize + flip (one copy of path ii)":
            tf.function(lambda: aug.decode_and_crop_imagenet(j, seed(0, 0))),
        "crop + resize 224 + flip on decoded pixels (one BA copy)": tf.function(lambda: imagenet(img, seed(0, 0))),
    }
    cost = {}
    for name, fn in stages.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        cost[name] = (time.perf_counter() - t0) / n * 1e3
    print("\n| stage | ms per image (1 thread) |\n|---|---|")
    for name, ms in cost.items():
        print(f"| {name} | {ms:.2f} |")
    d, dc, a = cost.values()
    print("\nBound on the BA speed-up at M copies: (decode_and_crop + its resize) / (decode / M + resize) = "
          + ", ".join(f"M={m}: {dc / (d / m + a):.2f}x" for m in (1, 2, 4, 8)), flush=True)


def bench_bcast(n_images: int = 64, steps: int = 6, b: int = 16) -> None:
    from ba_dist import dist
    from ba_dist.data import broadcast, sources
    from ba_dist.data.loader import GroupLoader, PipelineSpec
    from ba_dist.data.sampler import GroupSampler
    ctx = dist.init(m_ranks=int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    t, comm = ctx.topology, ctx.group_comm
    root = ctx.world_comm.bcast(tempfile.mkdtemp(prefix="ba_bench_") if t.rank == 0 else None, root=0)
    if t.rank == 0:
        os.makedirs(f"{root}/train/c0")
        for k, j in enumerate(make_jpegs(n_images)):
            with open(f"{root}/train/c0/{k:04d}.jpg", "wb") as f:
                f.write(j)
    ctx.world_comm.Barrier()
    src = sources.get_source("folder", split="train", data_dir=root, empty_class="error")
    sampler = GroupSampler(len(src), t.num_groups, b, seed=0)
    rows = []
    for mode in ("decoded", "encoded", "none"):
        spec = PipelineSpec(per_rank_unique=b, broadcast=mode, read_threads=1, prefetch=2)
        rates = []
        for _ in range(3):
            loader = GroupLoader(src, sampler, spec, t, num_steps=steps)
            ctx.world_comm.Barrier()
            t0 = time.perf_counter()
            n = sum(len(ids) for _, _, ids, _, _ in loader)
            rates.append(n / (time.perf_counter() - t0))
        rows.append((mode, statistics.median(ctx.world_comm.allgather(statistics.median(rates)))))
    # The send alone, as the loader makes it: the reader's read threads have put
    # each decoded image into a DecodedPayload (done here before the clock starts,
    # timed apart: the copy moved into the decode threads), and the loader's
    # DecodedSender sends it as one Bcast (header + pixels, the header announcing
    # the next step); DecodedReceiver gets it on the others. Against it: one raw
    # Bcast of the same bytes into a buffer allocated once. The two alternate;
    # medians of 20 steps each.
    images = [src.load(i) for i in range(b)] if t.is_reader else None
    ids, labels = np.arange(b), np.zeros(b, np.int64)

    def fill(capacity=0):  # the loader reserves the largest step so far + 25%
        payload = broadcast.DecodedPayload(b, capacity)
        for k, im in enumerate(images):
            payload.put(k, im)
        return payload

    channel = dist.group_channel()  # what the loader sends on; `comm` is the raw-MPI baseline
    if t.is_reader:
        payload = fill()
        capacity = payload.nbytes * 5 // 4
        raw = payload.message.copy()
        sender = broadcast.DecodedSender(channel, b)
        sender.push_step(ids, labels, payload)  # opens the stream: announces the first step
    else:
        receiver = broadcast.DecodedReceiver(channel, b)
    nbytes = comm.bcast(raw.size if t.is_reader else None, root=0)
    raw = raw if t.is_reader else np.empty(nbytes, np.uint8)
    t_ba, t_raw, t_put = [], [], []
    for _ in range(20):
        if t.is_reader:
            t0 = time.perf_counter()
            payload = fill(capacity)
            t_put.append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        if t.is_reader:
            sender.push_step(ids, labels, payload)  # sends the step before it
        else:
            receiver.recv()
        comm.Barrier()
        t_ba.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        comm.Bcast(raw, root=0)
        comm.Barrier()
        t_raw.append(time.perf_counter() - t0)
    if t.is_reader:
        sender.close()
    else:
        receiver.recv()
        receiver.recv_end()
    bw_ba, bw_raw = nbytes / statistics.median(t_ba) / 2**20, nbytes / statistics.median(t_raw) / 2**20
    per_pair = statistics.median(r / d for d, r in zip(t_ba, t_raw))  # neighbours in time: robust to load shifts
    if t.rank == 0:
        print(f"## Group of {t.world_size} ranks, {b} unique JPEGs (375x500) per step, {steps} steps\n")
        print("| broadcast | unique images/s per rank | vs 'none' |")
        print("|---|---|---|")
        none = dict(rows)["none"]
        for mode, r in rows:
            print(f"| {mode} | {r:.0f} | {r / none:.2f}x |")
        print(f"\nDecoded-image broadcast of {nbytes / 2**20:.1f} MiB per step (DecodedSender: one Bcast of "
              f"the reader's payload): {bw_ba:.0f} MiB/s vs raw MPI Bcast of the same bytes {bw_raw:.0f} MiB/s = "
              f"{bw_ba / bw_raw:.0%} (median of the 20 pairs' ratios: {per_pair:.0%}); the reader's copy into the payload, made in its read threads: "
              f"{statistics.median(t_put) * 1e3:.1f} ms per step", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "augment"
    {"augment": bench_augment, "bcast": bench_bcast}[what]()
