"""Keras callbacks that do ba-train's bookkeeping around ``model.fit``.

Order matters and :func:`make_callbacks` returns them in the order they must
run at the end of an epoch: metric averaging (Horovod) -> evaluation ->
throughput -> logging (rank 0) -> checkpoint (rank 0 writes) -> stop control.

Every rank runs every callback; only writes are restricted to rank 0, and
every decision (stop, non-finite, checkpoint) is taken from values that are
identical on all ranks, so ranks never disagree about the step they are at.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import tensorflow as tf

__all__ = ["REQUEUE_EXIT_CODE", "StopRequested", "TrainState", "EvalCallback", "ThroughputCallback",
           "MetricsLogger", "CheckpointCallback", "StopControl",
           "catch_stop_signals_early", "metric_average", "numeric_logs"]

log = logging.getLogger(__name__)

# Exit code of a run that stopped early on SIGTERM/SIGUSR1 (or stop_after_epoch)
# after writing a checkpoint: "requeue me". 75 is EX_TEMPFAIL in sysexits.h.
REQUEUE_EXIT_CODE = 75


class StopRequested(Exception):
    """Raised after fit when the run stopped early and was checkpointed."""


class TrainState:
    """Where training is, shared by the callbacks: epoch, step in epoch, global step."""

    def __init__(self, steps_per_epoch: int, unique_batch: int, global_batch: int):
        self.steps_per_epoch = steps_per_epoch
        self.unique_batch = unique_batch      # B
        self.global_batch = global_batch      # B x M
        self.epoch = 0
        self.step_in_epoch = 0
        self.epoch_offset = 0                 # steps already done in the epoch when fit started
        self.stopped = False                  # stopped mid-run (signal / max_steps / stop_after_epoch)
        self.stop_reason = ""
        self.last_eval: dict = {}

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def position(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step}


class _StateTracker(tf.keras.callbacks.Callback):
    def __init__(self, state: TrainState):
        super().__init__()
        self.state = state

    def on_epoch_begin(self, epoch, logs=None):
        self.state.epoch = epoch
        self.state.step_in_epoch = self.state.epoch_offset

    def on_train_batch_end(self, batch, logs=None):
        self.state.step_in_epoch = self.state.epoch_offset + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        if self.state.step_in_epoch >= self.state.steps_per_epoch:
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        self.state.epoch_offset = 0


class EvalCallback(tf.keras.callbacks.Callback):
    """Exact sharded evaluation every ``every`` epochs and after the last one."""

    def __init__(self, state: TrainState, evaluate: Callable[[], dict], every: int, last_epoch: int):
        super().__init__()
        self.state, self.evaluate, self.every, self.last_epoch = state, evaluate, every, last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.state.stopped and self.state.step_in_epoch != 0:
            return  # stopped mid-epoch: no evaluation of a partial epoch
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.last_epoch or self.state.stopped:
            self.state.last_eval = self.evaluate()
            if logs is not None:
                logs.update(self.state.last_eval)


class ThroughputCallback(tf.keras.callbacks.Callback):
    """Images per second over the epoch, both augmented copies and unique samples."""

    def __init__(self, state: TrainState, skipped_fn: Callable[[], int] = lambda: 0):
        super().__init__()
        self.state = state
        self.skipped_fn = skipped_fn  # collective: called on every rank

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.s0 = time.perf_counter(), self.state.step_in_epoch
        self.t_last = self.t0

    def on_train_batch_end(self, batch, logs=None):
        self.t_last = time.perf_counter()  # training time only: not the evaluation after the last step

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.state.step_in_epoch or self.state.steps_per_epoch) - self.s0
        dt = max(self.t_last - self.t0, 1e-9)
        if logs is not None:
            logs["images_per_sec"] = steps * self.state.global_batch / dt          # augmented copies
            logs["unique_images_per_sec"] = steps * self.state.unique_batch / dt
            logs["unique_images_seen"] = self.state.global_step * self.state.unique_batch
            logs["epoch_time_sec"] = dt
        skipped = self.skipped_fn()
        if logs is not None:
            logs["skipped_samples"] = skipped


class MetricsLogger(tf.keras.callbacks.Callback):
    """Rank 0: ``metrics.jsonl`` + ``metrics.csv`` + TensorBoard scalars, one row per epoch."""

    FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
              "images_per_sec", "unique_images_per_sec", "unique_images_seen", "grad_norm",
              "skipped_samples", "epoch_time_sec")

    def __init__(self, workdir: Path, state: TrainState, lr_fn: Callable[[], float]):
        super().__init__()
        self.workdir, self.state, self.lr_fn = Path(workdir), state, lr_fn
        self.writer = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        # epochs completed, fractional after a mid-epoch stop
        epochs_done = self.state.global_step / self.state.steps_per_epoch
        row = {"epoch": int(epochs_done) if self.state.step_in_epoch == 0 else epochs_done,
               "step": self.state.global_step, "lr": float(self.lr_fn()),
               "train_loss": logs.get("loss"), "train_top1": logs.get("top1")}
        for k in self.FIELDS:
            if k not in row:
                row[k] = logs.get(k)
        row = {k: _plain(v) for k, v in row.items()}
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.workdir / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k) for k in self.FIELDS})
        with self.writer.as_default(step=self.state.global_step):
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tf.summary.scalar(k, v)
        self.writer.flush()


def metric_average() -> tf.keras.callbacks.Callback:
    """Horovod's average of the epoch's train metrics over ranks (equal local batches: exact)."""
    import horovod.tensorflow.keras as hvd_keras
    return hvd_keras.callbacks.MetricAverageCallback()


def numeric_logs(logs) -> dict:
    """The numeric entries of Keras logs as floats (for checkpoint metadata)."""
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def _plain(v):
    """JSON-friendly number: numpy/tf scalars to int or float; None stays None."""
    if v is None or isinstance(v, (bool, str)):
        return v
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 and not isinstance(v, float) and "float" not in type(v).__name__ else f


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Every ``every`` epochs (and at a stop) rank 0 writes an atomic checkpoint."""

    def __init__(self, state: TrainState, save: Callable[[dict, Optional[float]], None], every: int, last_epoch: int):
        super().__init__()
        self.state, self.save, self.every, self.last_epoch = state, save, every, last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.state.stopped:
            return  # StopControl saves the stop position itself
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.last_epoch:
            self.save(dict(logs or {}), (logs or {}).get("val_top1"))


