"""ResNet-20/32/44/56/110 for CIFAR (He et al., 2016, section 4.2).

Depth ``6n + 2``: a 3x3 conv with 16 filters, three stages of ``n`` basic blocks with 16, 32
and 64 filters (the first block of stages 2 and 3 halves the resolution), global average
pooling and a linear classifier. Shortcuts are option A: identity, subsampled by the stride
and zero-padded to the new channel count, so shortcuts add no parameters. This is the
network the BA paper uses for most of its CIFAR results (ResNet44, Table 2).

Parameters (trainable, 10 classes): 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962,
i.e. the 0.27M / 0.46M / 0.66M / 0.85M / 1.7M of He et al., Table 6.
"""
from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["CIFAR_RESNET_DEPTHS", "ZeroPadShortcut", "resnet_cifar"]

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
_STAGE_FILTERS = (16, 32, 64)


@tf.keras.utils.register_keras_serializable(package="ba_dist")
class ZeroPadShortcut(tf.keras.layers.Layer):
    """Option-A shortcut: ``x[:, ::s, ::s, :]`` zero-padded to ``filters`` channels.

    A layer rather than a ``Lambda`` so that models save and load without unsafe
    deserialization. The new channels are split evenly before and after the old ones, as
    in the widely used PyTorch reproduction (akamaster/pytorch_resnet_cifar10) whose
    parameter counts are quoted above.

    Args:
        filters: Output channels (>= input channels).
        strides: Spatial subsampling factor.
        **kwargs: Base layer arguments.
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = int(input_shape[-1])
        if channels > self.filters:
            raise ValueError(f"{self.name}: cannot pad {channels} channels down to "
                             f"{self.filters}")
        extra = self.filters - channels
        self._pad = [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = inputs[:, ::self.strides, ::self.strides, :]
        return tf.pad(x, self._pad)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        shape = tf.TensorShape(input_shape).as_list()
        for axis in (1, 2):
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // self.strides)
        return tf.TensorShape(shape[:3] + [self.filters])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides})
        return config


def _basic_block(x: tf.Tensor, filters: int, strides: int, norm: Norm, name: str) -> tf.Tensor:
    """conv3x3-BN-ReLU-conv3x3-BN, plus the option-A shortcut, then ReLU (post-activation)."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = ZeroPadShortcut(filters, strides, name=f"{name}_shortcut")(x)
    y = conv2d(x, filters, 3, strides, use_bias=not norm.enabled, name=f"{name}_conv1")
    y = norm(y, f"{name}_bn1")
    y = tf.keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv2d(y, filters, 3, use_bias=not norm.enabled, name=f"{name}_conv2")
    y = norm(y, f"{name}_bn2")
    y = tf.keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return tf.keras.layers.ReLU(name=f"{name}_out")(y)


def resnet_cifar(depth: int, num_classes: int, input_shape: Sequence[int], norm: Norm,
                 dropout: float | None = None) -> tf.keras.Model:
    """Builds a CIFAR ResNet of the given depth.

    Args:
        depth: One of ``CIFAR_RESNET_DEPTHS`` (any ``6n + 2`` works).
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, e.g. ``(32, 32, 3)``.
        norm: The normalization to use after every conv.
        dropout: Rate of a dropout layer before the classifier; ``None`` or 0 means none
            (He et al. use no dropout).

    Returns:
        A functional ``tf.keras.Model`` named ``resnet{depth}`` that outputs logits.

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 2`` or a bad ``input_shape``.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (e.g. {CIFAR_RESNET_DEPTHS}), "
                         f"got {depth}")
    blocks_per_stage = (depth - 2) // 6
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, f"resnet{depth}"))
    x = conv2d(inputs, _STAGE_FILTERS[0], 3, use_bias=not norm.enabled, name="conv1")
    x = norm(x, "bn1")
    x = tf.keras.layers.ReLU(name="relu1")(x)
    for stage, filters in enumerate(_STAGE_FILTERS):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, norm, name=f"stage{stage + 1}_block{block + 1}")
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=f"resnet{depth}")
