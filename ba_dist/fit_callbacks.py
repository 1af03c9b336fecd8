"""Keras callbacks of the fit loop (:mod:`ba_dist.fit`), for ``ba-train`` and ``ba-train-seq``.

Not to be confused with :mod:`ba_dist.keras.callbacks`, the public face for
users' own ``model.fit``. :meth:`ba_dist.fit.FitLoop.callbacks` puts these in
the order they must run at the end of an epoch::

    StateTracker -> MetricAverage (dist.allreduce_sum) -> [task's, e.g. stream reset] -> EvalCallback
    -> Throughput -> EpochFields -> MetricsLogger (rank 0) -> [task's rank-0 ones]
    -> CheckpointCallback -> StopControl

The throughput needs the averaged metrics, the logger everything before it,
the checkpoint the evaluation it records. Every rank runs every callback;
only writes are restricted to rank 0, and every decision (stop, non-finite,
checkpoint) is taken from values that are identical on all ranks, so ranks
never disagree about the step they are at.
"""
from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from ba_dist.fit import REQUEUE_EXIT_CODE, STOP_SIGNALS, take_early_signal

__all__ = ["REQUEUE_EXIT_CODE", "TrainState", "StateTracker", "EvalCallback", "Throughput", "EpochFields",
           "ResetStreams", "MetricsLogger", "CheckpointCallback", "StopControl", "metric_average",
           "numeric_logs"]


class TrainState:
    """Where training is, shared by the callbacks: epoch, step in epoch, global step.

    Only :class:`StateTracker` (and :meth:`start_stretch` / :meth:`stop`)
    changes it; the other callbacks read it.
    """

    def __init__(self, steps_per_epoch: int, unique_batch: int, global_batch: int,
                 epoch: int = 0, step_in_epoch: int = 0):
        self.steps_per_epoch = steps_per_epoch
        self.unique_batch = unique_batch      # B
        self.global_batch = global_batch      # B x M
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch
        self.epoch_offset = 0                 # steps already done in the epoch when fit started
        self.stopped = False                  # stopped mid-run (signal / max_steps / stop_after_epoch)
        self.stop_reason = ""
        self.last_eval: dict = {}

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    @property
    def requeue(self) -> bool:
        """Stopped early with a checkpoint (signal, stop_after_epoch): the job is to be requeued."""
        return self.stopped and self.stop_reason != "max_steps"

    def position(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step}

    def start_stretch(self, offset: int) -> None:
        """A ``model.fit`` call begins ``offset`` steps into its first epoch (a resumed epoch)."""
        self.epoch_offset = offset

    def stop(self, reason: str) -> None:
        self.stopped, self.stop_reason = True, reason


class StateTracker(tf.keras.callbacks.Callback):
    """Keeps :class:`TrainState` at Keras' position (first in the list: the others read it)."""

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


class MetricAverage(tf.keras.callbacks.Callback):
    """Replaces every number in the epoch's logs by its mean over ranks (equal local batches: exact).

    One ``dist.allreduce_sum`` of all values, in sorted key order (every rank
    has the same keys). Values that are already global (evaluation results)
    come back unchanged.
    """

    def on_epoch_end(self, epoch, logs=None):
        from ba_dist import dist
        if not logs or dist.context().size == 1:
            return
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float, np.number, np.ndarray, tf.Tensor)))
        sums = dist.allreduce_sum([float(logs[k]) for k in keys], name="ba_epoch_logs")
        for k, total in zip(keys, sums):
            logs[k] = float(total) / dist.context().size


def metric_average() -> tf.keras.callbacks.Callback:
    """The callback averaging the epoch's train metrics over ranks (:class:`MetricAverage`)."""
    return MetricAverage()


class EvalCallback(tf.keras.callbacks.Callback):
    """Exact sharded evaluation every ``every`` epochs and after the last one; results go into the logs."""

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


class Throughput(tf.keras.callbacks.Callback):
    """``<unit>_per_sec`` (every copy) and ``unique_<unit>_per_sec`` over the epoch's training time.

    Args:
      state: the run's position.
      unit: ``images`` or ``tokens``.
      multiplicity: M (copies per unique sample).
      per_step_key: the logs entry that holds the global units per step (the
        token count, averaged over the epoch); None: ``state.global_batch``.
    """

    def __init__(self, state: TrainState, unit: str, multiplicity: int, per_step_key: Optional[str] = None):
        super().__init__()
        self.state, self.unit, self.multiplicity, self.per_step_key = state, unit, multiplicity, per_step_key

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.s0 = time.perf_counter(), self.state.step_in_epoch
        self.t_last = self.t0

    def on_train_batch_end(self, batch, logs=None):
        self.t_last = time.perf_counter()  # training time only: not the evaluation after the last step

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        steps = (self.state.step_in_epoch or self.state.steps_per_epoch) - self.s0
        dt = max(self.t_last - self.t0, 1e-9)
        per_step = float(logs.get(self.per_step_key, 0.0)) if self.per_step_key else self.state.global_batch
        logs[f"{self.unit}_per_sec"] = steps * per_step / dt
        logs[f"unique_{self.unit}_per_sec"] = logs[f"{self.unit}_per_sec"] / self.multiplicity
        logs["epoch_time_sec"] = dt


