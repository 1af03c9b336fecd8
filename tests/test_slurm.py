"""The sbatch templates (slurm/) and launch/horovodrun.sh, run end to end on this machine.

tests/stand_ins/ holds fake sbatch, srun, scontrol, scancel and module commands: the
stand-in sbatch runs a job script here and now with the SLURM_* variables of a job, its
srun starts ``mpirun -np <tasks>``, and ``scontrol requeue`` makes sbatch run the job
again. Most tests only run bash (dry runs, refusals, the requeue logic with an srun that
returns exit codes without launching anything); two launch real trainings of a few steps
on the embedded digits, shrunk from the templates with the BA_* overrides.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launcher import PYTHON, REPO, rank_env, run

SLURM = REPO / "slurm"
STAND_INS = REPO / "tests" / "stand_ins"
TEMPLATES = sorted(p.name for p in SLURM.glob("*.sh") if p.name not in ("common.sh", "submit.sh", "rehearse.sh"))
SITE_HEADER = ["#SBATCH --constraint=gpu", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=12"]

# template -> nodes, per-rank batch, B, M, m_ranks, m_local, groups, b (unique per rank), ghost, settings
EXPECTED = {
    "resnet50_imagenet_512nodes.sh": (512, 64, 8192, 4, 4, 1, 128, 64, 32,
                                      ["--config.optim.regime=imagenet", "--config.optim.warmup_epochs=5",
                                       "--config.optim.lr_scaling=linear", "--config.train.epochs=90"]),
    "resnet50_imagenet_baseline_128nodes.sh": (128, 64, 8192, 1, 1, 1, 128, 64, 32,
                                               ["--config.optim.regime=imagenet", "--config.optim.warmup_epochs=5"]),
    "resnet50_imagenet_b256_m4_16nodes.sh": (16, 64, 256, 4, 4, 1, 4, 64, 32,
                                             ["--config.optim.regime=imagenet_ba_fast",
                                              "--config.optim.warmup_epochs=0", "--config.train.epochs=40"]),
    "resnet50_imagenet_b256_m10_40nodes.sh": (40, 64, 256, 10, 10, 1, 4, 64, 32,
                                              ["--config.optim.regime=imagenet_ba_fast",
                                               "--config.optim.warmup_epochs=0", "--config.train.epochs=40"]),
    "resnet44_cifar10_ba.sh": (4, 640, 64, 40, 4, 10, 1, 64, 0, []),
}
# Shrinks the 512-node template to 4 ranks (one group of 4, as M_RANKS = 4) on the digits.
SHRINK_512 = dict(BA_NODES="4", BA_BATCH="64", BA_PER_RANK="64")
DIGITS_ARGS = ["--config.input.augment=digits", "--config.input.normalize=none", "--config.optim.warmup_epochs=1"]


def slurm_env(tmp_path: Path, **extra: str) -> dict:
    """The test environment, stand-ins first on PATH, no SLURM_*/SBATCH_*/BA_* from outside."""
    env = {k: v for k, v in rank_env().items() if not k.startswith(("SLURM_", "SBATCH_", "BA_"))}
    for d in ("work", "data"):
        (tmp_path / d).mkdir(exist_ok=True)
    env.update(PATH=f"{STAND_INS}{os.pathsep}{env['PATH']}", STANDIN_STATE_DIR=str(tmp_path / "slurm"),
               BA_WORK_DIR=str(tmp_path / "work"), BA_DATA_DIR=str(tmp_path / "data"),
               BA_CONFIG="configs/digits_smoke.py", BA_EXPECT_GPUS="0")   # the site block asks for GPUs
    env.update(extra)
    return env


def state(tmp_path: Path, name: str) -> str:
    """A stand-in log (sbatch.log, srun.log, scontrol.log, module.log), '' if never written."""
    p = tmp_path / "slurm" / name
    return p.read_text() if p.exists() else ""


def launch_line(out: str) -> str:
    return re.search(r"^\[ba-slurm\] launch: (.*)$", out, re.M).group(1)


def header(template: str) -> list[str]:
    return [l.strip() for l in (SLURM / template).read_text().splitlines() if l.startswith("#SBATCH")]


class Job:
    """A command (a stand-in sbatch) in its own session; output collected as it comes.

    Leaving the ``with`` block kills the whole session if it still runs, so a hang
    fails the test instead of stalling the suite.
    """

    def __init__(self, cmd: list[str], env: dict, cwd: Path = REPO):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=str(cwd), start_new_session=True, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output)
            if m:
                return m
            if self.proc.poll() is not None:
                self.reader.join(5)
                m = re.search(pattern, self.output)
                if m:
                    return m
                raise AssertionError(f"ended (code {self.proc.returncode}) before {pattern!r}:\n{self.output[-6000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout:.0f}s:\n{self.output[-6000:]}")

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:.0f}s (killed):\n{self.output[-6000:]}")
        self.reader.join(10)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            pids = subprocess.run(["pgrep", "-s", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()


# ---------------------------------------------------------------------------- static checks

def test_every_template_is_covered():
    assert TEMPLATES == sorted(EXPECTED)


SCRIPTS = [*(SLURM.glob("*.sh")), REPO / "launch/horovodrun.sh", *(STAND_INS.iterdir())]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax(script):
    res = run(["bash", "-n", str(script)], timeout=30)
    assert res.returncode == 0, res.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    res = run(["shellcheck", "-x", *map(str, SCRIPTS)], timeout=120)
    assert res.returncode == 0, res.stdout


# ---------------------------------------------------------------------------- layout: dry runs

@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_dry_run_prints_the_layout_and_the_launch(template, tmp_path):
    nodes, per_rank, B, M, m_ranks, m_local, groups, b, ghost, settings = EXPECTED[template]
    assert nodes * per_rank == B * M and nodes == groups * m_ranks and B == groups * b  # the table itself
    res = run(["bash", str(SLURM / template)], timeout=60, env=slurm_env(tmp_path, BA_DRY_RUN="1"))
    assert res.returncode == 0, res.stdout
    out = res.stdout
    assert (f"[ba-slurm] layout: {nodes} ranks x {per_rank} per rank ({m_local} copies x {b} unique) = "
            f"B {B} unique x M {M} = {B * M} per step; {groups} group(s) of {m_ranks} rank(s)") in out
    assert (f"values: nodes={nodes} ranks={nodes} per_rank={per_rank} B={B} M={M} m_ranks={m_ranks} "
            f"m_local={m_local} groups={groups} b={b} ghost={ghost}") in out
    launch = launch_line(out)
    assert launch.startswith(f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task=12 "
                             f"--cpu-bind=none --kill-on-bad-exit=0 --wait=120 ")
    assert f"--config.input.batch_size={B} --config.ba.multiplicity={M} --config.ba.m_ranks={m_ranks}" in launch
    assert ("--config.model.bn=ghost --config.model.ghost_batch_size=32" in launch) == bool(ghost)
    assert f"--config.input.source_kwargs.data_dir={tmp_path / 'data'}" in launch
    for s in settings:
        assert s in launch
    assert f"--workdir {tmp_path / 'work'}/" in launch and "MPICH_MAX_THREAD_SAFETY=multiple" in out
    assert "dry run" in out and state(tmp_path, "srun.log") == ""
    # The #SBATCH header asks for what the script computes, with the site lines and pre-emption.
    head = header(template)
    assert f"#SBATCH --nodes={nodes}" in head
    assert all(line in head for line in SITE_HEADER)
    assert "#SBATCH --requeue" in head and any(l.startswith("#SBATCH --signal=B:USR1@") for l in head)


def test_more_ranks_per_node_for_gpu_nodes_with_several_gpus(tmp_path):
    # e.g. 4 GPUs per node: the b256 M=4 layout (16 ranks) on 4 nodes, one group per node
    env = slurm_env(tmp_path, BA_DRY_RUN="1", BA_NODES="4", BA_RANKS_PER_NODE="4")
    res = run(["bash", str(SLURM / "resnet50_imagenet_b256_m4_16nodes.sh")], timeout=60, env=env)
    assert res.returncode == 0, res.stdout
    assert "layout: 16 ranks x 64 per rank (1 copies x 64 unique) = B 256 unique x M 4 = 1024 per step; " \
           "4 group(s) of 4 rank(s)" in res.stdout
    assert launch_line(res.stdout).startswith("srun --nodes=4 --ntasks=16 --ntasks-per-node=4 ")


R512, RCIFAR = "resnet50_imagenet_512nodes.sh", "resnet44_cifar10_ba.sh"


@pytest.mark.parametrize("template,env,args,message", [
    (R512, {"BA_NODES": "510"}, [], "510 ranks (510 nodes x 1) do not form whole groups of M_RANKS=4"),
    (R512, {"BA_M": "6"}, [], "M=6 copies cannot be shared by groups of M_RANKS=4"),
    (R512, {"BA_NODES": "500"}, [], "B=8192 unique images cannot be split over 125 groups"),
    (R512, {"BA_BATCH": "8000"}, [], "B=8000 unique images cannot be split over 128 groups"),
    (R512, {"BA_NODES": "256"}, [], "256 ranks x 64 images per rank = 16384, but B x M = 8192 x 4 = 32768"),
    (R512, {"BA_M": "8"}, [], "BA_NODES=1024 keeps 64 per rank"),
    (R512, {"BA_GHOST": "48"}, [], "the per-rank batch 64 is not a multiple of GHOST=48"),
    (RCIFAR, {"BA_GHOST": "128"}, [], "GHOST=128 exceeds the 64 unique images per rank"),
    (R512, {"BA_M": "four"}, [], "BA_M / M = 'four': must be an integer >= 1"),
    (R512, {}, ["--config.ba.multiplicity=8"], "set BA_BATCH, BA_M, BA_M_RANKS, BA_NODES, BA_PER_RANK instead"),
    (R512, {}, ["--config.model.ghost_batch_size=16"], "change it with BA_GHOST"),
    (R512, {}, ["--workdir=/elsewhere"], "the workdir is $BA_WORK_DIR/<run name>"),
    (R512, {}, ["epochs=3"], "unexpected argument 'epochs=3'"),
    (R512, {"BA_WORK_DIR": ""}, [], "BA_WORK_DIR is not set"),
    (R512, {"BA_WORK_DIR": "/nonexistent/ba_runs"}, [], "BA_WORK_DIR=/nonexistent/ba_runs is not a writable directory"),
    (R512, {"BA_DATA_DIR": ""}, [], "BA_DATA_DIR is not set"),
    (RCIFAR, {"BA_DATA_DIR": "/nonexistent/cifar"}, [], "BA_DATA_DIR=/nonexistent/cifar does not exist"),
    (R512, {"BA_CONFIG": "configs/nope.py"}, [], "configs/nope.py does not exist"),
])
def test_inconsistent_overrides_are_refused_before_launch(template, env, args, message, tmp_path):
    res = run(["bash", str(SLURM / template), *args], timeout=60, env=slurm_env(tmp_path, BA_DRY_RUN="1", **env))
    assert res.returncode == 2, res.stdout
    assert message in res.stdout, res.stdout
    assert "[ba-slurm] launch:" not in res.stdout


def test_job_with_the_wrong_node_count_is_refused(tmp_path):
    res = run(["sbatch", "--nodes=4", str(SLURM / R512)], timeout=60, env=slurm_env(tmp_path))
    assert res.returncode == 2, res.stdout
    assert "the job has 4 nodes but the layout needs 512: submit with --nodes=512" in res.stdout
    assert state(tmp_path, "srun.log") == ""


def test_outside_a_job_nothing_is_launched(tmp_path):
    res = run(["bash", str(SLURM / R512)], timeout=60, env=slurm_env(tmp_path))
    assert res.returncode == 2 and "not inside a Slurm job" in res.stdout, res.stdout


def test_job_finds_the_repository_from_the_submission_directory(tmp_path):
    # The stand-in, like slurmd, runs a copy of the script: only SLURM_SUBMIT_DIR or BA_ROOT lead back.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = slurm_env(tmp_path, BA_DRY_RUN="1", **SHRINK_512)
    res = run(["sbatch", "--nodes=4", str(SLURM / R512)], timeout=60, env=env, cwd=elsewhere)
    assert res.returncode == 2 and "cannot find slurm/common.sh" in res.stdout, res.stdout
    res = run(["sbatch", "--nodes=4", str(SLURM / R512)], timeout=60, env=dict(env, BA_ROOT=str(REPO)), cwd=elsewhere)
    assert res.returncode == 0 and "layout: 4 ranks x 64 per rank" in res.stdout, res.stdout


# ---------------------------------------------------------------------------- requeue logic (no training)

@pytest.mark.parametrize("codes,env,expect_rc,scontrol,history", [
    ("75 0", {}, 0, "requeue 1000\n", ["exit 75, requeued", "done"]),
    ("75 75", {"BA_MAX_REQUEUES": "1"}, 75, "requeue 1000\n", ["exit 75, requeued", "exit 75, not requeued (BA_MAX_REQUEUES=1)"]),
    ("75", {"STANDIN_SCONTROL_FAIL": "1"}, 75, "requeue 1000 refused\n", ["exit 75, resubmitted"]),
    ("75", {"BA_REQUEUE": "none"}, 75, "", ["exit 75, not requeued"]),
    ("1", {}, 1, "", ["failed with exit code 1"]),
])
def test_exit_codes_decide_the_requeue(codes, env, expect_rc, scontrol, history, tmp_path):
    env = slurm_env(tmp_path, STANDIN_SRUN_EXITS=codes, **SHRINK_512, **env)
    res = run(["sbatch", "--nodes=4", str(SLURM / R512)], timeout=60, env=env)
    assert res.returncode == expect_rc, res.stdout
    assert state(tmp_path, "scontrol.log") == scontrol
    log = (tmp_path / "work/resnet50_imagenet_b64_m4_4n/slurm_jobs.log").read_text()
    assert [re.sub(r"^.*restart \d+: ", "", l) for l in log.splitlines() if "start on" not in l] == history
    runs = state(tmp_path, "srun.log").splitlines()
    assert [re.search(r"restart=(\d)", r).group(1) for r in runs] == [str(i) for i in range(len(runs))]
    assert "module load daint-gpu" in state(tmp_path, "module.log")
    if "STANDIN_SCONTROL_FAIL" in env:   # resubmitted with the same script and nodes, after this job
        assert re.search(r"^queue 1001 from-job=1000 nodes=4 resubmit=1 --dependency=afterany:1000 --nodes=4 ",
                         state(tmp_path, "sbatch.log"), re.M), state(tmp_path, "sbatch.log")


@pytest.mark.parametrize("how,requeued", [("USR1", True), ("TERM", False)])
def test_batch_shell_passes_signals_to_the_ranks(how, requeued, tmp_path):
    """--signal=B:USR1 reaches only the batch shell, which must pass it on; SIGTERM (scancel) never requeues."""
    env = slurm_env(tmp_path, STANDIN_SRUN_EXITS="75 0", STANDIN_SRUN_SIGNAL_WAIT="60", **SHRINK_512)
    with Job(["sbatch", "--nodes=4", str(SLURM / R512)], env) as job:
        job.wait_for(r"waiting for a stop signal", 60)
        scancel = ["scancel", "--batch", "--signal=USR1", "1000"] if how == "USR1" else ["scancel", "1000"]
        assert run(scancel, timeout=30, env=env).returncode == 0
        rc = job.wait(60)
    assert f"stop signal: {how}" in job.output, job.output
    if requeued:
        assert "SIGUSR1 (time limit near)" in job.output and rc == 0
        assert state(tmp_path, "scontrol.log") == "requeue 1000\n"
    else:
        assert "terminated by SIGTERM: not requeueing" in job.output and rc == 75
        assert state(tmp_path, "scontrol.log") == ""


def test_submit_checks_before_sbatch(tmp_path):
    env = slurm_env(tmp_path)
    res = run([str(SLURM / "submit.sh"), str(SLURM / R512)], timeout=60, env=env)
    assert res.returncode == 2 and "no account: export BA_ACCOUNT=<project>" in res.stdout, res.stdout
    res = run([str(SLURM / "submit.sh"), "--nodes=4", str(SLURM / R512)], timeout=60,
              env=dict(env, BA_ACCOUNT="s1234"))
    assert res.returncode == 2 and "the job has 4 nodes but the layout needs 512" in res.stdout, res.stdout
    assert "not submitted" in res.stdout and state(tmp_path, "sbatch.log") == ""


# ---------------------------------------------------------------------------- real trainings

def test_512_node_template_stops_on_usr1_checkpoints_requeues_and_resumes(tmp_path):
    """The paper's 512-node run shrunk to 4 ranks (one group of 4): a SIGUSR1 to the batch
    shell checkpoints mid-epoch, the job requeues itself, and the rerun resumes there."""
    env = slurm_env(tmp_path, BA_DATA_KEY="", **SHRINK_512)
    args = DIGITS_ARGS + ["--config.train.epochs=4", "--config.train.keep_checkpoints=10"]
    with Job(["sbatch", "--nodes=4", str(SLURM / R512), *args], env) as job:
        job_id = job.wait_for(r"Submitted batch job (\d+)", 30).group(1)
        job.wait_for(r"\[ba-train\] checkpoint ckpt-", 300)   # epoch 1 done: training is under way
        assert run(["scancel", "--batch", "--signal=USR1", job_id], timeout=30, env=env).returncode == 0
        rc = job.wait(400)
    out = job.output
    assert rc == 0, out[-8000:]
    layout = re.search(r"^\[ba-slurm\] layout: (.*)$", out, re.M).group(1)
    assert layout == ("4 ranks x 64 per rank (1 copies x 64 unique) = B 64 unique x M 4 = 256 per step; "
                      "1 group(s) of 4 rank(s)")
    assert out.count(f"[ba-train] {layout}") == 2                  # ba-train ran that topology, twice
    assert "bn 'ghost'" in out and "22 steps per epoch x 4 epochs" in out
    # first allocation: stop at a step boundary, checkpoint, exit 75, requeue
    assert "SIGUSR1 (time limit near)" in out
    epoch, step = map(int, re.search(r"stopped early \(signal\) at epoch (\d+) step (\d+)", out).groups())
    wd = tmp_path / "work/resnet50_imagenet_b64_m4_4n"
    ckpt = wd / f"checkpoints/ckpt-{epoch * 22 + step:09d}"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"]) == (epoch, step) and meta["layout"]["num_groups"] == 1
    assert "ba-train exited with code 75" in out and state(tmp_path, "scontrol.log") == f"requeue {job_id}\n"
    # second allocation: resumes from that checkpoint and finishes all 4 epochs
    assert f"resumed from {ckpt} at epoch {epoch} step {step}" in out
    assert json.loads((wd / "result.json").read_text())["global_step"] == 4 * 22
    assert [l.split()[1] for l in state(tmp_path, "srun.log").splitlines()] == ["restart=0", "restart=1"]
    history = (wd / "slurm_jobs.log").read_text()
    assert "restart 0: exit 75, requeued" in history and "restart 1: done" in history


def test_cifar_template_through_submit(tmp_path):
    """The CIFAR layout (one group, M = 40 split as M_RANKS x m_local) on 2 ranks, via submit.sh."""
    env = slurm_env(tmp_path, BA_DATA_KEY="", BA_ACCOUNT="s1234", BA_NODES="2", BA_M_RANKS="2", BA_PER_RANK="1280")
    res = run([str(SLURM / "submit.sh"), "--nodes=2", str(SLURM / RCIFAR),
               "--config.train.max_steps=5", "--config.train.epochs=1"], timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-8000:]
    layout = "2 ranks x 1280 per rank (20 copies x 64 unique) = B 64 unique x M 40 = 2560 per step; 1 group(s) of 2 rank(s)"
    assert res.stdout.count(f"[ba-slurm] layout: {layout}") == 2     # submit's check, then the job
    assert f"[ba-train] {layout}" in res.stdout
    submitted = state(tmp_path, "sbatch.log")
    assert "--account=s1234" in submitted and "--nodes=2" in submitted
    result = json.loads((tmp_path / "work/resnet44_cifar10_b64_m40_2n/result.json").read_text())
    assert result["global_step"] == 5 and state(tmp_path, "scontrol.log") == ""


RANKS_PY = """
import os, signal, sys, time
from mpi4py import MPI
rank, size = MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
print(f"ready-{rank}", flush=True)
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
print(f"rank {rank} of {size}: {'SIGUSR1' if got else 'no signal'}, "
      f"interop threads {os.environ.get('TF_NUM_INTEROP_THREADS')}", flush=True)
