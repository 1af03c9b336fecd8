"""ba-train's preflight (ba_dist/preflight.py), through ``ba-train --preflight-only``.

The checks pass on this CPU machine; each failing check is made to fail for real: a job that
asks for GPUs where there are none, MPI initialised with a thread level below MULTIPLE, a low
``ulimit -n`` against many shard files, a prefetch that cannot fit in this host's memory.
"""
from __future__ import annotations

import sys
from pathlib import Path

from launcher import PYTHON, REPO, mpirun, rank_env, run

BA_TRAIN = str(Path(PYTHON).with_name("ba-train"))
DIGITS = ["--config", str(REPO / "configs/digits_smoke.py"), "--config.ba.m_ranks=1"]


def preflight(*args: str, timeout: float = 180, **env: str):
    return run([BA_TRAIN, "--preflight-only", *DIGITS, *args], timeout=timeout, env=rank_env(**env))


def test_checks_pass_here_and_report_the_build():
    res = preflight()
    assert res.returncode == 0, res.stdout
    assert "[X] TensorFlow, [X] MPI" in res.stdout and "TensorFlow 2.15.1, Horovod 0.28.1" in res.stdout
    assert "[ba-train] preflight: ok (1 rank(s) checked)" in res.stdout
    assert "--workdir is required" not in res.stdout


def test_two_ranks_pass_with_mpi_thread_multiple():
    res = mpirun(2, [BA_TRAIN, "--preflight-only", *DIGITS], timeout=240)
    assert res.returncode == 0, res.stdout
    assert "thread level MPI_THREAD_MULTIPLE" in res.stdout and "ok (2 rank(s) checked)" in res.stdout


def test_gpus_asked_for_where_there_are_none():
    res = preflight(BA_EXPECT_GPUS="1")
    assert res.returncode == 2, res.stdout
    assert "preflight FAILED on every rank: no GPU visible to TensorFlow" in res.stdout
    assert "no NVIDIA driver is loaded" in res.stdout and "525.60.13" in res.stdout
    assert "built without CUDA (tensorflow-cpu). Fix: install tensorflow[and-cuda]==2.15.1" in res.stdout


def test_mpi_below_thread_multiple_is_refused_on_every_rank():
    # mpi4py initialises MPI with the level its rc asks for: SINGLE here, for real
    res = mpirun(2, [BA_TRAIN, "--preflight-only", *DIGITS], timeout=240, MPI4PY_RC_THREAD_LEVEL="single")
    assert res.returncode == 2, res.stdout
    assert "MPI grants MPI_THREAD_SINGLE" in res.stdout and "MPI_THREAD_MULTIPLE is needed" in res.stdout
    assert "preflight FAILED on every rank" in res.stdout


def _shards(tmp_path: Path, n: int) -> Path:
    for k in range(n):   # never opened by the preflight: only counted
        (tmp_path / f"train-{k:05d}-of-{n:05d}").touch()
    (tmp_path / "validation-00000-of-00001").touch()
    return tmp_path


def test_open_file_limit_below_the_shard_count(tmp_path):
    data = _shards(tmp_path, 300)
    cmd = [BA_TRAIN, "--preflight-only", "--config", str(REPO / "configs/resnet50_imagenet_ba.py"),
           "--config.ba.m_ranks=1", f"--config.input.source_kwargs.data_dir={data}"]
    quoted = " ".join(f"'{c}'" for c in cmd)
    res = run(["bash", "-c", f"ulimit -n 256 && exec {quoted}"], timeout=180, env=rank_env())
    assert res.returncode == 2, res.stdout
    assert "the open-file limit is 256 (hard 256) but a reader keeps all 301 shard files open" in res.stdout
    assert "Fix: ulimit -n 429" in res.stdout
    # soft limit low, hard limit high enough: raised, passes
    res = run(["bash", "-c", f"ulimit -S -n 256 && ulimit -H -n 4096 && exec {quoted}"], timeout=180, env=rank_env())
    assert res.returncode == 0, res.stdout
    assert "open files: soft limit raised from 256 to 4096 for 301 shard files" in res.stdout


def test_broadcast_buffers_larger_than_host_memory():
    res = preflight("--config.input.prefetch=100000000")
    assert res.returncode == 2, res.stdout
    assert "the decoded broadcast buffers need" in res.stdout and "Fix: lower input.prefetch" in res.stdout
