"""DenseNet-BC-100 (growth rate 12) for CIFAR (Huang et al., 2017).

A 3x3 conv with ``2k`` filters, then three dense blocks of ``(depth - 4) / 6`` bottleneck
layers (BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), output concatenated to the input), with
transitions (BN-ReLU-conv1x1 to ``compression`` x channels, 2x2 average pool) between the
blocks, then BN-ReLU, global average pooling and a linear classifier.

Parameters: 769,162 trainable for 10 classes and 800,032 for 100 classes, the "0.8M" of
Huang et al. (Table 2, DenseNet-BC L=100 k=12). The BA paper uses it on CIFAR-100 with
M=4 (Table 2).
"""
from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["densenet_bc"]


def _bn_relu_conv(x: tf.Tensor, filters: int, kernel_size: int, norm: Norm,
                  dropout: float, name: str) -> tf.Tensor:
    """The pre-activation unit all DenseNet convs use."""
    x = norm(x, f"{name}_bn")
    x = tf.keras.layers.ReLU(name=f"{name}_relu")(x)
    x = conv2d(x, filters, kernel_size, use_bias=not norm.enabled, name=f"{name}_conv")
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def densenet_bc(depth: int, growth_rate: int, num_classes: int, input_shape: Sequence[int],
                norm: Norm, dropout: float | None = None,
                compression: float = 0.5) -> tf.keras.Model:
    """Builds DenseNet-BC-``depth`` with growth rate ``growth_rate``.

    Args:
        depth: Total depth ``6n + 4`` (100 for DenseNet-BC-100).
        growth_rate: ``k``, channels each bottleneck layer adds (12).
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, e.g. ``(32, 32, 3)``.
        norm: The normalization before every conv.
        dropout: Rate of a dropout after every conv; ``None`` or 0 means none (Huang et al.
            use 0.2 only when training without data augmentation).
        compression: Channel reduction factor ``theta`` of the transitions.

    Returns:
        A functional ``tf.keras.Model`` named ``densenet{depth}_{growth_rate}``.

    Raises:
        ValueError: ``depth`` is not ``6n + 4``, ``compression`` not in (0, 1], or a bad
            ``input_shape``.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n + 4 (e.g. 100), got {depth}")
    if not 0.0 < compression <= 1.0:
        raise ValueError(f"compression must be in (0, 1], got {compression}")
    name = f"densenet{depth}_{growth_rate}"
    dropout = dropout or 0.0
    # Each bottleneck layer holds two convs, hence (depth - 4) / 6 layers per block.
    layers_per_block = (depth - 4) // 6
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, name))
    x = conv2d(inputs, 2 * growth_rate, 3, use_bias=not norm.enabled, name="conv1")
    for block in range(3):
        for layer in range(layers_per_block):
            prefix = f"block{block + 1}_layer{layer + 1}"
            y = _bn_relu_conv(x, 4 * growth_rate, 1, norm, dropout, f"{prefix}_1x1")
            y = _bn_relu_conv(y, growth_rate, 3, norm, dropout, f"{prefix}_3x3")
            x = tf.keras.layers.Concatenate(name=f"{prefix}_concat")([x, y])
        if block < 2:
            channels = int(math.floor(x.shape[-1] * compression))
            x = _bn_relu_conv(x, channels, 1, norm, dropout, f"transition{block + 1}")
            x = tf.keras.layers.AveragePooling2D(2, name=f"transition{block + 1}_pool")(x)
    x = norm(x, "bn_final")
    x = tf.keras.layers.ReLU(name="relu_final")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name)
