"""The synchronous-SGD step and the exact sharded evaluation.

:class:`BATrainModel` wraps a zoo network for ``model.fit``. One step::

    logits = net(x)                      x: this rank's m_local x b examples
    loss   = CE(y, logits) [+ a CE(y, aux_logits)]   (mean over the local batch; a = auxiliary_weight)
    g_r    = local gradient of rank r of ``loss``
    g      = Horovod allreduce-average   = 1/(N m_local b) sum over all B x M examples
    flags  = allreduce-sum [loss, stop request, |g_r|^2]   (fused with the gradients)
    g      = g * min(1, clip / |g|)      (only with grad_clip_norm = clip > 0)
    update = g + wd w                    (coupled L2 = gradient of wd/2 |w|^2; no BN params in w)
    apply unless the global gradient is non-finite

The weight-decay term ``wd w`` is the same on every rank (the weights are), so
adding it after the average gives the update of differentiating
``loss + wd/2 |w|^2`` on each rank; keeping it out of ``g`` makes ``grad_norm``
the norm of the loss gradient (the paper's Figure 2) and lets the clipping see
the loss gradient only, as DARTS's (PyTorch SGD adds the decay after the clip).
Clipping the averaged gradient gives every rank the same update.

Because ``grad_norm`` and the flags come out of allreduces, every rank sees
the same values and takes the same decisions (stop, non-finite) at the same
step without any extra communication.

Gradient statistics of the last step (read by ``ba_dist.analysis.gradstats``):
``step_grad_norm = |g|`` with ``g = mean_r g_r`` the averaged loss gradient
(before clipping and weight decay), and
``step_grad_var = mean_r |g_r|^2 - |g|^2 = mean_r |g_r - g|^2``, the spread of
the N per-rank gradients around their mean (0 on one rank, and exactly 0 when
every rank computed the same gradient). It costs one extra scalar in the flags
allreduce, which is why the step averages the gradients itself instead of
through Horovod's ``DistributedGradientTape`` (that tape never exposes ``g_r``).
All communication goes through :mod:`ba_dist.dist`'s collective API.
"""
from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from ba_dist import dist, optim

__all__ = ["BATrainModel", "evaluate_sharded", "main_logits"]


