"""Preflight: check the node, the software build and the limits before any rank reads data.

A 512-node job that fails after 20 minutes in the queue plus 10 minutes of start-up because
one node has no GPU, the driver is too old for the CUDA that TensorFlow was built with, MPI
grants no thread support, or the open-file limit is below the number of shards, wastes
hours of allocation; these checks take about a second. Rank 0 prints what it found; every
rank checks its own node; the verdicts are combined over all ranks (one small MPI
allreduce), so either every rank goes on or every rank exits 2 with the failures and their
fixes. ba-train runs it first thing (so every sbatch template does, on every node);
``ba-train --preflight-only`` runs just this.

It runs before ``dist.init`` on purpose (a Horovod or MPI that cannot work is among the things
it checks, and no rank should be left waiting in Horovod's start-up for one that failed), so
it uses only what ``ba_dist.dist`` offers before ``dist.init``: the build queries
(``horovod_build``, ``mpi_thread_level``, ``node_local_size``) and the MPI-only collectives.

Checks:
  * Python, TensorFlow, Horovod versions; Horovod built with TensorFlow (``[X] TensorFlow``
    of ``horovodrun --check-build``) and MPI (ba_dist launches with MPI); NCCL/Gloo shown.
  * GPUs, when asked for (``BA_EXPECT_GPUS=1``, set by the GPU site block of slurm/common.sh):
    TensorFlow built with CUDA, one visible GPU per rank of the node, and an NVIDIA driver
    new enough for TensorFlow 2.15's CUDA 12.2 (>= 525.60.13, see MIN_DRIVER).
  * MPI thread level: the group loader broadcasts (mpi4py) in a thread while Horovod's
    background thread calls MPI, so MPI must grant ``MPI_THREAD_MULTIPLE`` (Cray MPICH only
    with ``MPICH_MAX_THREAD_SAFETY=multiple``).
  * Host memory: the decoded broadcast buffers, ``(prefetch + 2) x b x decoded image bytes
    x 1.25`` per rank (steps in flight, the buffer pool's headroom), times the ranks of the
    node, must fit in ``MemAvailable``.
  * Open files: a reader keeps every shard file of both splits open; the soft limit is
    raised to the hard one when that suffices, else it is a failure.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import platform
import resource
import sys
from typing import Optional

__all__ = ["MIN_DRIVER", "PreflightFailed", "Report", "check", "run"]

# TensorFlow 2.15's tested build is CUDA 12.2 / cuDNN 8.9 (tensorflow.org/install/source#gpu;
# `tensorflow[and-cuda]==2.15.1` installs those CUDA 12 libraries). A CUDA 12.x runtime needs
# a driver of the 12.x family, >= 525.60.13 on Linux x86_64 (NVIDIA, "CUDA Compatibility:
# minor version compatibility", and the CUDA 12 toolkit release notes, table 2).
MIN_DRIVER = (525, 60, 13)
# Decoded bytes per image when the images have no fixed size (ImageNet JPEGs average about
# 400 x 350 px; 500 x 500 x 3 leaves a margin for the larger ones).
VARIABLE_SIZE_IMAGE_BYTES = 500 * 500 * 3
FD_MARGIN = 128   # descriptors besides the shards: libraries, MPI sockets, checkpoints, logs


class PreflightFailed(SystemExit):
    """Exit code 2 after the failures were printed (a config/environment error)."""

    def __init__(self):
        super().__init__(2)


@dataclasses.dataclass
class Report:
    """What one rank found: ``info`` lines (printed by rank 0) and ``failures`` (each with its fix)."""
    info: list = dataclasses.field(default_factory=list)
    failures: list = dataclasses.field(default_factory=list)

    def fail(self, what: str, fix: str) -> None:
        self.failures.append(f"{what}. Fix: {fix}")


def _versions(r: Report, expect_gpus: bool) -> None:
    import tensorflow as tf
    from ba_dist import dist
    built = dist.horovod_build()
    version = built.pop("version")
    built["CUDA (TF)"] = tf.test.is_built_with_cuda()
    r.info.append(f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Horovod {version}: "
                  + ", ".join(f"[{'X' if v else ' '}] {k}" for k, v in built.items()))
    if not built["TensorFlow"]:
        r.fail("Horovod was built without TensorFlow support ([ ] TensorFlow)",
               "reinstall it with HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 pip install --no-cache-dir "
               "horovod==0.28.1 (docs/install.md)")
    if not built["MPI"]:
        r.fail("Horovod was built without MPI ([ ] MPI), and ba_dist launches with MPI",
               "reinstall it with HOROVOD_WITH_MPI=1 against the site MPI (docs/install.md)")
    if expect_gpus and not built["NCCL"]:
        r.info.append("note: Horovod has no NCCL: GPU allreduce goes through MPI (HOROVOD_GPU_OPERATIONS=NCCL "
                      "at build time is faster, docs/install.md)")


def driver_version(path: str = "/proc/driver/nvidia/version") -> Optional[tuple]:
    """The loaded NVIDIA kernel driver's version, e.g. (535, 104, 5); None without a driver."""
    try:
        text = open(path).read()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return None


