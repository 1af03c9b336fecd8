"""Input-pipeline benchmark for Batch Augmentation (issue 3).

Two parts, each comparing against the obvious alternative in the same run
(ratios, not absolute numbers: the machines are shared and noisy):

  augment  (1 process)   augmented images/s per core at M = 1, 2, 4, 8:
           BA path   = decode each JPEG once, then all M x b copies of a step in
                       one batched op (ba.copies, host kernel), as ba-train's
                       tf.data makes them
           obvious   = every copy decoded on its own with decode_and_crop_jpeg
           and for CIFAR-style uint8 arrays (no decode to save): batched copies
           against a per-sample map with one op call per copy (before issue 15).
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


def bench_augment(n_jpegs: int = 48, b: int = 8, ms=(1, 2, 4, 8)) -> None:
    import cv2
    from ba_dist import ba
    cv2.setNumThreads(1)  # one core, as TF's intra-op pool here (TF_NUM_INTRAOP_THREADS=1)
    jpegs = make_jpegs(n_jpegs)
    imagenet = aug.get_augment("imagenet")
    cifar = aug.get_augment("cifar")
    arrays = np.random.default_rng(0).integers(0, 255, (512, 32, 32, 3), dtype=np.uint8)
    print(f"## Augmented images/s per core (1 tf.data thread), {n_jpegs} JPEGs of "
          f"{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB (375x500), 512 CIFAR arrays, "
          f"{b} unique images per step\n")
    print("| M | JPEG: BA (decode once, batched copies) | JPEG: decode_and_crop per copy | ratio | "
          "CIFAR: BA batched copies | CIFAR: per-sample map of per-copy ops | ratio |")
    print("|---|---|---|---|---|---|---|")

    def draws(op, i, m):
        return ba.copy_draws(7, 0, 0, i, m, op.draws)

    raw_arrays = [a.tobytes() for a in arrays]
    for m in ms:
        # BA, what ba-train does: per image one decode and the copies' draws; per step the b
        # images zero-padded into one batch and all m x b copies in one batched op.
        def ba_draw(j, i, m=m):
            img = tf.io.decode_jpeg(j, channels=3)  # once
            return img, tf.shape(img)[:2], draws(imagenet, i, m)

        def ba_copies(x, sizes, u):
            return ba.copies(x, sizes, u, imagenet, host=True)  # in tf.data: the host kernel

        # obvious: every copy decoded on its own (only its window), same draws per copy
        def obvious(j, i, m=m):
            seed = ba.sample_seed(7, 0, 0, i)
            return tf.stack([aug.decode_and_crop_imagenet(j, tf.random.experimental.stateless_fold_in(seed, c))
                             for c in range(m)])

        def cba_draw(r, i, m=m):
            return tf.reshape(tf.io.decode_raw(r, tf.uint8), [32, 32, 3]), tf.constant([32, 32]), draws(cifar, i, m)

        def cba_copies(x, sizes, u):
            return ba.copies(x, None, u, cifar)

        def cper_sample(r, i, m=m):   # before issue 15: per sample, one op call per copy
            x = tf.reshape(tf.io.decode_raw(r, tf.uint8), [32, 32, 3])
            seed = ba.sample_seed(7, 0, 0, i)
            return tf.stack([cifar(x, tf.random.experimental.stateless_fold_in(seed, c)) for c in range(m)])

        src = tf.data.Dataset.from_tensor_slices((tf.constant(jpegs), tf.range(len(jpegs), dtype=tf.int64)))
        r_ba, r_ob, ratio = _compare(src.map(ba_draw).padded_batch(b).map(ba_copies), m * b,
                                     src.map(obvious), m)
        csrc = tf.data.Dataset.from_tensor_slices((tf.constant(raw_arrays), tf.range(len(arrays), dtype=tf.int64)))
        c_ba, c_ob, cratio = _compare(csrc.map(cba_draw).batch(b).map(cba_copies), m * b,
                                      csrc.map(cper_sample), m)
        print(f"| {m} | {r_ba:.0f} | {r_ob:.0f} | {ratio:.2f}x | {c_ba:.0f} | {c_ob:.0f} | {cratio:.2f}x |",
              flush=True)
    _profile(jpegs, imagenet, b)


def _timed(fn, n: int) -> float:
    """ms per call of a tf.function after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def _profile(jpegs, imagenet, b: int, m: int = 4, n: int = 100) -> None:
    """Per-image cost of each stage on one thread: what bounds the BA speed-up."""
    from ba_dist import ba
    jpeg_t = [tf.constant(x) for x in jpegs[:b]]
    imgs = [tf.io.decode_jpeg(tf.constant(x), channels=3) for x in jpegs[:b]]
    hw = tf.stack([tf.shape(x)[:2] for x in imgs])
    batch = tf.stack([tf.image.pad_to_bounding_box(x, 0, 0, int(tf.reduce_max(hw[:, 0])), int(tf.reduce_max(hw[:, 1])))
                      for x in imgs])
    u = tf.stack([ba.copy_draws(7, 0, 0, i, m, imagenet.draws) for i in range(b)])
    rows = m * b
    index = tf.tile(tf.range(b), [m])
    flat_u = tf.reshape(tf.transpose(u, [1, 0, 2]), [rows, -1])
    windows = aug.inception_windows(tf.gather(hw, index), flat_u[:, :-1])
    boxes = tf.cast(tf.stack([windows[:, 0], windows[:, 1], windows[:, 0] + windows[:, 2] - 1,
                              windows[:, 1] + windows[:, 3] - 1], 1), tf.float32)
    boxes = boxes / tf.cast(tf.tile([[tf.shape(batch)[1] - 1, tf.shape(batch)[2] - 1]], [1, 2]), tf.float32)

    def before_issue_15(image, seed):   # the per-copy op as it was: TF's sampler, slice, cast, resize, flip
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.0,
            aspect_ratio_range=aug.INCEPTION_ASPECT_RANGE, area_range=aug.INCEPTION_AREA_RANGE,
            use_image_if_no_bounding_boxes=True)
        crop = tf.cast(tf.slice(image, begin, size), tf.float32)
        return tf.image.stateless_random_flip_left_right(tf.image.resize(crop, [224, 224]), seed=flip_seed)

    seeds = [tf.constant([7, k], tf.int64) for k in range(rows)]
    copies_u8 = aug._host_crop_resize(batch, index, windows, flat_u[:, -1] < 0.5, 224, rows)
    per_copy = {
        f"decode_jpeg (full image), {b} images in one graph, per image": (tf.function(
            lambda: [tf.io.decode_jpeg(x, channels=3) for x in jpeg_t]), b),
        f"decode_and_crop_jpeg + flip + resize (one copy of the obvious path), {b} in one graph, per copy": (
            tf.function(lambda: tf.stack([aug.decode_and_crop_imagenet(x, seeds[k]) for k, x in enumerate(jpeg_t)])), b),
        f"one BA copy: ba.copies of {b} images x {m} copies on the host (OpenCV resize), per copy": (
            tf.function(lambda: ba.copies(batch, hw, u, imagenet, host=True)), rows),
        "  the same with TensorFlow ops only (the device path; the host path before OpenCV), per copy": (
            tf.function(lambda: ba.copies(batch, hw, u, imagenet)), rows),
        f"  before issue 15: the per-copy op, {rows} copies of the same images, per copy": (tf.function(
            lambda: tf.stack([before_issue_15(imgs[k % b], seeds[k]) for k in range(rows)])), rows),
        "  of which: the host kernel alone (one tf.numpy_function: slice, OpenCV resize, flip; uint8 out), per copy": (
            tf.function(lambda: aug._host_crop_resize(batch, index, windows, flat_u[:, -1] < 0.5, 224, rows)), rows),
        "  of which: the cast of the copies to float32, per copy": (
            tf.function(lambda: tf.cast(copies_u8, tf.float32)), rows),
        "  of which: crop windows of all rows (vectorised sampler), per copy": (
            tf.function(lambda: aug.inception_windows(tf.gather(hw, index), flat_u[:, :-1])), rows),
        f"  before issue 15: TF's sample_distorted_bounding_box, {rows} calls in one graph, per copy": (
            tf.function(lambda: tf.stack([tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(imgs[0]), tf.zeros([1, 0, 4]), seed=seeds[k], min_object_covered=0.0,
                aspect_ratio_range=aug.INCEPTION_ASPECT_RANGE, area_range=aug.INCEPTION_AREA_RANGE,
                use_image_if_no_bounding_boxes=True)[1] for k in range(rows)])), rows),
        "alternative: one crop_and_resize over all boxes (uint8 in), per copy": (tf.function(
            lambda: tf.image.crop_and_resize(batch, boxes, index, [224, 224])), rows),
    }
    cost = {name: _timed(fn, n) / per for name, (fn, per) in per_copy.items()}
    print("\n| stage (several in one graph: no per-call overhead) | ms per image or copy (1 thread) |\n|---|---|")
    for name, ms in cost.items():
        print(f"| {name} | {ms:.3f} |")
    d, dc, a = list(cost.values())[:3]
    print("\nBound on the BA speed-up at M copies: (decode_and_crop + its resize) / (decode / M + one BA copy) = "
          + ", ".join(f"M={k}: {dc / (d / k + a):.2f}x" for k in (1, 2, 4, 8)), flush=True)


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
    # the next step, so a step leaves one step after it was filled);
    # DecodedReceiver gets it on the others. Against it, one raw Bcast of the same
    # bytes, written at the same point of the loop (each step's bytes copied into
    # one of two raw buffers when the step is filled, sent one step later), so both
    # sends read bytes as recently written as the other's. For reference also the
    # old baseline: one raw Bcast of a buffer sent again unchanged every step,
    # whose source and destination stay in the CPU cache (no stream of new data
    # has that). The order alternates each step; medians of 30 steps each.
    images = [src.load(i) for i in range(b)] if t.is_reader else None
    ids, labels = np.arange(b), np.zeros(b, np.int64)

    pool = broadcast.BufferPool()  # the reader's, as in the loader

    def fill(capacity=0):  # the loader reserves the largest step so far + 25%
        payload = broadcast.DecodedPayload(b, capacity, pool=pool)
        for k, im in enumerate(images):
            payload.put(k, im)
        return payload

    channel = dist.group_channel()  # what the loader sends on; `comm` is the raw-MPI baseline
    if t.is_reader:
        payload = fill()
        capacity = payload.nbytes * 5 // 4
        unchanged = payload.message.copy()
        sender = broadcast.DecodedSender(channel, b)
        sender.push_step(ids, labels, payload)  # opens the stream: announces the first step
    else:
        receiver = broadcast.DecodedReceiver(channel, b)
    nbytes = comm.bcast(unchanged.size if t.is_reader else None, root=0)
    raw = [unchanged.copy(), unchanged.copy()] if t.is_reader else [np.empty(nbytes, np.uint8)] * 2
    unchanged = unchanged if t.is_reader else np.empty(nbytes, np.uint8)
    times = {"decoded": [], "raw": [], "unchanged": []}

    def timed(name, send):
        comm.Barrier()
        t0 = time.perf_counter()
        send()
        comm.Barrier()
        times[name].append(time.perf_counter() - t0)

    sends = {
        "decoded": lambda: sender.push_step(ids, labels, payload) if t.is_reader else receiver.recv(),
        "raw": lambda: comm.Bcast(raw[(step - 1) % 2], root=0),  # the bytes filled one step ago
        "unchanged": lambda: comm.Bcast(unchanged, root=0),
    }
    t_put = []
    for step in range(1, 31):
        if t.is_reader:
            t0 = time.perf_counter()
            payload = fill(capacity)  # sent by the next step's push
            t_put.append(time.perf_counter() - t0)
            raw[step % 2][:] = payload.message
        for name in (("decoded", "raw") if step % 2 else ("raw", "decoded")) + ("unchanged",):
            timed(name, sends[name])
    if t.is_reader:
        sender.close()
    else:
        receiver.recv()
        receiver.recv_end()
    bw = {k: nbytes / statistics.median(v) / 2**20 for k, v in times.items()}
    per_pair = statistics.median(r / d for d, r in zip(times["decoded"], times["raw"]))  # neighbours in time
    if t.rank == 0:
        print(f"## Group of {t.world_size} ranks, {b} unique JPEGs (375x500) per step, {steps} steps\n")
        print("| broadcast | unique images/s per rank | vs 'none' |")
        print("|---|---|---|")
        none = dict(rows)["none"]
        for mode, r in rows:
            print(f"| {mode} | {r:.0f} | {r / none:.2f}x |")
        print(f"\nDecoded-image broadcast of {nbytes / 2**20:.1f} MiB per step (DecodedSender: one Bcast of "
              f"the reader's payload): {bw['decoded']:.0f} MiB/s vs raw MPI Bcast of the same bytes, as recently "
              f"written, {bw['raw']:.0f} MiB/s = {bw['decoded'] / bw['raw']:.0%} (median of the 30 pairs' ratios: "
              f"{per_pair:.0%}); raw Bcast of one unchanged buffer sent again every step (cache-resident, the old "
              f"baseline): {bw['unchanged']:.0f} MiB/s; the reader's copy into the payload, made in its read "
              f"threads: {statistics.median(t_put) * 1e3:.1f} ms per step", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "augment"
    {"augment": bench_augment, "bcast": bench_bcast}[what]()
