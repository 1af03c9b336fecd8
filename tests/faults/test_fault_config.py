"""Bad configuration and topology: a clear error on every rank before any collective, exit 2.

In-process: the checks ba-train runs before ``dist.init`` (``config.validate``, then
``config.layout`` and ``dist.validate_topology`` for the world size), one case per
mistake. Under ``mpirun -np 2 --tag-output``: each rank prints the message itself
and the job exits 2 before the topology line (printed after Horovod starts).
tests/test_train_mpi.py covers the same messages through the single-process CLI
and a world of 3 ranks for m_ranks=2.
"""
from __future__ import annotations

import re

import pytest

import faultlib
from ba_dist import config as config_lib
from ba_dist import dist
from faultlib import SMOKE

# digits_smoke on 2 ranks: M 4 = 2 ranks x 2 copies, B 64 -> 1 group, b = 64, per-rank batch 128
CASES = {
    "unknown model": ({"model.name": "resnet9000"}, 2, "model.name='resnet9000': unknown; known: "),
    "unknown dataset": ({"input.dataset": "mnist_from_mars"}, 2, "input.dataset='mnist_from_mars': unknown; known: "),
    "M not divisible by m_ranks": ({"ba.multiplicity": 3}, 2, "ba.multiplicity=3 is not divisible by ba.m_ranks=2"),
    "world not divisible by m_ranks": ({}, 3, "world size 3 is not divisible by ba.m_ranks=2"),
    "B not divisible over groups": ({"ba.m_ranks": 1, "ba.multiplicity": 1, "input.batch_size": 63}, 2,
                                    "input.batch_size=63 unique samples cannot be split over 2 groups"),
    "batch not divisible by ghost BN": ({"model.bn": "ghost", "model.ghost_batch_size": 48}, 2,
                                        "per-rank batch 128 (2 ranks x 128 per rank (2 copies x 64 unique)"),
    "ghost batch mixes copies": ({"model.bn": "ghost", "model.ghost_batch_size": 128}, 2,
                                 "model.ghost_batch_size=128 exceeds the 64 unique samples per rank"),
    "negative LR": ({"optim.base_lr": -0.1}, 2, "optim.base_lr=-0.1: must be >= 0"),
    "zero batch": ({"input.batch_size": 0}, 2, "input.batch_size=0: must be a positive number"),
    "unknown choice": ({"input.broadcast": "pigeon"}, 2,
                       "input.broadcast='pigeon': must be one of decoded, encoded, none"),
    "momentum 1": ({"optim.momentum": 1.0}, 2, "optim.momentum=1.0: must be < 1"),
    "warmup longer than training": ({"optim.warmup_epochs": 15.0}, 2,
                                    "optim.warmup_epochs=15.0 must be shorter than train.epochs=15"),
}


def _preflight(cfg, world: int) -> None:
    """What ba-train checks before any collective (ba_dist/train.py, phase 1)."""
    config_lib.validate(cfg)
    lay = config_lib.layout(cfg, world)
    dist.validate_topology(world, lay.m_ranks, lay.m_local)


def _smoke(**changes):
    cfg = config_lib.load_config_file(SMOKE)
    for key, value in changes.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.lock()
    return cfg


def test_smoke_config_passes_preflight():  # the cases below differ from it by one value
    _preflight(_smoke(), 2)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_a_clear_error_before_any_collective(case):
    changes, world, message = CASES[case]
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        _preflight(_smoke(**changes), world)


def test_unknown_key_and_wrong_type_are_refused():
    cfg = _smoke()
    with pytest.raises(AttributeError, match="learning_rate"):
        cfg.optim.learning_rate = 0.1
    with pytest.raises(TypeError, match="epochs"):
        cfg.train.epochs = "ten"


@pytest.mark.parametrize("override,message", [
    ("--config.model.ghost_batch_size=48", "per-rank batch 128 ("),   # needs the world size: after MPI starts
    ("--config.optim.learning_rate=0.1", "bad --config override"),   # refused while parsing the command line
])
def test_every_rank_reports_the_bad_config_and_exits_2(override, message, tmp_path):
    res = faultlib.run(2, ["--config", SMOKE, "--workdir", str(tmp_path / "wd"), "--config.model.bn=ghost",
                           override], tmp_path / "fault", timeout=120, extra_mpirun=("--tag-output",))
    out = res.output
    assert res.returncode == 2, out[-3000:]
    for rank in (0, 1):  # --tag-output prefixes what each rank wrote (lines may interleave)
        assert f"[1,{rank}]<stderr>:[ba-train] config error: {message}" in out, out[-3000:]
    assert not re.search(r"\[ba-train\] \d+ ranks x", out)  # the topology line comes after dist.init
    assert not (tmp_path / "wd").exists()
