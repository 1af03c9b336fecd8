"""The BA training step of the sequence models.

:class:`SeqTrainModel` extends :class:`ba_dist.train_step.BATrainModel` (same stop
flags, non-finite guard and Keras integration, so ``ba_dist.fit_callbacks`` work
unchanged) with a token-level step::

    seed    = step_seed(seed, step, rank)       -> every copy its own dropout masks
    logits  = net(inputs, training=True, seed, copies=m_local)
    n       = allreduce-sum(non-pad target tokens)        (all ranks, all copies)
    loss    = sum over local tokens of label-smoothed CE  x  N / n
    grads   = dist.allreduce_mean of d loss  = d (sum over ALL tokens / n)
            (+ wd * w), clipped to clip_norm (global norm, identical on every rank)

so the update is the mean over every target token of the B x M batch even
when groups hold different numbers of tokens (token-bounded batches), as
fairseq normalises. For the language model the recurrent state of every row
(each copy keeps its own: their dropout differs) is carried across steps in
non-trainable variables and reset at the start of every epoch.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from ba_dist import dist
from ba_dist.seq import dropout
from ba_dist.seq.data import PAD
from ba_dist.train_step import BATrainModel

__all__ = ["token_losses", "SeqTrainModel"]


def token_losses(targets: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0):
    """Per-token ``(label-smoothed CE, plain NLL)``.

    Smoothing spreads ``label_smoothing`` uniformly over the vocabulary (as
    Keras' ``CategoricalCrossentropy(label_smoothing=...)``), computed without
    a one-hot of the vocabulary.
    """
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    nll = -tf.gather(logp, targets, batch_dims=targets.shape.rank)
    if label_smoothing == 0.0:
        return nll, nll
    return (1.0 - label_smoothing) * nll - label_smoothing * tf.reduce_mean(logp, -1), nll


class SeqTrainModel(BATrainModel):
    """``net`` plus the rank-averaged token-level BA step (gradients as in ``BATrainModel``).

    Args:
      net: ``LSTMLanguageModel`` (``recurrent_rows`` set) or ``Transformer``.
      seed, rank: base seed of the job and this rank (dropout seeds).
      m_local: copies per rank (rows are copy-major).
      label_smoothing, clip_norm, weight_decay: see ``configs/seq_*.py``.
      recurrent_rows: rows of the rank's batch for a recurrent ``net``.
      grad_compression: ``"none"`` or ``"fp16"`` (gradients travel as float16).
    """

    def __init__(self, net: tf.keras.Model, *, seed: int, rank: int, m_local: int,
                 label_smoothing: float = 0.0, clip_norm: float = 0.0, weight_decay: float = 0.0,
                 recurrent_rows: Optional[int] = None, grad_compression: str = "none"):
        super().__init__(net, weight_decay=weight_decay, decay_biases=True, grad_compression=grad_compression)
        self.seed, self.rank, self.m_local = int(seed), int(rank), int(m_local)
        self.label_smoothing, self.clip_norm = float(label_smoothing), float(clip_norm)
        self.trackers = {k: tf.keras.metrics.Mean(name=k) for k in ("loss", "nll", "grad_norm", "tokens")}
        self.top1 = tf.keras.metrics.Mean(name="top1")   # next-token accuracy
        self.recurrent = recurrent_rows is not None
        self.states = ([tf.Variable(tf.zeros(s), trainable=False, name=f"stream_state_{i}")
                        for i, s in enumerate(net.state_shapes(recurrent_rows))] if self.recurrent else [])

    def reset_streams(self) -> None:
        """Zero the language model's carried state (start of an epoch)."""
        for v in self.states:
            v.assign(tf.zeros_like(v))

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)[0] if self.recurrent else self.net(inputs, training=training)

    def train_step(self, data):
        inputs, targets = data
        tvars = self.net.trainable_variables
        mask = tf.cast(tf.not_equal(targets, PAD), tf.float32)
        # n first: the loss is normalised by the tokens of the whole world
        n = dist.allreduce_sum(tf.reduce_sum(mask), name="seq_tokens")
        seed = dropout.step_seed(self.seed, self.optimizer.iterations, self.rank)
        kw = dict(training=True, seed=seed, copies=self.m_local)
        with tf.GradientTape() as tape:
            if self.recurrent:
                logits, new_states = self.net(inputs, states=[v.read_value() for v in self.states], **kw)
            else:
                logits = self.net(inputs, **kw)
            smoothed, nll = token_losses(targets, logits, self.label_smoothing)
            local = tf.reduce_sum(smoothed * mask)
            scaled = local * float(dist.context().size) / tf.maximum(n, 1.0)
        # averaged over ranks as BATrainModel.train_step does (sparse gradients go dense)
        grads = dist.allreduce_mean(tape.gradient(scaled, tvars), fp16=self.fp16_grads)
        if self.decayed:
            decayed = {v.ref() for v in self.decayed}
            grads = [g + self.weight_decay * v if v.ref() in decayed else g for g, v in zip(grads, tvars)]
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=targets.dtype), targets), tf.float32)
        sums = dist.allreduce_sum(tf.stack([local, tf.reduce_sum(nll * mask), tf.reduce_sum(correct * mask),
                                            self.stop_request]), name="seq_flags")
        grad_norm = tf.linalg.global_norm(grads)
        if self.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=grad_norm)
        finite = tf.logical_and(tf.math.is_finite(sums[0]), tf.math.is_finite(grad_norm))
        self.nonfinite.assign(tf.where(finite, 0.0, 1.0))
        self.global_stop.assign(tf.where(sums[3] > 0, 1.0, 0.0))

        def apply():
            self.optimizer.apply_gradients(zip(grads, tvars))
            for v, s in zip(self.states, new_states if self.recurrent else []):
                v.assign(tf.stop_gradient(s))
            return tf.constant(True)

        # a non-finite step must not touch the weights (the run stops on it)
        tf.cond(finite, apply, lambda: tf.constant(False))
        denom = tf.maximum(n, 1.0)
        self.trackers["loss"].update_state(sums[0] / denom)
        self.trackers["nll"].update_state(sums[1] / denom)
        self.trackers["grad_norm"].update_state(tf.where(tf.math.is_finite(grad_norm), grad_norm, 0.0))
        self.trackers["tokens"].update_state(n)
        self.top1.update_state(sums[2] / denom)
        return {m.name: m.result() for m in self.metrics}