EARLY_SIGNALS: list[int] = []


def catch_stop_signals_early(signals=(signal.SIGTERM, signal.SIGUSR1)) -> None:
    """Record SIGTERM/SIGUSR1 from process start until StopControl takes over.

    Without this, a signal during start-up (imports, data indexing, restore)
    would kill the rank with the default action instead of stopping cleanly.
    """
    for s in signals:
        signal.signal(s, lambda signum, frame: EARLY_SIGNALS.append(signum))


class StopControl(tf.keras.callbacks.Callback):
    """Stop all ranks at the same step boundary on a signal, max_steps or stop_after_epoch.

    SIGTERM / SIGUSR1 (what SLURM sends before the time limit) set a flag that
    the training step reduces over all ranks, so every rank sees the stop at
    the same step; rank 0 then checkpoints the exact position. A non-finite
    loss or gradient raises FloatingPointError on every rank at the same step
    without writing a checkpoint.
    """

    def __init__(self, state: TrainState, save: Callable[[dict, Optional[float]], None],
                 max_steps: int = -1, stop_after_epoch: int = -1, signals=(signal.SIGTERM, signal.SIGUSR1)):
        super().__init__()
        self.state, self.save = state, save
        self.max_steps, self.stop_after_epoch = max_steps, stop_after_epoch
        self.signals = signals
        self.received: Optional[int] = None

    def on_train_begin(self, logs=None):
        for s in self.signals:
            signal.signal(s, self._handle)
        if EARLY_SIGNALS:  # arrived during start-up (minutes on a big allocation): honour it now
            self._handle(EARLY_SIGNALS[-1], None)

    def _handle(self, signum, frame):
        self.received = signum
        self.model.stop_request.assign(1.0)

    def on_train_batch_end(self, batch, logs=None):
        if self.model.nonfinite.numpy() > 0:
            raise FloatingPointError(
                f"non-finite loss or gradient at epoch {self.state.epoch} step {self.state.step_in_epoch} "
                f"(global step {self.state.global_step}); the weights of that step were not applied and no "
                f"checkpoint was written. Lower optim.base_lr, add warmup, or check the input data.")
        reason = ""
        if self.model.global_stop.numpy() > 0:
            reason = "signal"
        elif 0 < self.max_steps <= self.state.global_step:
            reason = "max_steps"
        if reason:
            self._stop(reason)

    def on_epoch_end(self, epoch, logs=None):
        if not self.state.stopped and 0 < self.stop_after_epoch <= epoch + 1 and self.state.step_in_epoch == 0:
            self._stop("stop_after_epoch")
        if self.state.stopped and self.state.stop_reason != "max_steps":
            self.save(dict(logs or {}), None)

    def _stop(self, reason: str):
        self.state.stopped, self.state.stop_reason = True, reason
        self.model.stop_training = True