class EpochFields(tf.keras.callbacks.Callback):
    """Adds the task's own per-epoch fields to the logs (on every rank: ``fields`` may be collective)."""

    def __init__(self, fields: Callable[[dict], dict]):
        super().__init__()
        self.fields = fields

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.fields(logs))


class ResetStreams(tf.keras.callbacks.Callback):
    """Zero the language model's carried recurrent state at the start of every epoch (a no-op otherwise)."""

    def __init__(self, train_model):
        super().__init__()
        self.train_model = train_model

    def on_epoch_begin(self, epoch, logs=None):
        self.train_model.reset_streams()


class MetricsLogger(tf.keras.callbacks.Callback):
    """Rank 0: ``metrics.jsonl`` + ``metrics.csv`` + TensorBoard scalars, one row per epoch.

    The columns are a contract (docs/usage.md, docs/sequence.md): ``fields`` in
    this order, ``epoch`` fractional after a mid-epoch stop, every numeric field
    a TensorBoard scalar at the global step. Keras' ``CSVLogger`` cannot keep
    it (sorted columns fixed by the first epoch's logs, so ``val_*`` vanish
    when the first epoch is not evaluated; 0-based epoch index; ``NA`` for
    gaps) and its ``TensorBoard`` writes ``epoch_<metric>`` at the epoch index,
    so this writes the files itself.
    """

    def __init__(self, workdir: Path, state: TrainState, lr_fn: Callable[[], float], fields: Sequence[str]):
        super().__init__()
        self.workdir, self.state, self.lr_fn, self.fields = Path(workdir), state, lr_fn, tuple(fields)
        self.writer = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        # epochs completed, fractional after a mid-epoch stop
        epochs_done = self.state.global_step / self.state.steps_per_epoch
        row = {"epoch": int(epochs_done) if self.state.step_in_epoch == 0 else epochs_done,
               "step": self.state.global_step, "lr": float(self.lr_fn()),
               "train_loss": logs.get("loss"), "train_top1": logs.get("top1")}
        for k in self.fields:
            if k not in row:
                row[k] = logs.get(k)
        row = {k: _plain(v) for k, v in row.items()}
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.workdir / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k) for k in self.fields})
        with self.writer.as_default(step=self.state.global_step):
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tf.summary.scalar(k, v)
        self.writer.flush()


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
    """Every ``every`` epochs (and after the last) ``save(logs)``; rank 0 writes (see FitLoop.save)."""

    def __init__(self, state: TrainState, save: Callable[[dict], None], every: int, last_epoch: int):
        super().__init__()
        self.state, self.save, self.every, self.last_epoch = state, save, every, last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.state.stopped:
            return  # StopControl saves the stop position itself
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.last_epoch:
            self.save(dict(logs or {}))


class StopControl(tf.keras.callbacks.Callback):
    """Stop all ranks at the same step boundary on a signal, max_steps or stop_after_epoch.

    SIGTERM / SIGUSR1 (what SLURM sends before the time limit) set a flag that
    the training step reduces over all ranks, so every rank sees the stop at
    the same step; rank 0 then checkpoints the exact position. A signal that
    arrived during start-up (:func:`ba_dist.fit.catch_stop_signals_early`) is
    honoured at the first step. A non-finite loss or gradient raises
    FloatingPointError on every rank at the same step without writing a
    checkpoint. Must come last: it saves after everything else has run.
    """

    def __init__(self, state: TrainState, save: Callable[[dict], None], max_steps: int = -1,
                 stop_after_epoch: int = -1):
        super().__init__()
        self.state, self.save = state, save
        self.max_steps, self.stop_after_epoch = max_steps, stop_after_epoch
        self.received: Optional[int] = None

    def on_train_begin(self, logs=None):
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        early = take_early_signal()
        if early is not None:  # arrived during start-up (minutes on a big allocation): honour it now
            self._handle(early, None)

    def _handle(self, signum, frame):
        # Python only: a signal handler runs between any two bytecodes of the main
        # thread, possibly while TensorFlow traces a graph (e.g. a tf.data function
        # of the evaluation dataset); a variable assignment here would be captured
        # into that graph ("You must feed a value for placeholder tensor ...").
        self.received = signum

    def on_train_batch_begin(self, batch, logs=None):
        # the request joins the flags that this step allreduces
        if self.received is not None and float(self.model.stop_request.numpy()) == 0.0:
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
        if self.state.requeue:
            self.save(dict(logs or {}))

    def _stop(self, reason: str):
        self.state.stop(reason)
        self.model.stop_training = True
