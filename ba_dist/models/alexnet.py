"""AlexNet for ImageNet: the one-tower variant ("One Weird Trick", Krizhevsky 2014).

Layout of torchvision's ``alexnet`` (conv 64-192-384-256-256, three max-pools, 6x6x256
features for a 224x224 input, dense 4096-4096-classes with dropout 0.5). With
``bn="none"`` it is exactly torchvision's network: 61,100,840 parameters for 1000 classes.

With BN (the default), every conv and hidden dense layer is followed by BN and loses its
now-redundant bias, as in the BA authors' ``AlexNetOWT_BN`` (eladhoffer/convNet.pytorch),
the model behind the paper's AlexNet row (M=8, Table 2): 61,110,184 trainable parameters.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["alexnet"]

# (filters, kernel, stride, max-pool after)
_FEATURES = ((64, 11, 4, True), (192, 5, 1, True), (384, 3, 1, False),
             (256, 3, 1, False), (256, 3, 1, True))
_HIDDEN = (4096, 4096)
_DEFAULT_DROPOUT = 0.5


def alexnet(num_classes: int, input_shape: Sequence[int], norm: Norm,
            dropout: float | None = None) -> tf.keras.Model:
    """Builds the one-tower AlexNet.

    Args:
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``; ``(224, 224, 3)`` gives 6x6 final feature maps and the
            published parameter count.
        norm: The normalization after every conv and hidden dense layer.
        dropout: Rate of the dropout before each hidden dense layer; ``None`` means 0.5
            (Krizhevsky et al.). With BA each copy gets its own dropout mask.

    Returns:
        A functional ``tf.keras.Model`` named ``alexnet`` that outputs logits.
    """
    dropout = _DEFAULT_DROPOUT if dropout is None else dropout
    bias = not norm.enabled
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, "alexnet"))
    x = inputs
    for index, (filters, kernel, strides, pool) in enumerate(_FEATURES, start=1):
        if strides > 1:
            # torchvision pads conv1 by 2 (not (11 - 1) / 2): 224 -> 55 -> 27 -> 13 -> 6.
            x = tf.keras.layers.ZeroPadding2D(2, name=f"conv{index}_pad")(x)
            x = tf.keras.layers.Conv2D(filters, kernel, strides=strides, use_bias=bias,
                                       kernel_initializer="he_normal", name=f"conv{index}")(x)
        else:
            x = conv2d(x, filters, kernel, use_bias=bias, name=f"conv{index}")
        x = norm(x, f"bn{index}")
        x = tf.keras.layers.ReLU(name=f"relu{index}")(x)
        if pool:
            x = tf.keras.layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(_HIDDEN, start=1):
        if dropout:
            x = tf.keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
        x = tf.keras.layers.Dense(units, use_bias=bias, name=f"fc{index}")(x)
        x = norm(x, f"fc{index}_bn")
        x = tf.keras.layers.ReLU(name=f"fc{index}_relu")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="alexnet")
