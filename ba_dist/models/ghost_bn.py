"""Ghost Batch Normalization (Hoffer et al., 2017) over consecutive chunks of the batch.

Batch Augmentation makes the per-rank batch ``M_local`` times larger than the number of
unique images in it. Normalising the whole batch would change the statistics every layer
sees (and the paper's ResNet-50 was trained with "subsets of 32 images in the batch
normalized separately", appendix C.2/D). This layer normalises each run of
``virtual_batch_size`` consecutive examples on its own.

Why not ``tf.keras.layers.BatchNormalization(virtual_batch_size=...)``: Keras reshapes the
batch to ``[virtual_batch_size, -1, ...]``, so its ghost batches are *strided* (examples
``g, g + G, g + 2G, ...``). With the copy-major layout of the BA pipeline (copy 0 of every
unique image, then copy 1, ...), consecutive chunks hold distinct images, while strided
chunks can hold several copies of the same image. Consecutive chunks are also what a
per-device loop over micro-batches (the paper's gradient-accumulation set-up) computes.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["GhostBatchNormalization"]


@tf.keras.utils.register_keras_serializable(package="ba_dist")
class GhostBatchNormalization(tf.keras.layers.Layer):
    """Batch normalization whose training statistics come from ghost batches.

    Training (``training=True`` and the layer is trainable):
      * the batch of ``N`` examples is split into ``G = N / virtual_batch_size`` consecutive
        chunks; ``N`` must be a multiple of ``virtual_batch_size`` (``ValueError`` when
        ``N`` is static, a ``tf.debugging`` assertion otherwise);
      * each chunk ``g`` is normalised with its own mean ``mu_g`` and biased variance
        ``var_g``, computed over the chunk's examples and all non-channel axes;
      * the moving statistics are updated **once per step**::

            moving_mean     <- momentum * moving_mean + (1 - momentum) * mean_g(mu_g)
            moving_variance <- momentum * moving_variance
                               + (1 - momentum) * mean_g(var_g * n / (n - 1))

        where ``n`` is the number of values per channel in one chunk
        (``virtual_batch_size * H * W`` for images). The Bessel factor makes the estimate
        unbiased, which is what ``tf.keras`` fused BatchNormalization (the one Keras uses
        for 4-D NHWC inputs) and PyTorch do; Keras's non-fused path (e.g. 2-D inputs)
        keeps the biased variance.

    Inference (``training=False``, or ``trainable=False`` as for Keras BatchNormalization):
    ``gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`` for any batch size.

    Statistics and normalisation are computed in float32 whatever the layer's dtype policy,
    and the weights are float32 (as Keras BatchNormalization does under mixed precision).
    The weights are named ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance`` like
    those of BatchNormalization, so name-based filters (e.g. no weight decay) treat both alike.

    Args:
        virtual_batch_size: Examples per ghost batch. With ``virtual_batch_size`` equal to the
            batch size the layer computes what BatchNormalization computes.
        axis: The channel axis (not 0). Default ``-1`` (channels-last).
        momentum: Moving-average momentum (Keras convention: weight of the old value).
        epsilon: Added to the variance before the square root.
        center: Whether to learn the offset ``beta``.
        scale: Whether to learn the scale ``gamma``.
        beta_initializer: Initializer for ``beta``.
        gamma_initializer: Initializer for ``gamma``.
        moving_mean_initializer: Initializer for the moving mean.
        moving_variance_initializer: Initializer for the moving variance.
        beta_regularizer: Optional regularizer for ``beta``.
        gamma_regularizer: Optional regularizer for ``gamma``.
        **kwargs: Base ``tf.keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(
        self,
        virtual_batch_size: int = 32,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int) \
                or virtual_batch_size < 1:
            raise ValueError(
                f"virtual_batch_size must be a positive int, got {virtual_batch_size!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        if not isinstance(axis, int):
            raise ValueError(f"axis must be a single int (the channel axis), got {axis!r}")
        self.virtual_batch_size = virtual_batch_size
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = tf.keras.initializers.get(beta_initializer)
        self.gamma_initializer = tf.keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = tf.keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = tf.keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = tf.keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = tf.keras.regularizers.get(gamma_regularizer)
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        rank = input_shape.rank
        if rank is None or rank < 2:
            raise ValueError(f"{self.name}: input must have a known rank >= 2, got {input_shape}")
        axis = self.axis % rank
        if axis == 0:
            raise ValueError(f"{self.name}: axis={self.axis} is the batch axis")
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(f"{self.name}: channel axis {self.axis} of {input_shape} is unknown")
        self._channel_axis = axis
        # In the chunked tensor [G, virtual_batch_size, ...] every axis moves right by one;
        # statistics reduce over everything but the chunk index and the channel axis.
        self._reduction_axes = [a for a in range(1, rank + 1) if a != axis + 1]
        self._param_shape = [1] * (rank + 1)
        self._param_shape[axis + 1] = channels
        self.input_spec = tf.keras.layers.InputSpec(ndim=rank, axes={axis: channels})

        # Parameters stay float32 under float16/bfloat16 policies: statistics need the range.
        param_dtype = tf.float32 if self.dtype in ("float16", "bfloat16") else self.dtype
        shape = (channels,)
        self.gamma = self.add_weight(
            name="gamma", shape=shape, dtype=param_dtype, initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer, trainable=True, experimental_autocast=False,
        ) if self.scale else None
        self.beta = self.add_weight(
            name="beta", shape=shape, dtype=param_dtype, initializer=self.beta_initializer,
            regularizer=self.beta_regularizer, trainable=True, experimental_autocast=False,
        ) if self.center else None
        # ON_READ + MEAN mirror Keras BatchNormalization, so tf.distribute replicas each keep
        # their own statistics and reads average them.
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, dtype=param_dtype,
            initializer=self.moving_mean_initializer, trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, dtype=param_dtype,
            initializer=self.moving_variance_initializer, trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False,
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        if training is None:
            training = tf.keras.backend.learning_phase()
        if not self.trainable:
            # Same contract as Keras BatchNormalization: a frozen layer (fine-tuning) always
            # runs in inference mode and never updates its statistics.
            training = False
        x = tf.cast(inputs, tf.float32)
        static_training = tf.get_static_value(training)  # None only for a symbolic flag
        if static_training is None:
            outputs = tf.cond(tf.cast(training, tf.bool),
                              lambda: self._train_step(x), lambda: self._inference(x))
        elif static_training:
            outputs = self._train_step(x)
        else:
            outputs = self._inference(x)
        return tf.cast(outputs, self.compute_dtype)

    def _gamma_beta(self) -> tuple[tf.Tensor, tf.Tensor]:
        channels = self._param_shape[self._channel_axis + 1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        return gamma, beta

    def _inference(self, x: tf.Tensor) -> tf.Tensor:
        # Broadcast shape of the un-chunked input: the chunked one minus its leading axis.
        shape = self._param_shape[1:]
        gamma, beta = self._gamma_beta()
        mean = tf.reshape(tf.cast(self.moving_mean, tf.float32), shape)
        variance = tf.reshape(tf.cast(self.moving_variance, tf.float32), shape)
        return tf.nn.batch_normalization(x, mean, variance, tf.reshape(beta, shape),
                                         tf.reshape(gamma, shape), self.epsilon)

    def _train_step(self, x: tf.Tensor) -> tf.Tensor:
        vbs = self.virtual_batch_size
        shape = tf.shape(x)
        batch = x.shape[0]
        checks = []
        message = (f"{self.name}: the batch size must be a multiple of virtual_batch_size="
                   f"{vbs} in training (ghost batches are consecutive chunks of {vbs} "
                   "examples); use a per-replica batch that is a multiple of it and drop "
                   "the last partial batch (drop_remainder=True), or change "
                   "ghost_batch_size")
        if batch is not None:
            if batch % vbs:
                raise ValueError(f"{message}; got batch size {batch}")
        else:
            checks.append(tf.debugging.assert_equal(
                tf.math.floormod(shape[0], vbs), 0, message=message))
        with tf.control_dependencies(checks):
            chunked = tf.reshape(x, tf.concat([[-1, vbs], shape[1:]], axis=0))
        mean, variance = tf.nn.moments(chunked, axes=self._reduction_axes, keepdims=True)
        gamma, beta = self._gamma_beta()
        outputs = tf.nn.batch_normalization(
            chunked, mean, variance, tf.reshape(beta, self._param_shape),
            tf.reshape(gamma, self._param_shape), self.epsilon)
        self._update_moving_stats(chunked, mean, variance)
        return tf.reshape(outputs, shape)

    def _update_moving_stats(self, chunked: tf.Tensor, mean: tf.Tensor,
                             variance: tf.Tensor) -> None:
        values_per_chunk = tf.cast(
            tf.reduce_prod(tf.gather(tf.shape(chunked), self._reduction_axes)), tf.float32)
        bessel = values_per_chunk / tf.maximum(values_per_chunk - 1.0, 1.0)
        # Average over the chunk axis (0) and drop the singleton reduction axes -> [C].
        chunk_mean = tf.reshape(tf.reduce_mean(mean, axis=0), [-1])
        chunk_variance = tf.reshape(tf.reduce_mean(variance, axis=0), [-1]) * bessel
        decay = 1.0 - self.momentum
        self.moving_mean.assign_sub((self.moving_mean - chunk_mean) * decay)
        self.moving_variance.assign_sub((self.moving_variance - chunk_variance) * decay)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "virtual_batch_size": self.virtual_batch_size,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": tf.keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": tf.keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer":
                tf.keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer":
                tf.keras.initializers.serialize(self.moving_variance_initializer),
            "beta_regularizer": tf.keras.regularizers.serialize(self.beta_regularizer)
            if self.beta_regularizer else None,
            "gamma_regularizer": tf.keras.regularizers.serialize(self.gamma_regularizer)
            if self.gamma_regularizer else None,
        })
        return config
