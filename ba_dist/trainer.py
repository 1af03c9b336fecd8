"""The synchronous-SGD step and the exact sharded evaluation.

:class:`BATrainModel` wraps a zoo network for ``model.fit``. One step::

    logits = net(x)                      x: this rank's m_local x b examples
    loss   = CE(y, logits) + wd/2 |w|^2  (mean over the local batch; no BN params in |w|)
    grads  = Horovod allreduce-average   = 1/(N m_local b) sum over all B x M examples
    flags  = allreduce-sum [loss, stop request]   (fused with the gradients)
    apply unless the global gradient is non-finite

Because ``grad_norm`` and the flags come out of allreduces, every rank sees
the same values and takes the same decisions (stop, non-finite) at the same
step without any extra communication.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from ba_dist import optim

__all__ = ["BATrainModel", "evaluate_sharded"]


class BATrainModel(tf.keras.Model):
    """``net`` plus the Horovod-averaged training step.

    Args:
      net: the network (logits out).
      hvd: initialised ``horovod.tensorflow`` module.
      weight_decay: coupled L2 on every decayed variable (not BN parameters).
      decay_biases: include biases in weight decay.
      label_smoothing: for the cross-entropy.
      compression: ``hvd.Compression.none`` or ``.fp16``.
    """

    def __init__(self, net: tf.keras.Model, hvd, weight_decay: float = 0.0, decay_biases: bool = True,
                 label_smoothing: float = 0.0, compression=None):
        super().__init__(name="ba_train")
        self.net = net
        self.hvd = hvd
        self.weight_decay = weight_decay
        self.decayed = optim.decayed_variables(net, decay_biases=decay_biases) if weight_decay > 0 else []
        self.loss_fn = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        self.compression = compression if compression is not None else hvd.Compression.none
        # Set from Python (signal handler); read inside the step and reduced over ranks.
        self.stop_request = tf.Variable(0.0, trainable=False, name="stop_request")
        self.global_stop = tf.Variable(0.0, trainable=False, name="global_stop")
        self.nonfinite = tf.Variable(0.0, trainable=False, name="nonfinite")
        self.trackers = {k: tf.keras.metrics.Mean(name=k) for k in ("loss", "grad_norm")}
        self.top1 = tf.keras.metrics.CategoricalAccuracy(name="top1")

    @property
    def metrics(self):
        return list(self.trackers.values()) + [self.top1]

    def call(self, x, training=False):
        return self.net(x, training=training)

    def train_step(self, data):
        x, y = data
        tvars = self.net.trainable_variables
        opt = self.optimizer
        mixed = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.net(x, training=True), tf.float32)
            loss = self.loss_fn(y, logits)
            total = loss
            if self.decayed:
                total += optim.l2_regularization_loss(self.decayed, self.weight_decay)
            scaled = opt.get_scaled_loss(total) if mixed else total
        tape = self.hvd.DistributedGradientTape(tape, compression=self.compression)
        grads = tape.gradient(scaled, tvars)
        if mixed:
            grads = opt.get_unscaled_gradients(grads)
        flags = self.hvd.allreduce(tf.stack([loss, self.stop_request]), op=self.hvd.Sum, name="ba_flags")
        grad_norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(flags[0])
        if not mixed:  # under loss scaling the optimizer itself skips non-finite steps
            finite = tf.logical_and(finite, tf.math.is_finite(grad_norm))
        self.nonfinite.assign(tf.where(finite, 0.0, 1.0))
        self.global_stop.assign(tf.where(flags[1] > 0, 1.0, 0.0))

        def apply():
            opt.apply_gradients(zip(grads, tvars))
            return tf.constant(True)

        # A non-finite step must not touch the weights: the run stops on it and
        # the last good state is what a checkpoint or a post-mortem sees.
        tf.cond(finite, apply, lambda: tf.constant(False))
        self.trackers["loss"].update_state(flags[0] / self.hvd.size())
        self.trackers["grad_norm"].update_state(tf.where(tf.math.is_finite(grad_norm), grad_norm, 0.0))
        self.top1.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}


def evaluate_sharded(net: tf.keras.Model, dataset, hvd, num_classes: int) -> dict:
    """Exact evaluation over a dataset sharded across ranks.

    Each rank sums ``loss * w``, ``correct@1 * w``, ``correct@5 * w`` and ``w``
    over its shard (padding has w = 0); one allreduce of the sums gives
    ``sum correct / sum count`` over the whole split (not a mean of per-rank means).
    """
    sums = np.zeros(4, np.float64)
    k = min(5, num_classes)

    @tf.function
    def step(x, y, w):
        logits = tf.cast(net(x, training=False), tf.float32)
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1), y), tf.float32)
        top5 = tf.cast(tf.nn.in_top_k(y, logits, k), tf.float32)
        return tf.stack([tf.reduce_sum(loss * w), tf.reduce_sum(top1 * w), tf.reduce_sum(top5 * w), tf.reduce_sum(w)])

    for x, y, w in dataset:
        sums += step(x, y, w).numpy()
    total = hvd.allreduce(tf.constant(sums), op=hvd.Sum, name="ba_eval_sums").numpy()
    n = max(total[3], 1.0)
    return {"val_loss": total[0] / n, "val_top1": total[1] / n, "val_top5": total[2] / n, "val_count": int(total[3])}
