"""Damaged, partial and interrupted checkpoints at the CheckpointManager level (in-process, fast).

Every kind of damage to the newest checkpoint: with fallback (``train.resume_fallback=True``,
the default) the previous checkpoint is restored and the damage logged by name; without it,
a CheckpointError names the damaged directory. What a writer killed mid-write leaves is never
taken for a checkpoint, and is pruned by the next good save. The same under mpirun, with the
config switch: tests/faults/test_fault_kill_resume.py.
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from ba_dist import config as config_lib
from ba_dist.checkpoint import CheckpointError, CheckpointManager


def _meta(step: int) -> dict:
    return {"epoch": 0, "step_in_epoch": step, "global_step": step}


@pytest.fixture
def two_checkpoints(tmp_path):
    """ckpt-1 holds v = 1, ckpt-2 holds v = 2."""
    v = tf.Variable(np.zeros(4096, np.float32))
    ckpt = tf.train.Checkpoint(v=v)
    manager = CheckpointManager(tmp_path / "checkpoints", keep=5)
    for step in (1, 2):
        v.assign(np.full(4096, step, np.float32))
        manager.save(ckpt, _meta(step))
    v.assign(np.zeros(4096, np.float32))
    return manager, ckpt, v


def _flip(path, where: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGE = {  # kind: (damage(ckpt dir), text of the error)
    "truncated tensor data": (lambda d: os.truncate(d / "state.data-00000-of-00001", 1000), "Read less bytes"),
    "flipped byte in tensor data": (lambda d: _flip(d / "state.data-00000-of-00001"), "Checksum does not match"),
    "flipped byte in index": (lambda d: _flip(d / "state.index"), "checksum mismatch"),
    "missing index": (lambda d: (d / "state.index").unlink(), "NotFoundError"),
    "meta.json not JSON": (lambda d: (d / "meta.json").write_text('{"epoch": 1, "glo'), "JSONDecodeError"),
    "empty meta.json": (lambda d: (d / "meta.json").write_text(""), "JSONDecodeError"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_or_fails_by_name(kind, two_checkpoints, caplog):
    manager, ckpt, v = two_checkpoints
    damage, text = DAMAGE[kind]
    newest = manager.latest()
    damage(newest)
    named = re.escape(f"checkpoint {newest} is damaged or does not match this model: ")
    with pytest.raises(CheckpointError, match=f"{named}.*{text}"):
        manager.restore_latest(ckpt, fallback=False)
    with caplog.at_level(logging.WARNING, logger="ba_dist.checkpoint"):
        meta = manager.restore_latest(ckpt, fallback=True)
    assert meta["global_step"] == 1 and meta["path"].endswith("ckpt-000000001")
    np.testing.assert_array_equal(v.numpy(), 1.0)  # every value from the previous checkpoint
    assert f"skipped damaged checkpoint: checkpoint {newest} is damaged" in caplog.text


def test_checkpoint_of_another_model_is_refused(two_checkpoints):
    manager, _, _ = two_checkpoints
    other = tf.train.Checkpoint(v=tf.Variable(np.zeros(4096, np.float32)), w=tf.Variable(1.0))
    with pytest.raises(CheckpointError, match="no loadable checkpoint: .*ckpt-000000002 is damaged or does not match "
                                              "this model.*ckpt-000000001 is damaged or does not match"):
        manager.restore_latest(other, fallback=True)


def test_what_a_killed_writer_leaves_is_ignored_then_pruned(two_checkpoints):
    manager, ckpt, v = two_checkpoints
    # killed mid-write: tensors in the temporary directory, no meta.json, never renamed
    partial = manager.dir / ".tmp-ckpt-000000003-abcd1234"
    ckpt.write(str(partial / "state"))
    # a directory that looks final but has no meta.json (copied by hand, half synced)
    (manager.dir / "ckpt-000000004").mkdir()
    assert [p.name for p in manager.complete()] == ["ckpt-000000001", "ckpt-000000002"]
    assert manager.restore_latest(ckpt)["global_step"] == 2
    manager.save(ckpt, _meta(5))
    assert not partial.exists()  # pruned by the next good save


def test_best_marker_replaces_meta_json_atomically(two_checkpoints):
    manager, ckpt, _ = two_checkpoints
    path = manager.save(ckpt, _meta(3), metric=0.5)
    meta_path = path / "meta.json"
    inode = os.stat(meta_path).st_ino
    manager._update_best(path, 0.7)
    # replaced by rename, never rewritten in place: a kill mid-write cannot leave half a meta.json
    assert os.stat(meta_path).st_ino != inode
    assert json.loads(meta_path.read_text())["best_metric"] == 0.7
    assert json.loads((manager.dir / "best.json").read_text()) == {"name": path.name, "metric": 0.7}
    assert not list(path.glob(".*.tmp")) and not list(manager.dir.glob(".*.tmp"))


def test_resume_fallback_is_a_config_switch_on_by_default():
    cfg = config_lib.base_config()
    assert cfg.train.resume_fallback is True
    cfg.train.resume_fallback = False  # a bool key: overridable from the command line
    config_lib.validate(cfg)