os._exit(75 if got else 3)
"""


def test_horovodrun_launcher_runs_ranks_and_passes_usr1(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_PY)
    env = {k: v for k, v in rank_env().items() if k != "TF_NUM_INTEROP_THREADS"}
    with Job(["bash", str(REPO / "launch/horovodrun.sh"), "2", PYTHON, str(script)], env) as job:
        deadline = time.monotonic() + 120
        while len(set(re.findall(r"ready-(\d)", job.output))) < 2:
            assert time.monotonic() < deadline and job.proc.poll() is None, job.output[-4000:]
            time.sleep(0.2)
        os.kill(job.proc.pid, signal.SIGUSR1)
        rc = job.wait(60)
    for rank in (0, 1):
        assert f"rank {rank} of 2: SIGUSR1, interop threads 2" in job.output, job.output[-4000:]
    assert rc == 75, job.output[-4000:]


# ---------------------------------------------------------------------------- a dead rank (srun --wait)

DEAD_RANK_PY = """
import os, signal, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
comm.Barrier()
print(f"up {comm.rank}", flush=True)
if comm.rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)   # an OOM kill: no MPI_Abort, no exception
comm.Barrier()                             # the others wait here for the dead rank
"""


@pytest.mark.parametrize("wait", [None, 5])
def test_srun_stand_in_models_a_dead_rank_with_and_without_wait(wait, tmp_path):
    """Real srun leaves ranks whose peer died in a collective until the time limit (WaitTime=0);
    --wait=S kills them S seconds after the first task ended. The stand-in does the same."""
    script, job = tmp_path / "dead.py", tmp_path / "job.sh"
    script.write_text(DEAD_RANK_PY)
    opt = f"--wait={wait}" if wait else ""
    job.write_text(f"#!/bin/bash\nsrun --ntasks=3 --kill-on-bad-exit=0 {opt} {PYTHON} {script}\necho srun-rc=$?\n")
    env = slurm_env(tmp_path)
    t0 = time.monotonic()
    with Job(["sbatch", "--nodes=3", str(job)], env) as j:
        j.wait_for(r"up 0", 120)
        if wait is None:
            time.sleep(20)
            assert j.proc.poll() is None, j.output   # still hanging: the failure mode --wait fixes
            return
        j.wait(60 + wait)
    assert "srun-rc=137" in j.output, j.output             # 128 + SIGKILL, as srun reports it
    assert f"(--wait={wait}): killing the 2 task(s) still running" in j.output
    assert time.monotonic() - t0 < 60 + wait


# ---------------------------------------------------------------------------- dress rehearsals

@pytest.mark.timeout(1600)   # 4-9 min each on the shared 2-core machine (8-10 TF ranks, two allocations)
@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_rehearsal_of_every_template(template, tmp_path):
    """slurm/rehearse.sh: the template's launch path on 8 ranks (10 for M_RANKS = 10) and real-photo
    ImageNet shards, through SIGUSR1 -> checkpoint -> 75 -> requeue -> resume; its checks must hold."""
    env = {k: v for k, v in rank_env().items() if not k.startswith(("SLURM_", "SBATCH_", "BA_"))}
    env["BA_REHEARSE_DIR"] = str(tmp_path)
    t0 = time.monotonic()
    res = run(["bash", str(SLURM / "rehearse.sh"), str(SLURM / template)], timeout=1500, env=env)
    last = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0 and last.startswith("[rehearse] passed: "), res.stdout[-8000:]
    for what in ("group membership", "coverage", "identical trainable weights", "result.json written once",
                 "exit codes"):
        assert f"[rehearse] ok: {what}" in res.stdout
    print(f"{template}: rehearsal {time.monotonic() - t0:.0f}s")


@pytest.mark.timeout(1000)
def test_rehearsal_of_a_rank_killed_mid_training(tmp_path):
    """A rank SIGKILLed after the first checkpoint: srun --wait ends the job, exit 137, no requeue."""
    env = {k: v for k, v in rank_env().items() if not k.startswith(("SLURM_", "SBATCH_", "BA_"))}
    env.update(BA_REHEARSE_DIR=str(tmp_path), BA_SRUN_WAIT="20", BA_REHEARSE_RANKS="4")
    res = run(["bash", str(SLURM / "rehearse.sh"), "--kill-rank", "1", str(SLURM / R512)], timeout=900, env=env)
    last = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0 and last.startswith("[rehearse] passed: "), res.stdout[-8000:]
    assert "killed the other ranks" in last and "not requeued" in last
