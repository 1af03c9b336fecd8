"""ResNet-50 for ImageNet (He et al., 2016), in the "v1.5" form of torchvision / Goyal et al.

v1.5 puts the stride of a downsampling bottleneck on its 3x3 conv instead of the first 1x1
conv (about +0.5% top-1, same parameter count as v1). The BA paper trains ResNet-50 with
the regime of Goyal et al. (2017) (appendix C.2), so, as there, the last BN of every
residual branch starts with gamma = 0 and each block starts as the identity.

Convs have no bias (BN follows), strided convs use symmetric padding, so the layout and the
parameter count match torchvision's ``resnet50``: 25,557,032 trainable parameters for 1000
classes ("25.6M").
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["RESNET50_BLOCKS", "resnet_imagenet"]

RESNET50_BLOCKS = (3, 4, 6, 3)
_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4


def _bottleneck(x: tf.Tensor, width: int, strides: int, norm: Norm, name: str) -> tf.Tensor:
    """1x1 (width) - 3x3 (width, stride) - 1x1 (4 * width), each followed by BN."""
    bias = not norm.enabled
    out_channels = width * _EXPANSION
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        # Projection shortcut (option B): only where the shape changes.
        shortcut = conv2d(x, out_channels, 1, strides, use_bias=bias, name=f"{name}_proj")
        shortcut = norm(shortcut, f"{name}_proj_bn")
    y = conv2d(x, width, 1, use_bias=bias, name=f"{name}_conv1")
    y = norm(y, f"{name}_bn1")
    y = tf.keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv2d(y, width, 3, strides, use_bias=bias, name=f"{name}_conv2")
    y = norm(y, f"{name}_bn2")
    y = tf.keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = conv2d(y, out_channels, 1, use_bias=bias, name=f"{name}_conv3")
    y = norm(y, f"{name}_bn3", zero_gamma=True)
    y = tf.keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return tf.keras.layers.ReLU(name=f"{name}_out")(y)


def resnet_imagenet(num_classes: int, input_shape: Sequence[int], norm: Norm,
                    dropout: float | None = None,
                    blocks_per_stage: Sequence[int] = RESNET50_BLOCKS,
                    name: str = "resnet50") -> tf.keras.Model:
    """Builds a bottleneck ResNet for ImageNet-sized inputs (ResNet-50 by default).

    Args:
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, normally ``(224, 224, 3)``.
        norm: The normalization after every conv (the paper uses ghost batches of 32).
        dropout: Rate of a dropout layer before the classifier; ``None`` or 0 means none
            (the reference network has none).
        blocks_per_stage: Bottleneck blocks in each of the four stages; (3, 4, 6, 3) is
            ResNet-50, (3, 4, 23, 3) ResNet-101.
        name: Model name.

    Returns:
        A functional ``tf.keras.Model`` that outputs logits.
    """
    bias = not norm.enabled
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, name))
    x = conv2d(inputs, 64, 7, 2, use_bias=bias, name="conv1")
    x = norm(x, "bn1")
    x = tf.keras.layers.ReLU(name="relu1")(x)
    x = tf.keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = tf.keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, _STAGE_WIDTHS)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _bottleneck(x, width, strides, norm, name=f"stage{stage + 1}_block{block + 1}")
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name)
