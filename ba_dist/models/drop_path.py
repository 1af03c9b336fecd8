"""Drop-path (stochastic depth of cell branches, Larsson et al. 2017; Zoph et al. 2018).

In the cell networks (``ba_dist.models.cells``) every branch of a cell that is not an
identity is multiplied by a per-example Bernoulli mask and rescaled by ``1 / keep``
during training, so that each example of the batch trains a randomly thinned cell
(with BA, every copy of an image gets its own mask). At inference the layer is the
identity.

DARTS (Liu et al. 2019, section 3.3) raises the drop probability linearly from 0 to
0.2 over training. The rate therefore lives in a non-trainable variable that
:func:`set_drop_path_rate` (or the :class:`DropPathSchedule` callback, once per
epoch) changes without retracing the training step.
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["DropPath", "DropPathSchedule", "drop_path_layers", "set_drop_path_rate"]


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop-path rate must be in [0, 1), got {rate!r}")
    return float(rate)


@tf.keras.utils.register_keras_serializable(package="ba_dist")
class DropPath(tf.keras.layers.Layer):
    """Zeroes whole examples of its input with probability ``rate`` while training.

    Args:
        rate: Initial drop probability in [0, 1); the ``rate`` variable may be changed
            later (:func:`set_drop_path_rate`).
        **kwargs: Keras layer arguments (``name``, ``dtype``).
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.initial_rate = _check_rate(rate)

    def build(self, input_shape):
        # float32 under any dtype policy; not trainable, so no gradient and no weight decay.
        self.rate = self.add_weight(name="drop_rate", shape=(), dtype=tf.float32, trainable=False,
                                    initializer=tf.keras.initializers.Constant(self.initial_rate))
        super().build(input_shape)

    def call(self, x, training=None):
        if training is None:
            training = tf.keras.backend.learning_phase()

        def drop():
            keep = tf.cast(1.0 - self.rate, x.dtype)
            shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
            # floor(keep + U[0, 1)) is 1 with probability keep: one draw per example.
            mask = tf.floor(keep + tf.random.uniform(shape, dtype=x.dtype))
            return x / keep * mask

        if isinstance(training, bool):
            return drop() if training else tf.identity(x)
        return tf.cond(tf.cast(training, tf.bool), drop, lambda: tf.identity(x))

    def get_config(self):
        return dict(super().get_config(), rate=self.initial_rate)


def drop_path_layers(model: tf.keras.Model) -> list[DropPath]:
    """The DropPath layers of ``model``, nested models included."""
    return [m for m in model.submodules if isinstance(m, DropPath)]


def set_drop_path_rate(model: tf.keras.Model, rate: float) -> int:
    """Sets the drop probability of every DropPath layer of ``model``.

    Returns:
        The number of layers changed (0 for models without drop-path).
    """
    rate = _check_rate(rate)
    layers = drop_path_layers(model)
    for layer in layers:
        layer.rate.assign(rate)
    return len(layers)


class DropPathSchedule(tf.keras.callbacks.Callback):
    """DARTS's ramp: drop probability ``final_rate * epoch / epochs`` in epoch ``epoch`` (0-based).

    Add it to ``model.fit`` callbacks; it changes the DropPath layers of ``self.model``
    (a wrapper model holding the network is fine).

    Args:
        final_rate: The probability the ramp approaches at the end (0.2 in DARTS).
        epochs: Length of training in epochs.
    """

    def __init__(self, final_rate: float, epochs: int):
        super().__init__()
        if epochs < 1:
            raise ValueError(f"DropPathSchedule needs epochs >= 1, got {epochs}")
        self.final_rate = _check_rate(final_rate)
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        set_drop_path_rate(self.model, self.final_rate * min(epoch, self.epochs) / self.epochs)
