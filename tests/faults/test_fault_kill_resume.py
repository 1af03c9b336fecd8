"""Ranks killed, signalled, out of disk or diverging under real mpirun; every relaunch resumes.

One workdir goes through a chain of faults, each stage a real launch of
``mpirun -np 2`` ba-train (digits, 2 ranks = one BA group of reader + non-reader,
decoded broadcast, 2 epochs x 22 steps, deterministic ops)::

    A1  rank 1 SIGKILLed mid-broadcast in epoch 1      -> all ranks gone < 60 s; ckpt-22 complete
    A2  relaunch: rank 0 SIGKILLed writing ckpt-44      -> resumed from ckpt-22; ckpt-44 never complete
    A3  relaunch: SIGTERM to every rank mid-epoch       -> resumed from ckpt-22; one stop step, exit 75
    A4  relaunch: runs to the end                       -> bitwise the weights of an uninterrupted run

and three more relaunches start from copies of the workdir as A3 left it (stopped mid-epoch 1):
a damaged newest checkpoint with ``train.resume_fallback`` off (clear error) and on (falls back,
here combined with a diverging learning rate: non-finite loss, checkpoints byte-identical), and
a disk that fills up while the next checkpoint is written.

The uninterrupted reference run also gives the cheap "same seed, same topology, same weights"
check: A1 is a second run from scratch, so its ckpt-22 must equal the reference's bit for bit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import faultlib
from faultlib import EXIT_BOUND_SEC, REQUEUE, SMOKE, checkpoints

SPE = 22  # digits: 1438 train samples // B 64
ARGS = ["--config", SMOKE, "--config.train.epochs=2", "--config.ba.multiplicity=2",  # M = 2 ranks x 1 copy
        "--config.train.deterministic=True", "--config.train.verbose=0", "--config.train.keep_checkpoints=10"]
CKPT1, CKPT2 = f"ckpt-{SPE:09d}", f"ckpt-{2 * SPE:09d}"
KILLED = r"rank {} with PID \d+ on node \S+ exited on signal 9"


def _args(workdir: Path, *extra: str) -> list[str]:
    return ARGS + ["--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    root = tmp_path_factory.mktemp("straight")
    res = faultlib.run(2, _args(root / "wd"), root / "fault")
    assert res.returncode == 0, res.output[-4000:]
    assert checkpoints(root / "wd") == [CKPT1, CKPT2]
    return root / "wd"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chain") / "wd"


@pytest.fixture(scope="module")
def killed_in_broadcast(work):
    return faultlib.run(2, _args(work), work.parent / "a1", BA_FAULT="kill_in_broadcast", BA_FAULT_RANK="1",
                        BA_FAULT_AFTER=str(work / "checkpoints" / CKPT1 / "meta.json"))


@pytest.fixture(scope="module")
def killed_in_checkpoint(work, killed_in_broadcast):
    return faultlib.run(2, _args(work), work.parent / "a2", BA_FAULT="kill_in_checkpoint", BA_FAULT_RANK="0",
                        BA_FAULT_STEP=str(2 * SPE))


@pytest.fixture(scope="module")
def stopped_by_sigterm(work, killed_in_checkpoint, tmp_path_factory):
    """A3, and a snapshot of the workdir as it left it (the start of the copy stages)."""
    # verbose=1: rank 0's progress bar (one line per update off a tty) shows the step
    launch = faultlib.Launch(2, _args(work, "--config.train.verbose=1"), work.parent / "a3")
    try:
        launch.wait_for(lambda: re.search(rf"\b([3-9]|1[0-9])/{SPE}\b", launch.output), "step 3 of epoch 1")
        launch.signal_ranks(signal.SIGTERM, [0, 1])  # what Slurm does to every task of a step
        launch.wait()
    finally:
        launch.kill()
    snapshot = tmp_path_factory.mktemp("snapshot") / "wd"
    shutil.copytree(work, snapshot, symlinks=True)
    return launch, snapshot


@pytest.fixture(scope="module")
def resumed(work, stopped_by_sigterm):
    return faultlib.run(2, _args(work), work.parent / "a4")


def _stop_step(output: str) -> int:
    m = re.search(r"stopped early \(signal\) at epoch 1 step (\d+)", output)
    assert m, output[-4000:]
    return int(m.group(1))


# ---- A1 ----------------------------------------------------------------------------------

def test_sigkill_mid_broadcast_takes_every_rank_down(killed_in_broadcast, work):
    res = killed_in_broadcast
    assert res.returncode != 0
    assert re.search(KILLED.format(1), res.output), res.output[-4000:]
    assert res.seconds_from_kill_to_exit() < EXIT_BOUND_SEC
    assert checkpoints(work) == [CKPT1]  # written before the kill; nothing after it


def test_same_seed_and_topology_give_identical_weights(straight, work, killed_in_broadcast):
    # A1 trained from scratch like the reference: after 22 steps, bit for bit the same
    faultlib.assert_same_weights(straight / "checkpoints" / CKPT1, work / "checkpoints" / CKPT1)


# ---- A2 ----------------------------------------------------------------------------------

def test_sigkill_rank0_mid_checkpoint_leaves_previous_checkpoint(killed_in_checkpoint, work):
    res = killed_in_checkpoint
    assert f"resumed from {work}/checkpoints/{CKPT1} at epoch 1 step 0" in res.output, res.output[-4000:]
    assert res.returncode != 0
    assert re.search(KILLED.format(0), res.output), res.output[-4000:]
    assert res.seconds_from_kill_to_exit() < EXIT_BOUND_SEC
    partial = list((work / "checkpoints").glob(f".tmp-{CKPT2}-*"))
    assert len(partial) == 1 and (partial[0] / "state.index").is_file() and not (partial[0] / "meta.json").exists()
    assert not (work / "checkpoints" / CKPT2).exists()
    assert checkpoints(work) == [CKPT1]


# ---- A3 ----------------------------------------------------------------------------------

def test_sigterm_to_every_rank_stops_at_one_step_and_checkpoints(stopped_by_sigterm, work):
    launch, snapshot = stopped_by_sigterm
    out = launch.output
    assert f"resumed from {work}/checkpoints/{CKPT1} at epoch 1 step 0" in out, out[-4000:]  # not the partial one
    assert launch.returncode == REQUEUE, out[-4000:]
    step = _stop_step(out)
    assert 3 <= step < SPE
    stop_ckpt = f"ckpt-{SPE + step:09d}"
    assert checkpoints(snapshot) == [CKPT1, stop_ckpt]
    meta = json.loads((snapshot / "checkpoints" / stop_ckpt / "meta.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"], meta["global_step"]) == (1, step, SPE + step)
    assert not list((snapshot / "checkpoints").glob(".tmp-*"))  # A2's partial write pruned by the first good save


def test_stop_signal_during_startup_is_honoured_at_the_first_step(stopped_by_sigterm, tmp_path):
    # A relaunch from the stopped state gets SIGUSR1 on ONE rank while it still imports TensorFlow.
    step = _stop_step(stopped_by_sigterm[0].output)
    wd = tmp_path / "wd"
    shutil.copytree(stopped_by_sigterm[1], wd, symlinks=True)
    launch = faultlib.Launch(2, _args(wd), tmp_path / "fault")
    try:
        launch.wait_for(lambda: 1 in launch.pids() and faultlib.catches(launch.pids()[1], signal.SIGUSR1),
                        "rank 1's stop-signal handler", poll=0.01)
        pid = launch.pids()[1]
        tensorflow_loaded = faultlib.has_loaded(pid, "libtensorflow")
        os.kill(pid, signal.SIGUSR1)
        launch.wait()
    finally:
        launch.kill()
    assert not tensorflow_loaded  # the handler was in place before the longest part of start-up
    out = launch.output
    assert launch.returncode == REQUEUE, out[-4000:]
    assert f"resumed from {wd}/checkpoints/ckpt-{SPE + step:09d} at epoch 1 step {step}" in out
    assert f"stopped early (signal) at epoch 1 step {step + 1}" in out  # after one step, on every rank


# ---- A4 ----------------------------------------------------------------------------------

def test_resume_after_all_faults_matches_uninterrupted_run(resumed, stopped_by_sigterm, straight, work):
    step = _stop_step(stopped_by_sigterm[0].output)
    assert resumed.returncode == 0, resumed.output[-4000:]
    assert f"at epoch 1 step {step}" in resumed.output
    # BN moving statistics were averaged over the ranks at the mid-epoch stop (the straight run did
    # not): linear moving averages, so they agree at the next averaging up to float rounding
    faultlib.assert_same_weights(straight / "checkpoints" / CKPT2, work / "checkpoints" / CKPT2, bn_rtol=1e-5)


# ---- from copies of the workdir after A3 ---------------------------------------------------

def _copy_with_damaged_newest(snapshot: Path, dest: Path) -> tuple[Path, str]:
    shutil.copytree(snapshot, dest, symlinks=True)
    newest = checkpoints(dest)[-1]
    data = dest / "checkpoints" / newest / "state.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a truncated copy / a half-synced file
    return dest, newest


def test_damaged_newest_checkpoint_without_fallback_is_a_clear_error(stopped_by_sigterm, tmp_path):
    wd, newest = _copy_with_damaged_newest(stopped_by_sigterm[1], tmp_path / "wd")
    res, seconds = faultlib.run_reporting(
        2, _args(wd, "--config.train.resume_fallback=False"), tmp_path / "fault",
        re.escape(f"CheckpointError: checkpoint {wd}/checkpoints/{newest} is damaged or does not match this model"))
    assert res.returncode != 0
    assert seconds < EXIT_BOUND_SEC
    assert "resumed from" not in res.output


def test_nonfinite_loss_stops_and_leaves_checkpoints_untouched(stopped_by_sigterm, tmp_path):
    # The newest checkpoint is damaged too: the default train.resume_fallback=True uses the previous one.
    wd, newest = _copy_with_damaged_newest(stopped_by_sigterm[1], tmp_path / "wd")
    before = faultlib.digest(wd / "checkpoints")
    res, seconds = faultlib.run_reporting(
        2, _args(wd, "--config.optim.base_lr=1e30"), tmp_path / "fault",
        r"FloatingPointError: non-finite loss or gradient at epoch 1 step \d+ .*no checkpoint was written\. "
        r"Lower optim\.base_lr")
    out = res.output
    assert f"skipped damaged checkpoint: checkpoint {wd}/checkpoints/{newest} is damaged" in out, out[-4000:]
    assert f"resumed from {wd}/checkpoints/{CKPT1} at epoch 1 step 0" in out
    assert res.returncode != 0
    assert seconds < EXIT_BOUND_SEC
    assert faultlib.digest(wd / "checkpoints") == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A tmpfs of its own (root only), so that the disk can fill up for real."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is not exercised")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_while_checkpointing_names_it_and_keeps_previous(stopped_by_sigterm, tiny_tmpfs, tmp_path):
    wd = tiny_tmpfs / "wd"
    shutil.copytree(stopped_by_sigterm[1], wd, symlinks=True)
    newest = checkpoints(wd)[-1]
    st = os.statvfs(tiny_tmpfs)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    ckpt_bytes = sum(p.stat().st_size for p in (wd / "checkpoints" / newest).iterdir())
    # room for the metrics and TensorBoard rows of the epoch, not for another checkpoint
    subprocess.run(["mount", "-o", f"remount,size={used + 96 * 1024}", str(tiny_tmpfs)], check=True)
    assert ckpt_bytes > 2 * 96 * 1024
    before = faultlib.digest(wd / "checkpoints")
    res, seconds = faultlib.run_reporting(
        2, _args(wd), tmp_path / "fault",
        re.escape(f"could not write checkpoint {wd}/checkpoints/{CKPT2}: ") + ".*No space left on device; "
        + re.escape(f"the previous checkpoint {wd}/checkpoints/{newest} is intact"))
    assert res.returncode != 0
    assert seconds < EXIT_BOUND_SEC
    assert faultlib.digest(wd / "checkpoints") == before  # the temporary directory is gone too
    assert faultlib.weights(wd / "checkpoints" / newest)   # and the previous one still reads (CRCs checked)
