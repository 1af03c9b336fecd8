"""Where the BA copies are made, and how fast: ``ba-bench copies``.

Times one step's copy-making (:func:`ba_dist.ba.copies`: ``m`` copies of each
of ``b`` unique uint8 images, zero-padded to one size) on the host CPU and on
the device the train step would use (``input.copies_on='auto'``: the first
GPU when TensorFlow sees one). On the device each timed step first moves the
step's unique uint8 images there (as ``model.fit`` does with a unique batch),
then makes the copies. It prints the device the copies were made on, so a
GPU user can check that ``copies_on`` puts them there, and both rates::

    ba-bench copies [--transform imagenet --source-size 375x500 --unique 32 --copies 4 --repeats 5]

On the host the copies are made as ``tf.data`` makes them (with the host
kernels, e.g. OpenCV's resize for the Inception crop); on the device with
TensorFlow ops only. On a machine without a GPU both rows are the CPU, and
the device row then shows what the TensorFlow ops cost there.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as aug

__all__ = ["copy_device", "measure", "markdown"]


def copy_device() -> str:
    """The device ``input.copies_on='auto'`` makes the copies on: the first visible GPU, else the CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name


def _images(b: int, height: int, width: int, seed: int = 0):
    """b random uint8 images of sizes around height x width, zero-padded into one batch, and their sizes."""
    rng = np.random.default_rng(seed)
    sizes = np.stack([rng.integers(int(height * 0.8), height + 1, b), rng.integers(int(width * 0.8), width + 1, b)], 1)
    batch = np.zeros((b, height, width, 3), np.uint8)
    for k, (h, w) in enumerate(sizes):
        batch[k, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return batch, sizes.astype(np.int32)


def measure(transform: str = "imagenet", height: int = 375, width: int = 500, b: int = 32, m: int = 4,
            repeats: int = 5, steps: int = 6) -> list[dict]:
    """Copies/s (``m * b`` per step) on the host and on :func:`copy_device`, median of ``repeats`` runs.

    Returns one row per placement: ``placement``, ``device`` (where the copies'
    tensor was made), ``copies_per_sec``, ``ms_per_copy``.
    """
    op = aug.get_augment(transform)
    batch, sizes = _images(b, height, width)
    draws = tf.stack([ba.copy_draws(0, 0, 0, i, m, op.draws) for i in range(b)])
    host_images = tf.constant(batch)
    rows = []
    for placement, device in (("host", tf.config.list_logical_devices("CPU")[0].name), ("device", copy_device())):
        if placement == "host":
            # as ba-train's tf.data makes them: host kernels, several steps in flight
            # (map with AUTOTUNE parallel calls), so every core can work
            ds = tf.data.Dataset.range(steps).map(
                lambda _: ba.copies(host_images, sizes, draws, op, host=True),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)

            def run(ds=ds):
                out = None
                for out in ds:
                    pass
                return out
        else:
            @tf.function
            def step(images, device=device):
                with tf.device(device):   # TensorFlow ops only, in the train step
                    return ba.copies(tf.identity(images), sizes, draws, op)   # identity: the transfer

            def run(images=host_images, step=step):
                out = None
                for _ in range(steps):
                    out = step(images)
                return out
        out = run()   # trace, warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = run()
            _ = out.numpy()[0, 0, 0, 0]   # wait for the device
            times.append((time.perf_counter() - t0) / steps)
        per_step = statistics.median(times)
        rows.append({"placement": placement, "device": out.device, "copies_per_sec": m * b / per_step,
                     "ms_per_copy": per_step / (m * b) * 1e3})
    return rows


def markdown(rows: list[dict], transform: str, height: int, width: int, b: int, m: int,
             say: Callable[[str], None] = print) -> str:
    host, dev = rows
    same = host["device"] == dev["device"]
    lines = [f"Copies of {b} unique uint8 images (up to {height}x{width}) x {m}, transform '{transform}':", "",
             "| placement | made on | copies/s | ms per copy |", "|---|---|---|---|"]
    lines += [f"| {r['placement']} | {r['device']} | {r['copies_per_sec']:.0f} | {r['ms_per_copy']:.3f} |"
              for r in rows]
    lines.append("")
    if same:
        lines.append("No GPU visible: input.copies_on='auto' makes the copies on the host (both rows are the CPU; "
                     "the device row is the TensorFlow ops a GPU would run, here on the CPU).")
    else:
        lines.append(f"input.copies_on='auto' makes the copies on {dev['device']}: "
                     f"{dev['copies_per_sec'] / host['copies_per_sec']:.2f}x the host's copies/s.")
    return "\n".join(lines)
