"""Helpers of the fault-injection suite: launch ba-train under mpirun, signal ranks, compare files.

Every launch goes through ``tests/faults/inject.py`` (plain ba-train unless
``BA_FAULT`` is set) so each rank's pid is known and a single rank can be
signalled; every launch has a hard time limit (the whole session is killed).
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from launcher import MPIRUN, PYTHON, REPO, rank_env

INJECT = Path(__file__).with_name("inject.py")
SMOKE = str(REPO / "configs/digits_smoke.py")
FAULT_VARS = ("BA_FAULT", "BA_FAULT_RANK", "BA_FAULT_DIR", "BA_FAULT_AFTER", "BA_FAULT_STEP")
REQUEUE = 75
# Issue 9: after a rank dies, every other rank must be gone within this many seconds.
EXIT_BOUND_SEC = 60


class Launch:
    """``mpirun -np N python inject.py ARGS`` in its own session, output to a file."""

    def __init__(self, np_: int, args: list[str], fault_dir: Path, timeout: float = 300,
                 extra_mpirun: tuple[str, ...] = (), **fault: str):
        self.fault_dir = Path(fault_dir)
        self.fault_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.fault_dir / "output.log"
        env = rank_env(**{k: "" for k in FAULT_VARS})
        env.update(BA_FAULT_DIR=str(self.fault_dir), **fault)
        xs = [a for v in FAULT_VARS for a in ("-x", v)]
        self.cmd = MPIRUN + xs + list(extra_mpirun) + ["-np", str(np_), PYTHON, str(INJECT)] + args
        self.timeout = timeout
        self.start = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                         cwd=str(REPO), start_new_session=True, stdin=subprocess.DEVNULL)
        self.returncode: int | None = None
        self.ended_at: float | None = None  # time.time() when mpirun exited

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _check_time(self) -> None:
        if time.monotonic() - self.start > self.timeout:
            self.kill()
            raise AssertionError(f"timed out after {self.timeout:.0f}s (killed): {' '.join(self.cmd)}\n"
                                 f"{self.output[-6000:]}")

    def wait_for(self, predicate, what: str, poll: float = 0.05) -> None:
        """Wait until ``predicate()`` holds while the job runs."""
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended (exit {self.proc.returncode}) before {what}:\n{self.output[-6000:]}")
            self._check_time()
            time.sleep(poll)

    def wait(self) -> "Launch":
        while self.proc.poll() is None:
            self._check_time()
            time.sleep(0.05)
        self.ended_at = time.time()
        self.returncode = self.proc.returncode
        self.elapsed = time.monotonic() - self.start
        return self

    def wait_reporting(self, pattern: str) -> float:
        """Wait for the end; seconds from the first output matching ``pattern`` to the exit of every rank."""
        rx, seen = re.compile(pattern), None
        while self.proc.poll() is None:
            if seen is None and rx.search(self.output):
                seen = time.time()
            self._check_time()
            time.sleep(0.05)
        self.wait()
        assert rx.search(self.output), f"no output matches {pattern!r}:\n{self.output[-6000:]}"
        return self.ended_at - (seen or self.ended_at)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pids(self) -> dict[int, int]:
        """{rank: pid} of the ranks that have started (inject.py writes them first thing)."""
        found = {}
        for p in self.fault_dir.glob("rank*.pid"):
            text = p.read_text()
            if text.strip():  # not caught half-written
                found[int(p.stem[4:])] = int(text)
        return found

    def signal_ranks(self, signum: int, ranks) -> None:
        pids = self.pids()
        for r in ranks:
            os.kill(pids[r], signum)

    def seconds_from_kill_to_exit(self) -> float:
        return self.ended_at - float((self.fault_dir / "killed").read_text())


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(mask >> (signum - 1) & 1)


def has_loaded(pid: int, library: str) -> bool:
    """Whether a shared library whose path contains ``library`` is mapped into ``pid``."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def run(np_: int, args: list[str], fault_dir: Path, timeout: float = 300, **kw) -> Launch:
    return Launch(np_, args, fault_dir, timeout, **kw).wait()


def run_reporting(np_: int, args: list[str], fault_dir: Path, pattern: str, timeout: float = 300,
                  **kw) -> tuple[Launch, float]:
    """:func:`run`, and the seconds from the report of the failure (``pattern``) to the exit."""
    launch = Launch(np_, args, fault_dir, timeout, **kw)
    try:
        return launch, launch.wait_reporting(pattern)
    finally:
        launch.kill()


def checkpoints(workdir: Path) -> list[str]:
    """Names of the complete checkpoints (meta.json present), oldest first."""
    return sorted(p.parent.name for p in (Path(workdir) / "checkpoints").glob("ckpt-*/meta.json"))


def weights(ckpt: Path) -> dict:
    """Every network and optimizer tensor of a checkpoint (reading checks the CRCs)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(Path(ckpt) / "state"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "net/" in k or "optimizer/" in k}


def assert_same_weights(a: Path, b: Path, bn_rtol: float = 0.0) -> None:
    """Bitwise, except BN moving statistics within ``bn_rtol`` when it is given."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 10, (a, b)
    for k in wa:
        if bn_rtol and "moving_" in k:
            np.testing.assert_allclose(wa[k], wb[k], rtol=bn_rtol, atol=1e-7, err_msg=f"{k}: {a} vs {b}")
        else:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{k}: {a} vs {b}")


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` by relative path."""
    root = Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