def _gpus(r: Report, local_size: int) -> None:
    import tensorflow as tf
    fmt = ".".join(map(str, MIN_DRIVER))
    if not tf.test.is_built_with_cuda():
        r.fail("the job asks for GPUs (BA_EXPECT_GPUS=1) but this TensorFlow is built without CUDA "
               "(tensorflow-cpu)", "install tensorflow[and-cuda]==2.15.1 in the job's environment (docs/install.md), "
               "or BA_EXPECT_GPUS=0 for a CPU run")
    driver = driver_version()
    if driver is None:
        r.fail("the job asks for GPUs (BA_EXPECT_GPUS=1) but no NVIDIA driver is loaded on this node "
               "(/proc/driver/nvidia/version missing)", "run on GPU nodes (the site #SBATCH lines, e.g. "
               "--constraint=gpu or --gpus-per-node), or BA_EXPECT_GPUS=0 for a CPU run")
    elif driver < MIN_DRIVER:
        r.fail(f"NVIDIA driver {'.'.join(map(str, driver))} is older than {fmt}, the minimum for the CUDA 12.2 "
               f"that TensorFlow 2.15 uses", f"ask the site for a driver >= {fmt}, or load the site's CUDA "
               "compatibility package (cuda-compat) for it")
    gpus = tf.config.list_physical_devices("GPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    r.info.append(f"GPUs visible: {len(gpus)} for {local_size} rank(s) on this node; driver "
                  f"{'.'.join(map(str, driver)) if driver else 'none'} (need >= {fmt})"
                  + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""))
    if not gpus:
        r.fail(f"no GPU visible to TensorFlow (CUDA_VISIBLE_DEVICES={visible!r})",
               "request GPUs in the site #SBATCH lines and do not hide them (CUDA_VISIBLE_DEVICES)")
    elif len(gpus) != 1 and len(gpus) < local_size:
        r.fail(f"{len(gpus)} GPUs visible for {local_size} ranks on this node: ranks would share a GPU",
               f"one rank per GPU: --ntasks-per-node={len(gpus)} (BA_RANKS_PER_NODE), or more GPUs per node")


def _mpi_threads(r: Report) -> None:
    from ba_dist import dist
    level, multiple, library = dist.mpi_thread_level()
    r.info.append(f"MPI: {library}; thread level MPI_THREAD_{level}")
    if not multiple:
        cray = "cray" in library.lower() or "CRAY_MPICH_VERSION" in os.environ
        r.fail(f"MPI grants MPI_THREAD_{level}, but the group loader (mpi4py, in a thread) and "
               "Horovod's background thread both call MPI: MPI_THREAD_MULTIPLE is needed",
               "export MPICH_MAX_THREAD_SAFETY=multiple (Cray MPICH; the site block of slurm/common.sh sets it)"
               if cray else "use an MPI built with thread support (OpenMPI: ompi_info | grep -i thread shows "
               "MPI_THREAD_MULTIPLE: yes) and do not lower mpi4py's thread level (MPI4PY_RC_THREAD_LEVEL)")


def mem_available() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), None if unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _memory(r: Report, prefetch: int, per_rank_unique: int, image_bytes: int, local_size: int) -> None:
    from ba_dist.data.broadcast import steps_in_flight  # numpy only
    # step buffers in flight (the queued steps + 2), each with the pool's 25% headroom
    steps = steps_in_flight(prefetch)
    need = steps * per_rank_unique * image_bytes * 5 // 4 * local_size
    have = mem_available()
    r.info.append(f"host memory: decoded broadcast buffers {need / 2**20:.0f} MiB for {local_size} rank(s) "
                  f"({steps} steps in flight (prefetch {prefetch} + 2) x b {per_rank_unique} x "
                  f"{image_bytes / 1024:.0f} KiB per image x 1.25 headroom x ranks); "
                  f"available {'unknown' if have is None else f'{have / 2**20:.0f} MiB'}")
    if have is not None and need > have:
        r.fail(f"the decoded broadcast buffers need {need / 2**20:.0f} MiB on this node but only "
               f"{have / 2**20:.0f} MiB are available", "lower input.prefetch or the per-rank batch, or use "
               "input.broadcast='encoded' (JPEG bytes are ~10x smaller), or fewer ranks per node")


