"""Keras callbacks of ``ba-train-seq`` that ``ba_dist.callbacks`` has no counterpart for.

Ordering in the fit loop (as ``ba-train``'s): state tracker -> metric average
(Horovod) -> stream reset -> evaluation -> token throughput -> metrics logger
(rank 0) -> checkpoint -> stop control. The throughput must run after the
metric average, and the logger after both.
"""
from __future__ import annotations

import math
import time

import tensorflow as tf

from ba_dist.callbacks import MetricsLogger, TrainState

__all__ = ["ResetStreams", "TokenThroughput", "SeqMetricsLogger"]


class ResetStreams(tf.keras.callbacks.Callback):
    """Zero the language model's carried recurrent state at the start of every epoch (a no-op otherwise)."""

    def __init__(self, train_model):
        super().__init__()
        self.train_model = train_model

    def on_epoch_begin(self, epoch, logs=None):
        self.train_model.reset_streams()


class TokenThroughput(tf.keras.callbacks.Callback):
    """Target tokens per second over the epoch: all copies (``tokens_per_sec``) and unique ones."""

    def __init__(self, state: TrainState, multiplicity: int):
        super().__init__()
        self.state, self.multiplicity = state, multiplicity

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.s0 = time.perf_counter(), self.state.step_in_epoch

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.state.step_in_epoch or self.state.steps_per_epoch) - self.s0
        dt = max(time.perf_counter() - self.t0, 1e-9)
        if logs is not None:
            per_step = float(logs.get("tokens", 0.0))   # global target tokens per step, copies included
            logs["tokens_per_sec"] = steps * per_step / dt
            logs["unique_tokens_per_sec"] = logs["tokens_per_sec"] / self.multiplicity
            logs["epoch_time_sec"] = dt


class SeqMetricsLogger(MetricsLogger):
    """``metrics.jsonl`` / ``metrics.csv`` / TensorBoard rows with token-level fields (rank 0)."""

    FIELDS = ("epoch", "step", "lr", "train_loss", "train_nll", "train_ppl", "train_top1", "val_loss", "val_ppl",
              "val_top1", "val_bleu", "tokens_per_sec", "unique_tokens_per_sec", "grad_norm", "epoch_time_sec")

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if "nll" in logs:
            logs["train_nll"] = float(logs["nll"])
            logs["train_ppl"] = math.exp(min(float(logs["nll"]), 50.0))
        super().on_epoch_end(epoch, logs)
