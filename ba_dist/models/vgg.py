"""VGG-16 with batch normalization, CIFAR variant.

Thirteen 3x3 convs (configuration "D" of Simonyan & Zisserman, 2015), each followed by BN
and ReLU, with five 2x2 max-pools that take a 32x32 input down to 1x1x512. The classifier
is the small one of Zagoruyko's cifar.torch, used by Li et al. (2017, "Pruning Filters for
Efficient ConvNets", Table 1: VGG-16 on CIFAR-10, 1.5e7 parameters):
dropout - dense 512 - BN - ReLU - dropout - dense ``num_classes``.

Parameters: 14,987,210 trainable for 10 classes (convs without bias, since BN follows),
i.e. the published 15.0M. The BA paper's VGG16 result is on CIFAR-10 with M=32 (Table 2).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["VGG16_CONFIG", "vgg_cifar"]

# Conv widths; "M" is a 2x2 max-pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")
_CLASSIFIER_WIDTH = 512
# cifar.torch and Li et al. use 0.5 in the classifier.
_DEFAULT_DROPOUT = 0.5


def vgg_cifar(num_classes: int, input_shape: Sequence[int], norm: Norm,
              dropout: float | None = None, config: Sequence[int | str] = VGG16_CONFIG,
              name: str = "vgg16") -> tf.keras.Model:
    """Builds a VGG with BN for 32x32 inputs.

    Args:
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``; ``(32, 32, 3)`` gives the published parameter count
            (larger inputs enlarge the first dense layer).
        norm: The normalization after every conv and after the hidden dense layer.
        dropout: Rate of the two classifier dropouts; ``None`` means 0.5 (reference).
        config: Conv widths and ``"M"`` for max-pools.
        name: Model name.

    Returns:
        A functional ``tf.keras.Model`` that outputs logits.
    """
    dropout = _DEFAULT_DROPOUT if dropout is None else dropout
    bias = not norm.enabled
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, name))
    x = inputs
    conv_index = pool_index = 0
    for item in config:
        if item == "M":
            pool_index += 1
            x = tf.keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        x = conv2d(x, int(item), 3, use_bias=bias, name=f"conv{conv_index}")
        x = norm(x, f"bn{conv_index}")
        x = tf.keras.layers.ReLU(name=f"relu{conv_index}")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout1")(x)
    x = tf.keras.layers.Dense(_CLASSIFIER_WIDTH, use_bias=bias, name="fc1")(x)
    x = norm(x, "fc1_bn")
    x = tf.keras.layers.ReLU(name="fc1_relu")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout2")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=name)
