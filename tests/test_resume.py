"""Checkpoint/resume under mpirun: a stopped-and-resumed run ends with bitwise the same weights.

On CPU with deterministic ops (train.deterministic) the only state that
matters is model + optimizer + (epoch, step); the data order follows from the
seed. Two interruptions are checked against one uninterrupted run:
stop after an epoch (train.stop_after_epoch), and SIGUSR1 sent to ONE rank in
the middle of an epoch (all ranks must stop at the same step). BN moving statistics, averaged
over the ranks at every checkpoint, match to float rounding after a mid-epoch stop.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from launcher import MPIRUN, PYTHON, REPO, mpirun, rank_env

EPOCHS = 4
ARGS = [PYTHON, "-m", "ba_dist.train", "--config", str(REPO / "configs/digits_smoke.py"),
        f"--config.train.epochs={EPOCHS}", "--config.train.deterministic=True", "--config.train.verbose=0",
        "--config.train.keep_checkpoints=10"]
REQUEUE = 75


def _final_weights(workdir: Path) -> dict:
    ckpts = sorted((workdir / "checkpoints").glob("ckpt-*"))
    reader = tf.train.load_checkpoint(str(ckpts[-1] / "state"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "net/" in k or "optimizer/" in k}


def _assert_same(a: dict, b: dict, bn_rtol: float = 0.0):
    """Bitwise, except BN moving statistics within ``bn_rtol`` (see the SIGUSR1 test)."""
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        if bn_rtol and "moving_" in k:
            np.testing.assert_allclose(a[k], b[k], rtol=bn_rtol, atol=1e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    wd = tmp_path_factory.mktemp("straight")
    res = mpirun(2, ARGS + ["--workdir", str(wd)], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    return wd


def test_stop_after_epoch_then_resume_matches(straight, tmp_path):
    first = mpirun(2, ARGS + ["--workdir", str(tmp_path), "--config.train.stop_after_epoch=2"], timeout=600)
    assert first.returncode == REQUEUE, first.stdout[-4000:]
    assert "stopped early (stop_after_epoch) at epoch 2 step 0" in first.stdout
    second = mpirun(2, ARGS + ["--workdir", str(tmp_path)], timeout=600)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "resumed from" in second.stdout and "at epoch 2 step 0" in second.stdout
    _assert_same(_final_weights(straight), _final_weights(tmp_path))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_sigusr1_to_one_rank_mid_epoch_then_resume_matches(straight, tmp_path):
    cmd = MPIRUN + ["-np", "2"] + ARGS + ["--workdir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rank_env(),
                            cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "checkpoints").glob("ckpt-*/meta.json")):  # epoch 1 done
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint appeared"
            time.sleep(0.2)
        time.sleep(0.3)  # into epoch 2
        rank1 = subprocess.run(["pgrep", "-f", "--", f"--workdir {tmp_path}"], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in rank1 if int(p) != proc.pid and _env_rank(int(p)) == "1"]
        assert len(pids) == 1, rank1
        os.kill(pids[0], signal.SIGUSR1)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == REQUEUE, out[-4000:]
    assert "stopped early (signal)" in out
    meta = json.loads(sorted((tmp_path / "checkpoints").glob("ckpt-*"))[-1].joinpath("meta.json").read_text())
    assert 0 < meta["global_step"] < EPOCHS * 22
    second = mpirun(2, ARGS + ["--workdir", str(tmp_path)], timeout=600)
    assert second.returncode == 0, second.stdout[-4000:]
    assert f"at epoch {meta['epoch']} step {meta['step_in_epoch']}" in second.stdout
    # Weights and optimizer bitwise. BN moving statistics are averaged over the ranks at every
    # checkpoint, here also at the mid-epoch stop, which the straight run did not do: by linearity
    # of the moving average they agree at the next averaging up to float rounding only.
    _assert_same(_final_weights(straight), _final_weights(tmp_path), bn_rtol=1e-5)


def _env_rank(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for kv in env:
        if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
            return kv.split(b"=", 1)[1].decode()
    return ""