def _open_files(r: Report, shards: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = shards + FD_MARGIN
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < need and (hard == unlimited or hard >= need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == unlimited else hard, hard))
        r.info.append(f"open files: soft limit raised from {soft} to {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
                      f"for {shards} shard files")
        return
    r.info.append(f"open files: limit {soft} (hard {hard}) for {shards} shard files + {FD_MARGIN}")
    if soft != unlimited and soft < need:
        r.fail(f"the open-file limit is {soft} (hard {hard}) but a reader keeps all {shards} shard files open "
               f"and needs ~{FD_MARGIN} more", f"ulimit -n {need} (or higher) in the job script before the launch; "
               "if the hard limit is lower, ask the site (limits.conf / slurm PropagateResourceLimits)")


def shard_files(cfg) -> int:
    """The TFRecord shards a reader opens: both splits' ``<split>-*-of-*`` in data_dir (0 for other sources)."""
    kw = cfg.input.source_kwargs
    data_dir = kw.get("data_dir") if hasattr(kw, "get") else None
    if cfg.input.dataset != "tfrecord" or not data_dir:
        return 0
    return sum(len(glob.glob(os.path.join(data_dir, f"{split}-*-of-*")))
               for split in {cfg.input.train_split, cfg.input.eval_split})


def check(cfg, lay, local_size: int, expect_gpus: Optional[bool] = None) -> Report:
    """All checks on this rank for a config and its :class:`ba_dist.config.Layout`; no MPI collective."""
    if expect_gpus is None:
        expect_gpus = os.environ.get("BA_EXPECT_GPUS", "0") == "1"
    r = Report()
    _versions(r, expect_gpus)
    if expect_gpus:
        _gpus(r, local_size)
    if lay.world_size > 1:
        _mpi_threads(r)
    # Fixed-size sources know their decoded size from the config; files of any size get the ImageNet bound.
    kw, shape = cfg.input.source_kwargs, None
    if cfg.input.dataset == "synthetic":
        shape = tuple(kw.get("image_shape", (32, 32, 3)))
    elif cfg.input.dataset == "digits":
        shape = (8, 8, 1)
    elif cfg.input.dataset == "tfds" and str(kw.get("dataset", "")).startswith("cifar"):
        shape = (32, 32, 3)
    image_bytes = VARIABLE_SIZE_IMAGE_BYTES if shape is None else math.prod(shape)
    _memory(r, cfg.input.prefetch, lay.per_rank_unique, image_bytes, local_size)
    _open_files(r, shard_files(cfg))
    return r


def run(cfg, lay) -> None:
    """Check every rank, print rank 0's findings; raise :class:`PreflightFailed` (exit 2) if any rank failed.

    Call before the input pipeline exists (ba-train does, right after the layout is known).
    """
    from ba_dist import dist
    rank, size = dist.world_rank_and_size()
    r = check(cfg, lay, dist.node_local_size())
    reports = dist.gather_to_chief((rank, r.failures))
    failed = dist.broadcast_object(any(f for _, f in reports) if rank == 0 else None)
    if rank == 0:
        for line in r.info:
            print(f"[ba-train] preflight: {line}", flush=True)
        by_failure: dict = {}
        for rank, failures in reports:
            for f in failures:
                by_failure.setdefault(f, []).append(rank)
        for f, ranks in by_failure.items():
            where = "every rank" if len(ranks) == size else f"rank(s) {', '.join(map(str, ranks[:16]))}" \
                + (" ..." if len(ranks) > 16 else "")
            print(f"[ba-train] preflight FAILED on {where}: {f}", file=sys.stderr, flush=True)
        print(f"[ba-train] preflight: {'FAILED, exit 2' if failed else 'ok'} ({size} rank(s) checked)",
              file=sys.stderr if failed else sys.stdout, flush=True)
    if failed:
        raise PreflightFailed()
