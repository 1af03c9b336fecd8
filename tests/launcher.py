"""Run a command under real ``mpirun`` with a hard time limit.

Each rank of a hanging job is killed with its whole process group when the
limit expires, so a stuck collective fails the test instead of stalling CI.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
          "-x", "PYTHONPATH", "-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "OMP_NUM_THREADS",
          "-x", "BA_DIST_TEST_M_RANKS", "-x", "BA_DIST_TEST_M_LOCAL"]


def rank_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("BA_DIST_TEST_M_RANKS", "1")
    env.setdefault("BA_DIST_TEST_M_LOCAL", "1")
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None,
        stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the session and raise."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or rank_env(), cwd=str(cwd or REPO), start_new_session=True,
                            stdin=stdin)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout:.0f}s (killed): {' '.join(cmd)}\n{out[-6000:]}")
    proc.elapsed = time.monotonic() - start
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def mpirun(np: int, argv: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``mpirun -np N <argv>`` with the test environment exported to every rank."""
    return run(MPIRUN + ["-np", str(np)] + argv, timeout=timeout, env=rank_env(**env))
