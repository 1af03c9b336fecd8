"""Training throughput: images/s vs per-rank batch size, and data-parallel scaling.

The paper's appendix B (Table 3) times ResNet-50 training on one P100 for every
batch size that fits (median of 200 runs: 29.9 images/s at batch 1, 53.9 at
2, ..., 247.9 at 128) to argue that BA should fill each device: utilization
grows with the local batch until the device saturates, so M copies per rank
come almost for free below that point.

What is timed here is the real training step, :class:`ba_dist.train_step.BATrainModel`
``train_step`` (forward, backward, Horovod gradient average, SGD momentum
update), on synthetic tensors that already sit in memory: the input pipeline
is excluded on purpose (it is the paper's separate I/O argument). Per batch
size: ``warmup`` steps (tracing included) are discarded, then ``repeats``
timed runs of ``steps`` steps each (at least ``min_images`` images per rank,
so tiny batches are not timed over a few milliseconds). A run's time is the
slowest rank's, and ::

    images/s = steps x per-rank batch x N ranks / time     (augmented copies, whole job)

The table reports the median and the standard deviation over the repeats.
:func:`run_scaling` launches the same measurement under ``mpirun -np k`` for
k = 1..N with a fixed per-rank batch and fixed threads per rank (weak scaling),
and reports speed-up and efficiency against k x the 1-rank throughput.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "BenchSpec",
    "build_bench_model",
    "measure",
    "sweep",
    "markdown_throughput",
    "plot_throughput",
    "scaling_rows",
    "markdown_scaling",
    "plot_scaling",
    "run_scaling",
]

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """What to time. ``image_size`` x ``image_size`` x ``channels`` synthetic inputs."""

    model: str
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    bn: str = "batch"
    repeats: int = 5
    steps: int = 5
    min_images: int = 64
    warmup: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("image_size", "channels", "num_classes", "repeats", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.min_images < 0:
            raise ValueError(f"warmup and min_images must be >= 0, got {self.warmup}, {self.min_images}")

    @property
    def input_shape(self) -> tuple:
        return (self.image_size, self.image_size, self.channels)

    def steps_for(self, batch_size: int) -> int:
        return max(self.steps, math.ceil(self.min_images / batch_size))

    def describe(self) -> str:
        h, w, c = self.input_shape
        return f"{self.model} on {h}x{w}x{c} synthetic inputs, {self.num_classes} classes, bn '{self.bn}'"


def build_bench_model(spec: BenchSpec):
    """A compiled :class:`BATrainModel` for ``spec`` (SGD momentum, constant small LR, wd 1e-4)."""
    from ba_dist import models, optim, train_step as trainer
    net = models.build_model(spec.model, spec.num_classes, spec.input_shape, bn=spec.bn)
    model = trainer.BATrainModel(net, weight_decay=1e-4)
    model.compile(optimizer=optim.make_optimizer(0.01, momentum=0.9))
    return model


def measure(model, batch_size: int, spec: BenchSpec) -> dict:
    """Time ``model.train_step`` at one per-rank batch size (see module docstring).

    Args:
      model: a compiled BATrainModel whose input shape matches ``spec``.
      batch_size: examples per rank per step.
      spec: repeats, steps, warmup.

    Returns:
      ``{"batch_size", "ranks", "steps", "repeats", "images_per_sec" (median), "std",
      "per_rank_images_per_sec", "values"}``; images are augmented copies, whole job.
      Every rank of the job (``dist.init`` first) must call it.
    """
    import tensorflow as tf
    from ba_dist import dist
    ranks = dist.context().size
    seed = tf.constant([spec.seed, batch_size], tf.int64)
    x = tf.random.stateless_normal((batch_size,) + spec.input_shape, seed)
    y = tf.one_hot(tf.random.stateless_uniform([batch_size], seed, 0, spec.num_classes, tf.int32),
                   spec.num_classes)
    step = tf.function(model.train_step)   # a fresh trace per batch size, as fit would do
    steps = spec.steps_for(batch_size)
    for _ in range(spec.warmup):
        out = step((x, y))
    if spec.warmup:
        float(out["loss"])
    values = []
    for _ in range(spec.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step((x, y))
        float(out["loss"])  # waits for the last step
        dt = dist.allreduce_max(time.perf_counter() - t0)  # the slowest rank's time
        values.append(steps * batch_size * ranks / dt)
    med, std = statistics.median(values), statistics.pstdev(values)
    return {"batch_size": batch_size, "ranks": ranks, "steps": steps, "repeats": spec.repeats,
            "images_per_sec": med, "std": std, "per_rank_images_per_sec": med / ranks, "values": values}


def sweep(spec: BenchSpec, batch_sizes: Sequence[int],
          log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """:func:`measure` for every batch size, smallest first.

    On one rank the sweep stops at the first batch that does not fit in memory
    (that row is marked ``"oom": true``). Under mpirun an out-of-memory error
    aborts the job instead (the other ranks would wait in the allreduce), so
    give ``batch_sizes`` that fit.
    """
    import tensorflow as tf
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    from ba_dist import dist
    model = build_bench_model(spec)
    rows = []
    for b in sorted(set(batch_sizes)):
        try:
            row = measure(model, b, spec)
        except tf.errors.ResourceExhaustedError:
            if dist.context().size > 1:
                raise
            rows.append({"batch_size": b, "oom": True})
            log(f"batch {b}: out of memory, sweep stopped")
            break
        rows.append(row)
        log(f"batch {b}: {row['images_per_sec']:.1f} ± {row['std']:.1f} images/s "
            f"({row['repeats']} x {row['steps']} steps)")
    return rows


def markdown_throughput(rows: Sequence[dict], spec: BenchSpec, threads: Optional[int] = None) -> str:
    """Table 3 layout: per-rank batch, median images/s, std, and the gain over the previous batch."""
    ranks = next((r["ranks"] for r in rows if "ranks" in r), 1)
    note = f"{spec.describe()}; {ranks} rank(s)" + (f" x {threads} thread(s)" if threads else "")
    out = [f"Training throughput, {note}; median and std over {spec.repeats} repeats.", "",
           "| per-rank batch | images/s | std | x previous |", "|---|---|---|---|"]
    prev = None
    for r in rows:
        if r.get("oom"):
            out.append(f"| {r['batch_size']} | out of memory | | |")
            continue
        gain = "" if prev is None else f"{r['images_per_sec'] / prev:.2f}"
        out.append(f"| {r['batch_size']} | {r['images_per_sec']:.1f} | {r['std']:.1f} | {gain} |")
        prev = r["images_per_sec"]
    return "\n".join(out)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_throughput(rows: Sequence[dict], path, title: str = ""):
    """images/s (median, std error bars) vs per-rank batch, log-log; returns the Figure."""
    plt = _pyplot()
    ok = [r for r in rows if not r.get("oom")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar([r["batch_size"] for r in ok], [r["images_per_sec"] for r in ok],
                yerr=[r["std"] for r in ok], marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")   # linear scaling shows as slope 1
    ax.set_xlabel("per-rank batch size")
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def scaling_rows(results: Sequence[dict]) -> list[dict]:
    """Speed-up and efficiency of k-rank throughputs against k x the 1-rank one.

    Args:
      results: one :func:`measure` row per rank count, including ``ranks == 1``.
    """
    by_ranks = {r["ranks"]: r for r in results}
    if 1 not in by_ranks:
        raise ValueError("scaling needs the 1-rank measurement as its baseline")
    base = by_ranks[1]["images_per_sec"]
    return [dict(by_ranks[k], speedup=by_ranks[k]["images_per_sec"] / base,
                 efficiency=by_ranks[k]["images_per_sec"] / (k * base)) for k in sorted(by_ranks)]


def markdown_scaling(rows: Sequence[dict], spec: BenchSpec, batch_size: int, threads: int) -> str:
    out = [f"Data-parallel scaling, {spec.describe()}; per-rank batch {batch_size}, {threads} thread(s) "
           f"per rank; median and std over {spec.repeats} repeats.", "",
           "| ranks | images/s | std | per rank | speed-up | efficiency |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['ranks']} | {r['images_per_sec']:.1f} | {r['std']:.1f} | "
                   f"{r['per_rank_images_per_sec']:.1f} | {r['speedup']:.2f} | {100 * r['efficiency']:.0f}% |")
    return "\n".join(out)


def plot_scaling(rows: Sequence[dict], path, title: str = ""):
    """images/s vs ranks with the linear ideal; returns the Figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [r["ranks"] for r in rows]
    base = rows[0]["images_per_sec"] / rows[0]["ranks"]
    ax.errorbar(ks, [r["images_per_sec"] for r in rows], yerr=[r["std"] for r in rows],
                marker="o", capsize=3, label="measured")
    ax.plot(ks, [k * base for k in ks], "--", color="gray", label="linear")
    ax.set_xlabel("ranks")
    ax.set_ylabel("images / s")
    ax.set_xticks(ks)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


