"""Atomic checkpoints: rank 0 writes, every rank restores through a broadcast.

Layout under ``<workdir>/checkpoints/``::

    ckpt-000000420/          one complete checkpoint (global step 420)
        state.index          tf.train.Checkpoint of model + optimizer
        state.data-00000-of-00001
        meta.json            epoch, step in epoch, global step, metrics, layout
    best.json                name of the checkpoint with the best val_top1

A checkpoint is written into a hidden temporary directory and renamed into
place only after ``meta.json`` (written last) is on disk, so a crash or a full
disk during a write leaves the previous checkpoint untouched and loadable.
Directories without ``meta.json`` are never considered complete.

Why not ``tf.train.CheckpointManager`` for the keep-N bookkeeping (issue 13
asked for it; checked against TF 2.15's ``checkpoint_management.py``): it
keeps one flat prefix per checkpoint (``<dir>/ckpt-N.index``, ``.data-*``)
written in place at its final name, so a crash mid-write can leave a
half-written newest checkpoint, which is what the temporary directory + rename
above prevents; its ``max_to_keep`` sweep deletes only a prefix's ``.index``
and ``.data-*`` files, so over our directories it would leave ``meta.json``
behind and an emptied directory that looks complete; it has no notion of a
best checkpoint to keep beyond the last N; and it knows only checkpoints
listed in its ``checkpoint`` state file, so directories written before it
(every existing run) would be neither pruned nor found. Using it for listing
and ours for writing would be two sources of truth. So the bookkeeping stays
here: the listing is the directory itself (complete = has ``meta.json``),
pruning removes whole directories except the best, and old checkpoints restore
because nothing about their layout changed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import tensorflow as tf

from ba_dist import dist

__all__ = ["CheckpointError", "CheckpointManager", "restore_for_all_ranks"]

log = logging.getLogger(__name__)
_PREFIX = "ckpt-"


def _message(error: Exception) -> str:
    """First line of an error, without TensorFlow's ``{{function_node ...}}`` and ``[Op:...]`` noise."""
    text = str(error).splitlines()[0] if str(error) else ""
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", re.sub(r"\{\{[^}]*\}\}\s*", "", text)).strip()


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or restored; names the directory."""


class CheckpointManager:
    """Write, list, prune and restore checkpoints of one workdir.

    Args:
      directory: ``<workdir>/checkpoints``.
      keep: number of most recent checkpoints kept (the best one is kept too).
      is_writer: only rank 0 passes True; other ranks never touch the disk.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, is_writer: bool = True):
        self.dir = Path(directory)
        self.keep = keep
        self.is_writer = is_writer
        if is_writer:
            self.dir.mkdir(parents=True, exist_ok=True)

    # -- listing --------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir()
                 if p.is_dir() and p.name.startswith(_PREFIX) and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))

    def latest(self) -> Optional[Path]:
        done = self.complete()
        return done[-1] if done else None

    def best(self) -> Optional[Path]:
        try:
            name = json.loads((self.dir / "best.json").read_text())["name"]
        except (OSError, ValueError, KeyError):
            return None
        p = self.dir / name
        return p if (p / "meta.json").is_file() else None

    # -- writing --------------------------------------------------------------
    def save(self, checkpoint: tf.train.Checkpoint, meta: dict, metric: Optional[float] = None) -> Path:
        """Write a checkpoint atomically (rank 0 only). Raises CheckpointError on failure."""
        if not self.is_writer:
            raise CheckpointError("only the writer rank saves checkpoints")
        final = self.dir / f"{_PREFIX}{int(meta['global_step']):09d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=self.dir))
        try:
            checkpoint.write(str(tmp / "state"))
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True, default=float)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # same step saved twice (e.g. stop right after an epoch save)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"could not write checkpoint {final}: {_message(e)}; "
                                  f"the previous checkpoint {self.latest()} is intact") from e
        if metric is not None:
            self._update_best(final, metric)
        self._prune()
        return final

    def _update_best(self, path: Path, metric: float) -> None:
        best = self.best()
        if best is not None:
            old = json.loads((best / "meta.json").read_text()).get("best_metric")
            if old is not None and old >= metric:
                return
        meta_path = path / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["best_metric"] = metric
        # Replaced, not rewritten in place: a kill mid-write must not leave a
        # complete-looking checkpoint with a truncated meta.json.
        tmp_meta = path / ".meta.json.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, default=float))
        os.replace(tmp_meta, meta_path)
        tmp = self.dir / ".best.json.tmp"
        tmp.write_text(json.dumps({"name": path.name, "metric": metric}))
        os.replace(tmp, self.dir / "best.json")

    def _prune(self) -> None:
        done = self.complete()
        best = self.best()
        for p in done[:-self.keep]:
            if best is None or p != best:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob(".tmp-*"):  # leftovers of a crashed writer
            shutil.rmtree(p, ignore_errors=True)

    # -- restoring --------------------------------------------------------------
    def restore(self, checkpoint: tf.train.Checkpoint, path: Path, partial: bool = False) -> dict:
        """Restore one checkpoint into ``checkpoint``; returns its meta. Raises CheckpointError.

        ``partial=True`` restores a subset of what was saved (e.g. the network
        without the optimizer, for evaluation) without warnings about the rest.
        """
        try:
            meta = json.loads((path / "meta.json").read_text())
            status = checkpoint.read(str(path / "state"))
            status.assert_existing_objects_matched()
            if partial:
                status.expect_partial()
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} is damaged or does not match this model: "
                                  f"{type(e).__name__}: {_message(e)}") from e
        return meta

    def restore_latest(self, checkpoint: tf.train.Checkpoint, fallback: bool = True) -> Optional[dict]:
        """Restore the newest loadable checkpoint (older ones if ``fallback``); None if there is none."""
        errors = []
        for path in reversed(self.complete()):
            try:
                meta = self.restore(checkpoint, path)
                meta["path"] = str(path)
                for e in errors:
                    log.warning("skipped damaged checkpoint: %s", e)
                return meta
            except CheckpointError as e:
                if not fallback:
                    raise
                errors.append(str(e))
        if errors:
            raise CheckpointError("no loadable checkpoint: " + " | ".join(errors))
        return None


def restore_for_all_ranks(manager: CheckpointManager, checkpoint: tf.train.Checkpoint, variables,
                          resume: bool = True, fallback: bool = True) -> Optional[dict]:
    """Rank 0 (the manager's writer) restores the newest loadable checkpoint; every rank gets it by broadcast.

    Also the initial broadcast of a fresh run: every rank starts from rank 0's
    ``variables``, so only rank 0 needs to see the checkpoint directory.
    Returns the checkpoint's meta (with ``path``) or None for a fresh start.
    """
    meta = manager.restore_latest(checkpoint, fallback=fallback) if resume and manager.is_writer else None
    meta = dist.broadcast_object(meta)
    dist.broadcast_from_chief(variables)
    return meta
