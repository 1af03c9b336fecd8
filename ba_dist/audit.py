"""Opt-in audit trail of what every rank trained on, for dress rehearsals.

``BA_AUDIT_DIR=DIR`` (unset: nothing is written, nothing is imported) makes every
rank append JSON lines to ``DIR/rank<r>.jsonl``; ``slurm/rehearse.sh`` reads them to
prove group membership, sample coverage and identical weights across a
stop -> requeue -> resume cycle. Each rank writes its own file (this is a test
aid, not a log: the only-rank-0-writes rule is for the run's outputs)::

    {"kind": "begin", "rank", "world", "group_id", "group_ranks", "reader_rank",
     "m_local", "pid", "restart", "global_step"}        fit starts (restart: SLURM_RESTART_COUNT)
    {"kind": "step", "epoch", "step", "ids"}           a step the group loader hands to tf.data,
                                                       in training order (prefetch runs ahead
                                                       of training: "end" says how many trained)
    {"kind": "end", "global_step", "trainable", "variables"}   fit returned; sha256 of the
                                                       trainable / all variables of this rank
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

__all__ = ["enabled", "record_step", "callbacks"]

ENV = "BA_AUDIT_DIR"
_lock = threading.Lock()


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _write(rank: int, record: dict) -> None:
    path = Path(os.environ[ENV]) / f"rank{rank}.jsonl"
    with _lock, open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def record_step(topology, epoch, step, ids) -> None:
    """Called by the group loader for every step it delivers (no-op unless enabled)."""
    if enabled():
        _write(topology.rank, {"kind": "step", "epoch": int(epoch), "step": int(step),
                               "ids": [int(i) for i in ids]})


def _digest(variables) -> str:
    h = hashlib.sha256()
    for v in variables:
        h.update(v.name.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def callbacks(topology, state, net) -> list:
    """``[]``, or the Keras callback that writes the begin/end records of a fit call."""
    if not enabled():
        return []
    import tensorflow as tf

    class _Audit(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            Path(os.environ[ENV]).mkdir(parents=True, exist_ok=True)
            _write(topology.rank, {
                "kind": "begin", "rank": topology.rank, "world": topology.world_size,
                "group_id": topology.group_id, "group_ranks": list(topology.group_ranks),
                "reader_rank": topology.reader_rank, "m_local": topology.m_local, "pid": os.getpid(),
                "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "global_step": state.global_step})

        def on_train_end(self, logs=None):
            _write(topology.rank, {"kind": "end", "global_step": state.global_step,
                                   "trainable": _digest(net.trainable_variables), "variables": _digest(net.variables)})

    return [_Audit()]
