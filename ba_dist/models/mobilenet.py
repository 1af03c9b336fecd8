"""MobileNet v1 for ImageNet (Howard et al., 2017), width multiplier 1.0.

A strided 3x3 conv with 32 filters, then 13 depthwise-separable blocks (3x3 depthwise
conv - BN - ReLU - 1x1 pointwise conv - BN - ReLU; Table 1 of the paper), global average
pooling and a linear classifier. ReLU (not ReLU6) as in the paper.

Parameters: 4,231,976 trainable for 1000 classes, the paper's 4.2M (Table 8) and the same
as ``tf.keras.applications.MobileNet`` at alpha=1.0. The BA paper uses it on ImageNet with
M=4 (Table 2).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["MOBILENET_V1_BLOCKS", "mobilenet_v1"]

# (pointwise filters, depthwise stride) of the 13 separable blocks, paper Table 1.
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _separable_block(x: tf.Tensor, filters: int, strides: int, norm: Norm,
                     name: str) -> tf.Tensor:
    """Depthwise 3x3 (stride) - BN - ReLU - pointwise 1x1 - BN - ReLU."""
    padding = "same"
    if strides > 1:
        # Symmetric padding, as in the reference (Keras "same" would pad bottom/right only).
        x = tf.keras.layers.ZeroPadding2D(1, name=f"{name}_dw_pad")(x)
        padding = "valid"
    x = tf.keras.layers.DepthwiseConv2D(
        3, strides=strides, padding=padding, use_bias=not norm.enabled,
        depthwise_initializer="he_normal", name=f"{name}_dw")(x)
    x = norm(x, f"{name}_dw_bn")
    x = tf.keras.layers.ReLU(name=f"{name}_dw_relu")(x)
    x = conv2d(x, filters, 1, use_bias=not norm.enabled, name=f"{name}_pw")
    x = norm(x, f"{name}_pw_bn")
    return tf.keras.layers.ReLU(name=f"{name}_pw_relu")(x)


def mobilenet_v1(num_classes: int, input_shape: Sequence[int], norm: Norm,
                 dropout: float | None = None, alpha: float = 1.0) -> tf.keras.Model:
    """Builds MobileNet v1.

    Args:
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, normally ``(224, 224, 3)``.
        norm: The normalization after every conv.
        dropout: Rate of a dropout before the classifier; ``None`` or 0 means none (the
            paper uses little regularization for small models).
        alpha: Width multiplier; channel counts are ``int(c * alpha)``.

    Returns:
        A functional ``tf.keras.Model`` named ``mobilenet_v1`` that outputs logits.

    Raises:
        ValueError: ``alpha <= 0`` or a bad ``input_shape``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, "mobilenet_v1"))
    x = conv2d(inputs, int(32 * alpha), 3, 2, use_bias=not norm.enabled, name="conv1")
    x = norm(x, "bn1")
    x = tf.keras.layers.ReLU(name="relu1")(x)
    for index, (filters, strides) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        x = _separable_block(x, int(filters * alpha), strides, norm, name=f"block{index}")
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="mobilenet_v1")
