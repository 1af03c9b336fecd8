"""Building blocks shared by the model zoo: the normalization switch and PyTorch-style convs.

Every family builds Keras functional models from these helpers so that ``bn="batch" |
"ghost" | "none"`` means the same thing everywhere, and so that the optimizer can find the
normalization layers (weight decay is not applied to them, paper appendix C.2).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ba_dist.models.ghost_bn import GhostBatchNormalization

__all__ = [
    "NORM_KINDS",
    "NORM_LAYER_TYPES",
    "Norm",
    "check_input_shape",
    "conv2d",
    "is_norm_variable",
    "norm_layers",
    "norm_variables",
]

NORM_KINDS = ("batch", "ghost", "none")

# Layers whose weights are "normalization parameters" for weight-decay purposes.
NORM_LAYER_TYPES = (
    tf.keras.layers.BatchNormalization,
    GhostBatchNormalization,
    tf.keras.layers.LayerNormalization,
    tf.keras.layers.GroupNormalization,
)
# All of the above name their weights from this set (and no other zoo layer does).
_NORM_WEIGHT_NAMES = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})

# The reference implementations (Torch/PyTorch) use eps=1e-5; Keras's default is 1e-3.
_EPSILON = 1e-5


class Norm:
    """The normalization chosen for a model, applied to functional-API tensors.

    ``norm(x, "name")`` returns ``x`` normalised by a new layer called ``name`` (or ``x``
    itself when the kind is ``"none"``). Builders ask ``norm.enabled`` to decide whether the
    preceding conv/dense layer needs a bias (a bias right before BN is redundant).

    Args:
        kind: ``"batch"`` (tf.keras BatchNormalization over the whole per-replica batch),
            ``"ghost"`` (GhostBatchNormalization over chunks of ``ghost_batch_size``) or
            ``"none"``.
        ghost_batch_size: Examples per ghost batch when ``kind == "ghost"``.
        momentum: Moving-average momentum in the Keras convention (0.9 == PyTorch's 0.1).
        epsilon: Variance epsilon.

    Raises:
        ValueError: unknown ``kind``, non-positive ``ghost_batch_size`` or momentum outside
            [0, 1).
    """

    def __init__(self, kind: str = "batch", ghost_batch_size: int = 32,
                 momentum: float = 0.9, epsilon: float = _EPSILON):
        if kind not in NORM_KINDS:
            raise ValueError(f"bn must be one of {NORM_KINDS}, got {kind!r}")
        if kind == "ghost" and (not isinstance(ghost_batch_size, int) or ghost_batch_size < 1):
            raise ValueError(f"ghost_batch_size must be a positive int, got {ghost_batch_size!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {momentum!r}")
        self.kind = kind
        self.ghost_batch_size = ghost_batch_size
        self.momentum = momentum
        self.epsilon = epsilon

    @property
    def enabled(self) -> bool:
        """Whether ``__call__`` adds a layer (False for ``kind == "none"``)."""
        return self.kind != "none"

    def __call__(self, x: tf.Tensor, name: str, zero_gamma: bool = False) -> tf.Tensor:
        """Normalises ``x`` with a new layer named ``name``.

        Args:
            x: A channels-last functional-API tensor.
            name: Layer name, unique within the model.
            zero_gamma: Initialise the scale to zero, so that a residual branch starts as
                the identity (Goyal et al., 2017, section 5.1).

        Returns:
            The normalised tensor, or ``x`` unchanged when normalization is disabled.
        """
        if not self.enabled:
            return x
        gamma_initializer = "zeros" if zero_gamma else "ones"
        if self.kind == "ghost":
            layer = GhostBatchNormalization(
                virtual_batch_size=self.ghost_batch_size, momentum=self.momentum,
                epsilon=self.epsilon, gamma_initializer=gamma_initializer, name=name)
        else:
            layer = tf.keras.layers.BatchNormalization(
                momentum=self.momentum, epsilon=self.epsilon,
                gamma_initializer=gamma_initializer, name=name)
        return layer(x)


def conv2d(x: tf.Tensor, filters: int, kernel_size: int, strides: int = 1, *,
           use_bias: bool, name: str) -> tf.Tensor:
    """A He-normal initialised conv with PyTorch's symmetric ``(k - 1) // 2`` padding.

    Keras ``padding="same"`` pads strided convs asymmetrically (more at the bottom/right);
    explicit symmetric zero-padding reproduces the reference networks' geometry exactly,
    which keeps feature maps aligned with the papers and ported weights usable.

    Args:
        x: Channels-last input tensor.
        filters: Output channels.
        kernel_size: Odd square kernel size.
        strides: Square stride.
        use_bias: Add a bias (pass ``not norm.enabled`` when a Norm follows).
        name: Layer name; the padding layer, if any, is ``name + "_pad"``.

    Returns:
        The convolved tensor.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = tf.keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return tf.keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        kernel_initializer="he_normal", name=name)(x)


def norm_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    """The normalization layers of ``model``, nested models included.

    Args:
        model: Any Keras model.

    Returns:
        Layers that are instances of one of ``NORM_LAYER_TYPES``, in tracking order.
    """
    return [m for m in model.submodules if isinstance(m, NORM_LAYER_TYPES)]


def norm_variables(model: tf.keras.Model) -> list[tf.Variable]:
    """All weights (trainable or not) of ``norm_layers(model)``."""
    return [w for layer in norm_layers(model) for w in layer.weights]


def is_norm_variable(variable: tf.Variable) -> bool:
    """Whether ``variable`` belongs to a normalization layer, judged by its name.

    BatchNormalization, GhostBatchNormalization, LayerNormalization and GroupNormalization
    name their weights ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance``; no
    other layer of the zoo does (tests check this against ``norm_layers`` for every model).
    Use it to exclude normalization parameters from weight decay when only the variable
    list is at hand (e.g. inside an optimizer).

    Args:
        variable: A ``tf.Variable`` (or Keras AutoCastVariable) from a Keras layer.

    Returns:
        True for normalization weights.
    """
    leaf = variable.name.rsplit("/", 1)[-1].split(":", 1)[0]
    return leaf in _NORM_WEIGHT_NAMES


def check_input_shape(input_shape: Sequence[int], rank: int, model: str) -> tuple[int, ...]:
    """Validates ``input_shape`` (without batch axis) and returns it as a tuple.

    Raises:
        ValueError: wrong number of axes or a non-positive size.
    """
    shape = tuple(input_shape)
    if len(shape) != rank or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"{model} needs input_shape with {rank} positive ints "
                         f"(e.g. (32, 32, 3) for images, channels last), got {input_shape!r}")
    return shape
