"""Small models for smoke tests and laptop runs: a CNN for 8x8 UCI digits and an MLP.

They exist so that the whole BA pipeline (sampling, M copies, ghost BN, Horovod averaging)
can be exercised end to end on two CPU cores in seconds, e.g. with scikit-learn's embedded
digits (1,797 8x8 grey images, 10 classes).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["MLP_HIDDEN_UNITS", "digits_cnn", "mlp"]

MLP_HIDDEN_UNITS = (256, 256)


def digits_cnn(num_classes: int, input_shape: Sequence[int], norm: Norm,
               dropout: float | None = None) -> tf.keras.Model:
    """A two-conv CNN for tiny images such as 8x8x1 UCI digits.

    conv3x3(32)-BN-ReLU, conv3x3(64)-BN-ReLU, 2x2 max-pool, [dropout], dense logits:
    29,162 trainable parameters for 8x8x1 inputs and 10 classes. It reaches > 95% test
    accuracy on UCI digits within a few epochs.

    Args:
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, e.g. ``(8, 8, 1)``.
        norm: The normalization after both convs.
        dropout: Rate of a dropout before the classifier; ``None`` or 0 means none.

    Returns:
        A functional ``tf.keras.Model`` named ``digits_cnn`` that outputs logits.
    """
    bias = not norm.enabled
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, "digits_cnn"))
    x = conv2d(inputs, 32, 3, use_bias=bias, name="conv1")
    x = norm(x, "bn1")
    x = tf.keras.layers.ReLU(name="relu1")(x)
    x = conv2d(x, 64, 3, use_bias=bias, name="conv2")
    x = norm(x, "bn2")
    x = tf.keras.layers.ReLU(name="relu2")(x)
    x = tf.keras.layers.MaxPooling2D(2, name="pool")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="digits_cnn")


def mlp(num_classes: int, input_shape: Sequence[int], norm: Norm,
        dropout: float | None = None,
        hidden_units: Sequence[int] = MLP_HIDDEN_UNITS) -> tf.keras.Model:
    """A multi-layer perceptron on flattened inputs.

    [dense-BN-ReLU-[dropout]] per hidden layer, then dense logits. Dense layers use He
    initialisation like the convs of the other models (ReLU follows them).

    Args:
        num_classes: Size of the logits.
        input_shape: Any input shape without the batch axis (flattened first).
        norm: The normalization after every hidden dense layer (ghost BN works on 2-D
            features too).
        dropout: Rate of a dropout after every hidden layer; ``None`` or 0 means none.
        hidden_units: Widths of the hidden layers.

    Returns:
        A functional ``tf.keras.Model`` named ``mlp`` that outputs logits.

    Raises:
        ValueError: an empty or non-positive ``input_shape``.
    """
    shape = tuple(input_shape)
    inputs = tf.keras.Input(shape=check_input_shape(shape, max(len(shape), 1), "mlp"))
    x = tf.keras.layers.Flatten(name="flatten")(inputs)
    for index, units in enumerate(hidden_units, start=1):
        x = tf.keras.layers.Dense(units, use_bias=not norm.enabled,
                                  kernel_initializer="he_normal", name=f"fc{index}")(x)
        x = norm(x, f"fc{index}_bn")
        x = tf.keras.layers.ReLU(name=f"fc{index}_relu")(x)
        if dropout:
            x = tf.keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
    outputs = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="mlp")