class BATrainModel(tf.keras.Model):
    """``net`` plus the rank-averaged training step (``dist.allreduce_mean``).

    Args:
      net: the network (logits out).
      weight_decay: coupled L2 on every decayed variable (not BN parameters).
      decay_biases: include biases in weight decay.
      label_smoothing: for the cross-entropy.
      grad_compression: ``"none"`` or ``"fp16"`` (gradients travel as float16).
      auxiliary_weight: weight ``a`` of the auxiliary classifier's cross-entropy; the
        network then outputs ``[logits, aux_logits]`` (DARTS: 0.4). 0: a single output.
      grad_clip_norm: clip the averaged loss gradient to this global norm (DARTS: 5); 0: off.
      copy_maker: with ``input.copies_on='device'``, the data's ``CopyMaker``: the
        step receives unique batches and makes the BA copies itself, on the model's device.
    """

    def __init__(self, net: tf.keras.Model, weight_decay: float = 0.0, decay_biases: bool = True,
                 label_smoothing: float = 0.0, grad_compression: str = "none", auxiliary_weight: float = 0.0,
                 grad_clip_norm: float = 0.0, copy_maker=None):
        super().__init__(name="ba_train")
        self.copy_maker = copy_maker
        self.net = net
        self.weight_decay = weight_decay
        self.decayed = optim.decayed_variables(net, decay_biases=decay_biases) if weight_decay > 0 else []
        self.loss_fn = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        if grad_compression not in ("none", "fp16"):
            raise ValueError(f"grad_compression must be 'none' or 'fp16', got {grad_compression!r}")
        self.fp16_grads = grad_compression == "fp16"
        self.auxiliary_weight = float(auxiliary_weight)
        self.grad_clip_norm = float(grad_clip_norm)
        # Set from Python (signal handler); read inside the step and reduced over ranks.
        self.stop_request = tf.Variable(0.0, trainable=False, name="stop_request")
        self.global_stop = tf.Variable(0.0, trainable=False, name="global_stop")
        self.nonfinite = tf.Variable(0.0, trainable=False, name="nonfinite")
        # Last step's gradient norm and spread over ranks (module docstring); identical on all ranks.
        self.step_grad_norm = tf.Variable(0.0, trainable=False, name="step_grad_norm")
        self.step_grad_var = tf.Variable(0.0, trainable=False, name="step_grad_var")
        self.trackers = {k: tf.keras.metrics.Mean(name=k) for k in ("loss", "grad_norm")}
        self.top1 = tf.keras.metrics.CategoricalAccuracy(name="top1")

    @property
    def metrics(self):
        return list(self.trackers.values()) + [self.top1]

    def call(self, x, training=False):
        return main_logits(self.net(x, training=training))

    def local_gradients(self, x, y):
        """Forward and backward on this rank's batch: (logits, loss, local loss gradients).

        The loss is the cross-entropy of the logits plus ``auxiliary_weight`` times that
        of the auxiliary logits (if the network has the head); weight decay is added to
        the averaged gradient in :meth:`train_step`.
        """
        opt = self.optimizer
        mixed = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            out = self.net(x, training=True)
            logits = tf.cast(main_logits(out), tf.float32)
            loss = self.loss_fn(y, logits)
            if isinstance(out, (list, tuple)) and self.auxiliary_weight > 0:
                loss += self.auxiliary_weight * self.loss_fn(y, tf.cast(out[1], tf.float32))
            scaled = opt.get_scaled_loss(loss) if mixed else loss
        return logits, loss, tape.gradient(scaled, self.net.trainable_variables)

    def enable_xla(self) -> None:
        """XLA-compile the forward/backward pass only.

        Horovod's collectives have no XLA kernels, so compiling the whole step
        (``compile(jit_compile=True)``) fails; the allreduce stays outside.
        """
        self.local_gradients = tf.function(self.local_gradients, jit_compile=True)

    def prepare_batch(self, data):
        """A dataset element -> ``(x, y)``: the BA copies are made here when the data yields unique batches."""
        x, y = data[0], data[1]
        if isinstance(x, dict):
            if self.copy_maker is None:
                raise ValueError("the dataset yields unique batches (input.copies_on='device') but the model "
                                 "has no copy_maker")
            x, y = self.copy_maker.on_device(x, y)
        return x, y

    def train_step(self, data):
        x, y = self.prepare_batch(data)
        tvars = self.net.trainable_variables
        opt = self.optimizer
        mixed = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)
        logits, loss, local = self.local_gradients(x, y)
        # average over all ranks, as Horovod's DistributedGradientTape would
        # (same compression; scaled gradients travel, so fp16 cannot underflow).
        grads = dist.allreduce_mean(local, fp16=self.fp16_grads)
        local_sq = _sum_of_squares(local)
        if mixed:
            grads = opt.get_unscaled_gradients(grads)
            local_sq = local_sq / tf.square(tf.cast(opt.loss_scale, tf.float32))
        flags = dist.allreduce_sum(tf.stack([loss, self.stop_request, local_sq]), name="ba_flags")
        world = float(dist.context().size)
        grad_sq = _sum_of_squares(grads)
        grad_norm = tf.sqrt(grad_sq)
        self.step_grad_norm.assign(grad_norm)
        # max(): mean_r |g_r|^2 >= |mean_r g_r|^2 holds exactly, float rounding can dip below it
        self.step_grad_var.assign(tf.maximum(flags[2] / world - grad_sq, 0.0))
        finite = tf.math.is_finite(flags[0])
        if not mixed:  # under loss scaling the optimizer itself skips non-finite steps
            finite = tf.logical_and(finite, tf.math.is_finite(grad_norm))
        self.nonfinite.assign(tf.where(finite, 0.0, 1.0))
        self.global_stop.assign(tf.where(flags[1] > 0, 1.0, 0.0))
        if self.grad_clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip_norm, use_norm=grad_norm)
        grads = self._add_weight_decay(grads, tvars)

        def apply():
            opt.apply_gradients(zip(grads, tvars))
            return tf.constant(True)

        # A non-finite step must not touch the weights: the run stops on it and
        # the last good state is what a checkpoint or a post-mortem sees.
        tf.cond(finite, apply, lambda: tf.constant(False))
        self.trackers["loss"].update_state(flags[0] / world)
        self.trackers["grad_norm"].update_state(tf.where(tf.math.is_finite(grad_norm), grad_norm, 0.0))
        self.top1.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics}

    def _add_weight_decay(self, grads, tvars):
        """``g + wd w`` for the decayed variables: the gradient of ``wd/2 |w|^2`` added to the loss's."""
        if not self.decayed:
            return grads
        decayed = {v.ref() for v in self.decayed}
        return [(self.weight_decay * v if g is None else tf.convert_to_tensor(g) + self.weight_decay * v)
                if v.ref() in decayed else g for g, v in zip(grads, tvars)]


