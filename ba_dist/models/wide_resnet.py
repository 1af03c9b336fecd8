"""Wide-ResNet-28-10 for CIFAR (Zagoruyko & Komodakis, 2016).

Depth ``6n + 4`` and widening factor ``k``: a 3x3 conv with 16 filters, three stages of
``n`` pre-activation basic blocks with ``16k``, ``32k`` and ``64k`` filters (stages 2 and 3
start with stride 2), BN-ReLU, global average pooling and a linear classifier. A block is
BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus a shortcut that is the identity, or a 1x1
conv of the pre-activated input where the shape changes (as in the authors' code).

Parameters: 36,479,194 trainable for 10 classes, the 36.5M of the WRN paper (Table 1).
The BA paper uses WRN-28-10 on CIFAR-10 (M=6) and CIFAR-100 (M=10), Table 2.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["wide_resnet"]


def _wide_block(x: tf.Tensor, filters: int, strides: int, norm: Norm, dropout: float,
                name: str) -> tf.Tensor:
    """Pre-activation basic block with optional dropout between its two convs."""
    bias = not norm.enabled
    o = norm(x, f"{name}_bn1")
    o = tf.keras.layers.ReLU(name=f"{name}_relu1")(o)
    if strides != 1 or x.shape[-1] != filters:
        # The authors project the *pre-activated* input; the identity path stays raw.
        shortcut = conv2d(o, filters, 1, strides, use_bias=bias, name=f"{name}_proj")
    else:
        shortcut = x
    y = conv2d(o, filters, 3, strides, use_bias=bias, name=f"{name}_conv1")
    y = norm(y, f"{name}_bn2")
    y = tf.keras.layers.ReLU(name=f"{name}_relu2")(y)
    if dropout:
        # Inside the block, as in the WRN paper ("WRN-28-10-dropout" uses 0.3); with BA each
        # copy of an image gets its own dropout mask.
        y = tf.keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = conv2d(y, filters, 3, use_bias=bias, name=f"{name}_conv2")
    return tf.keras.layers.Add(name=f"{name}_add")([shortcut, y])


def wide_resnet(depth: int, width: int, num_classes: int, input_shape: Sequence[int],
                norm: Norm, dropout: float | None = None) -> tf.keras.Model:
    """Builds WRN-``depth``-``width``.

    Args:
        depth: Total depth ``6n + 4`` (28 for WRN-28-10).
        width: Widening factor ``k`` (10 for WRN-28-10).
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, e.g. ``(32, 32, 3)``.
        norm: The normalization before every conv.
        dropout: Dropout rate between the two convs of each block; ``None`` or 0 means none
            (the BA paper's WRN numbers come from the authors' regime without it).

    Returns:
        A functional ``tf.keras.Model`` named ``wrn{depth}_{width}`` that outputs logits.

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 4`` or a bad ``input_shape``.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Wide-ResNet depth must be 6n + 4 (e.g. 28), got {depth}")
    name = f"wrn{depth}_{width}"
    blocks_per_stage = (depth - 4) // 6
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, name))
    x = conv2d(inputs, 16, 3, use_bias=not norm.enabled, name="conv1")
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _wide_block(x, filters, strides, norm, dropout or 0.0,
                            name=f"stage{stage + 1}_block{block + 1}")
    x = norm(x, "bn_final")
    x = tf.keras.layers.ReLU(name="relu_final")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name)