MPIRUN_FLAGS = ("--allow-run-as-root", "--oversubscribe", "--bind-to", "none")


def run_scaling(spec: BenchSpec, max_ranks: int, batch_size: int, threads: int, mpirun: str = "mpirun",
                timeout: float = 1800, log: Callable[[str], None] = print) -> list[dict]:
    """Launch ``mpirun -np k`` throughput runs for k = 1..max_ranks; returns :func:`scaling_rows`.

    Every rank gets ``threads`` TensorFlow/OpenMP threads whatever k is, so
    k ranks use k times the cores of one (weak scaling at a fixed per-rank batch).

    Raises:
      RuntimeError: a launch failed (its output is in the message).
    """
    if max_ranks < 1:
        raise ValueError(f"max_ranks must be >= 1, got {max_ranks}")
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        raise RuntimeError("run the scaling benchmark outside mpirun: it launches mpirun itself")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
               TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    results = []
    with tempfile.TemporaryDirectory(prefix="ba-scaling-") as tmp:
        for k in range(1, max_ranks + 1):
            out = Path(tmp) / f"ranks{k}.json"
            cmd = [mpirun, *MPIRUN_FLAGS, "-np", str(k)]
            for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                        "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH"):
                cmd += ["-x", var]
            cmd += [sys.executable, "-m", "ba_dist.analysis.cli", "throughput", "--model", spec.model,
                    "--image-size", str(spec.image_size), "--channels", str(spec.channels),
                    "--num-classes", str(spec.num_classes), "--bn", spec.bn,
                    "--batch-sizes", str(batch_size), "--repeats", str(spec.repeats),
                    "--steps", str(spec.steps), "--min-images", str(spec.min_images),
                    "--warmup", str(spec.warmup), "--seed", str(spec.seed), "--threads", str(threads),
                    "--json", str(out), "--quiet"]
            log(f"[ba-bench] {k} rank(s): {' '.join(cmd[:cmd.index(sys.executable)])} ...")
            try:
                res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"{k}-rank throughput run timed out after {timeout:.0f}s") from e
            if res.returncode != 0 or not out.is_file():
                raise RuntimeError(f"{k}-rank throughput run failed (exit {res.returncode}):\n"
                                   f"{res.stdout[-4000:]}")
            row = json.loads(out.read_text())["rows"][0]
            log(f"[ba-bench] {k} rank(s): {row['images_per_sec']:.1f} ± {row['std']:.1f} images/s")
            results.append(row)
    return scaling_rows(results)