def main_logits(out):
    """The main logits of a network's output (the first of ``[logits, aux_logits]``)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def _sum_of_squares(grads) -> tf.Tensor:
    """``|g|^2`` over all variables, float32 (``tf.linalg.global_norm`` squared, without the sqrt)."""
    parts = [tf.reduce_sum(tf.square(tf.cast(g.values if isinstance(g, tf.IndexedSlices) else g, tf.float32)))
             for g in grads if g is not None]
    return tf.add_n(parts) if parts else tf.constant(0.0)


# One compiled evaluation step per (network, class count), built on first use:
# a fresh tf.function per call would retrace at every end-of-epoch evaluation.
_EVAL_STEPS: "weakref.WeakKeyDictionary[tf.keras.Model, dict]" = weakref.WeakKeyDictionary()


def _eval_step(net: tf.keras.Model, num_classes: int):
    """The cached ``tf.function`` computing one batch's weighted ``[loss, top1, top5, count]`` sums."""
    per_net = _EVAL_STEPS.setdefault(net, {})
    if num_classes in per_net:
        return per_net[num_classes]
    ref = weakref.ref(net)  # the cache must not keep the network alive
    k = min(5, num_classes)

    @tf.function
    def step(x, y, w):
        model = ref()
        if x.shape.rank == 5:
            copies = tf.shape(x)[1]
            logits = tf.cast(main_logits(model(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)),
                                               training=False)), tf.float32)
            probs = tf.reduce_mean(tf.reshape(tf.nn.softmax(logits), [-1, copies, num_classes]), axis=1)
            # log of the averaged softmax acts as logits: softmax(log p) = p
            logits = tf.math.log(tf.maximum(probs, 1e-30))
        else:
            logits = tf.cast(main_logits(model(x, training=False)), tf.float32)
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1), y), tf.float32)
        top5 = tf.cast(tf.nn.in_top_k(y, logits, k), tf.float32)
        return tf.stack([tf.reduce_sum(loss * w), tf.reduce_sum(top1 * w), tf.reduce_sum(top5 * w), tf.reduce_sum(w)])

    per_net[num_classes] = step
    return step


def evaluate_sharded(net: tf.keras.Model, dataset, num_classes: int) -> dict:
    """Exact evaluation over a dataset sharded across ranks.

    Each rank sums ``loss * w``, ``correct@1 * w``, ``correct@5 * w`` and ``w``
    over its shard (padding has w = 0; a network with an auxiliary head is judged by
    its main logits); one allreduce of the sums gives
    ``sum correct / sum count`` over the whole split (not a mean of per-rank means).

    Images of shape ``[batch, N, H, W, C]`` (``make_eval_dataset(tta=N)``) are
    N augmented copies per sample: the prediction is the softmax averaged over
    the copies (test-time augmentation, paper Table 5), and the loss is
    ``-log`` of its probability of the label.

    Samples the dataset could not load (its ``eval_problems``) have weight 0;
    their count is reduced with the sums: reported as ``val_skipped``, or under
    ``on_corrupt='error'`` raised on every rank as ``DataSourceError`` naming the first.
    The step is compiled once per network and reused by every later call.
    """
    problems = getattr(dataset, "eval_problems", None)
    sums = np.zeros(5, np.float64)
    step = _eval_step(net, num_classes)
    for x, y, w in dataset:
        sums[:4] += step(x, y, w).numpy()
    sums[4] = len(problems.bad) if problems else 0
    total = dist.allreduce_sum(sums, name="ba_eval_sums")
    if total[4] and problems and problems.on_corrupt == "error":
        from ba_dist.data.sources import DataSourceError
        first = next(b for bad in dist.allgather(problems.bad) for b in bad)
        raise DataSourceError(problems.error_message(first, int(total[4])))
    n = max(total[3], 1.0)
    return {"val_loss": total[0] / n, "val_top1": total[1] / n, "val_top5": total[2] / n, "val_count": int(total[3]),
            "val_skipped": int(total[4])}
