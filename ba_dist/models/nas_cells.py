"""Cell networks found by architecture search, for CIFAR: DARTS-V2 and AmoebaNet-A.

Both are built in the evaluation network of DARTS (Liu et al., 2019, section 3.3 and
appendix A.2), which the BA authors also used for AmoebaNet:

- stem: 3x3 conv with ``3 C`` filters + BN;
- ``layers`` cells; cells at 1/3 and 2/3 of the depth are *reduction* cells (stride 2,
  twice the channels), the others *normal* cells;
- each cell takes the outputs of the two previous cells, maps each to ``C`` channels
  (ReLU-conv1x1-BN, or a factorized reduction when the previous cell halved the
  resolution), then builds nodes: a node is the sum of two operations applied to earlier
  states; the cell output concatenates the nodes listed in ``concat``;
- in reduction cells the operations that read the cell's two inputs have stride 2;
- an auxiliary head (ReLU, 5x5/3 average pool, conv1x1-128-BN-ReLU, conv2x2-768-BN-ReLU,
  linear) on the output of the cell at 2/3 of the depth; weight 0.4 in DARTS;
- global average pooling and a linear classifier.

Every operation that is not an identity is followed by drop-path (``DropPath``) in
training. Operations (``C`` channels in and out, all convs without bias before BN):

=============  ===================================================================
sep_conv_kxk   (ReLU, depthwise kxk, pointwise 1x1, BN) twice; stride only in the first
dil_conv_3x3   ReLU, depthwise 3x3 with dilation 2, pointwise 1x1, BN
conv_7x1_1x7   ReLU, conv 1x7, conv 7x1, BN
max/avg_pool   3x3 pooling, padding 1 (average over the valid pixels only)
skip_connect   identity, or a factorized reduction (two offset 1x1/2 convs) at stride 2
=============  ===================================================================

Geometry follows the PyTorch reference networks (symmetric padding at stride 2).

Parameters (trainable, 10 classes, the auxiliary head not counted, as the papers do):
``darts`` (DARTS-V2, C = 36, 20 cells) 3,349,342, the 3.3M of Liu et al. Table 1
(+476,426 for the auxiliary head); ``amoebanet`` (AmoebaNet-A cells, C = 128, 20 cells,
the "AmoebaNet (width=128)" of the BA paper's Table 5) 37,490,058 (+599,306 auxiliary).
At C = 36 the same cells give 3,145,078, the 3.2M that Liu et al. (Table 1) and Real et al.
give for AmoebaNet-A (N = 6, F = 36), so ``width`` is read as ``C``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import tensorflow as tf

from ba_dist.models.drop_path import DropPath
from ba_dist.models.layers import Norm, check_input_shape, conv2d

__all__ = ["Genotype", "DARTS_V2", "AMOEBANET_A", "cell_network", "darts", "amoebanet"]


class Genotype(NamedTuple):
    """A cell pair: ``(operation, input state)`` pairs, two per node, and the output nodes.

    States are numbered 0 and 1 for the cell's inputs (outputs of the cells two back and
    one back), then 2, 3, ... for the nodes in order.
    """

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple


# Liu et al. 2019, Figures 4 and 5 (the second-order search, "DARTS (second order)").
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)

# Real et al. 2019, Figure 4 (AmoebaNet-A), written as DARTS writes it (Liu et al., A.2).
AMOEBANET_A = Genotype(
    normal=(("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1)),
    normal_concat=(4, 5, 6),
    reduce=(("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)),
    reduce_concat=(3, 4, 6),
)


def _depthwise(x: tf.Tensor, kernel_size: int, strides: int, dilation: int, use_bias: bool,
               name: str) -> tf.Tensor:
    """A He-normal depthwise conv with the reference's symmetric padding (see ``conv2d``)."""
    padding = "same"
    if strides > 1:
        if dilation > 1:  # Keras cannot stride a dilated conv; no genotype here needs it
            raise ValueError(f"{name}: a dilated convolution cannot have stride {strides}")
        x = tf.keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return tf.keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, dilation_rate=dilation, use_bias=use_bias,
        depthwise_initializer="he_normal", name=name)(x)


def _relu(x: tf.Tensor, name: str) -> tf.Tensor:
    return tf.keras.layers.ReLU(name=name)(x)


def _relu_conv_bn(x: tf.Tensor, channels: int, norm: Norm, name: str) -> tf.Tensor:
    x = conv2d(_relu(x, f"{name}_relu"), channels, 1, use_bias=not norm.enabled, name=f"{name}_conv")
    return norm(x, f"{name}_bn")


def _factorized_reduce(x: tf.Tensor, channels: int, norm: Norm, name: str) -> tf.Tensor:
    """Halves the resolution with two 1x1/2 convs, the second offset by one pixel, concatenated."""
    x = _relu(x, f"{name}_relu")
    a = conv2d(x, channels // 2, 1, 2, use_bias=not norm.enabled, name=f"{name}_conv1")
    shifted = tf.keras.layers.Cropping2D(((1, 0), (1, 0)), name=f"{name}_shift")(x)
    b = conv2d(shifted, channels - channels // 2, 1, 2, use_bias=not norm.enabled, name=f"{name}_conv2")
    return norm(tf.keras.layers.Concatenate(name=f"{name}_concat")([a, b]), f"{name}_bn")


def _pool(x: tf.Tensor, kind: str, strides: int, name: str) -> tf.Tensor:
    # A stride-1 "same" pool (Keras ignores the padded pixels, as PyTorch's max pool and
    # avg pool with count_include_pad=False do), then every second pixel: exactly the
    # reference's 3x3/2 pool with padding 1, whose windows are centred on even pixels.
    layer = tf.keras.layers.MaxPooling2D if kind == "max" else tf.keras.layers.AveragePooling2D
    x = layer(3, strides=1, padding="same", name=name)(x)
    if strides > 1:
        x = tf.keras.layers.MaxPooling2D(1, strides=strides, name=f"{name}_subsample")(x)
    return x


def _operation(op: str, x: tf.Tensor, channels: int, strides: int, norm: Norm, name: str) -> tf.Tensor:
    """One cell operation (module docstring table)."""
    bias = not norm.enabled
    if op.startswith("sep_conv_"):
        k = int(op[-1])
        for i, s in enumerate((strides, 1)):
            x = _depthwise(_relu(x, f"{name}_relu{i + 1}"), k, s, 1, bias, f"{name}_dw{i + 1}")
            x = conv2d(x, channels, 1, use_bias=bias, name=f"{name}_pw{i + 1}")
            x = norm(x, f"{name}_bn{i + 1}")
        return x
    if op == "dil_conv_3x3":
        x = _depthwise(_relu(x, f"{name}_relu"), 3, strides, 2, bias, f"{name}_dw")
        return norm(conv2d(x, channels, 1, use_bias=bias, name=f"{name}_pw"), f"{name}_bn")
    if op == "conv_7x1_1x7":
        x = _relu(x, f"{name}_relu")
        for kernel, stride, pad in (((1, 7), (1, strides), (0, 3)), ((7, 1), (strides, 1), (3, 0))):
            tag = f"{kernel[0]}x{kernel[1]}"
            x = tf.keras.layers.ZeroPadding2D(pad, name=f"{name}_pad{tag}")(x)
            x = tf.keras.layers.Conv2D(channels, kernel, strides=stride, padding="valid", use_bias=bias,
                                       kernel_initializer="he_normal", name=f"{name}_conv{tag}")(x)
        return norm(x, f"{name}_bn")
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        return _pool(x, op[:3], strides, name)
    if op == "skip_connect":
        return x if strides == 1 else _factorized_reduce(x, channels, norm, name)
    raise ValueError(f"unknown cell operation {op!r}")


def _cell(s0: tf.Tensor, s1: tf.Tensor, genotype: Genotype, channels: int, reduction: bool,
          reduction_prev: bool, norm: Norm, drop_path: float, name: str) -> tf.Tensor:
    """One cell: preprocess both inputs to ``channels``, build the nodes, concatenate."""
    if reduction_prev:  # s0 has twice the resolution of s1
        s0 = _factorized_reduce(s0, channels, norm, f"{name}_pre0")
    else:
        s0 = _relu_conv_bn(s0, channels, norm, f"{name}_pre0")
    s1 = _relu_conv_bn(s1, channels, norm, f"{name}_pre1")
    ops, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal,
                                                                               genotype.normal_concat)
    states = [s0, s1]
    for node in range(len(ops) // 2):
        branches = []
        for j in range(2):
            op, index = ops[2 * node + j]
            strides = 2 if reduction and index < 2 else 1
            prefix = f"{name}_node{node}_{j}"
            h = _operation(op, states[index], channels, strides, norm, f"{prefix}_{op}")
            if drop_path and h is not states[index]:  # every branch but an identity
                h = DropPath(drop_path, name=f"{prefix}_drop_path")(h)
            branches.append(h)
        states.append(tf.keras.layers.Add(name=f"{name}_node{node}")(branches))
    return tf.keras.layers.Concatenate(name=f"{name}_out")([states[i] for i in concat])


def _auxiliary_head(x: tf.Tensor, num_classes: int, norm: Norm) -> tf.Tensor:
    """DARTS's CIFAR auxiliary classifier for an 8x8 input."""
    bias = not norm.enabled
    x = _relu(x, "aux_relu0")
    x = tf.keras.layers.AveragePooling2D(5, strides=3, name="aux_pool")(x)  # 8x8 -> 2x2
    x = _relu(norm(conv2d(x, 128, 1, use_bias=bias, name="aux_conv1"), "aux_bn1"), "aux_relu1")
    x = tf.keras.layers.Conv2D(768, 2, padding="valid", use_bias=bias, kernel_initializer="he_normal",
                               name="aux_conv2")(x)
    x = _relu(norm(x, "aux_bn2"), "aux_relu2")
    x = tf.keras.layers.Flatten(name="aux_flatten")(x)
    return tf.keras.layers.Dense(num_classes, name="aux_logits")(x)


def cell_network(genotype: Genotype, name: str, num_classes: int, input_shape: Sequence[int],
                 norm: Norm, dropout: float | None = None, *, init_channels: int = 36,
                 layers: int = 20, drop_path: float = 0.2,
                 auxiliary_head: bool = False) -> tf.keras.Model:
    """Builds DARTS's evaluation network for CIFAR with the cells of ``genotype``.

    Args:
        genotype: The cells (``DARTS_V2``, ``AMOEBANET_A`` or another ``Genotype``).
        name: Model name.
        num_classes: Size of the logits.
        input_shape: ``(H, W, C)``, e.g. ``(32, 32, 3)``.
        norm: The normalization of every conv.
        dropout: Rate of a dropout before the classifier; ``None`` or 0: none (DARTS).
        init_channels: ``C`` of the first cells (36 in DARTS).
        layers: Number of cells (20 in DARTS), at least 3.
        drop_path: Drop-path probability every DropPath layer starts with (DARTS ramps it
            from 0 to 0.2: ``ba_dist.models.drop_path.DropPathSchedule``); 0 adds none.
        auxiliary_head: If True the model has two outputs, ``[logits, aux_logits]``; the
            training loss is then ``CE(logits) + 0.4 CE(aux_logits)`` (DARTS), which the
            caller computes. If False (default) the head is not built and the model
            outputs the logits only.

    Returns:
        A functional ``tf.keras.Model`` named ``name``.

    Raises:
        ValueError: ``layers < 3``, a bad ``drop_path`` or ``input_shape``.
    """
    if layers < 3:
        raise ValueError(f"a cell network needs at least 3 cells (two are reductions), got {layers}")
    inputs = tf.keras.Input(shape=check_input_shape(input_shape, 3, name))
    channels = 3 * init_channels  # DARTS's stem multiplier
    x = norm(conv2d(inputs, channels, 3, use_bias=not norm.enabled, name="stem_conv"), "stem_bn")
    s0 = s1 = x
    channels, reduction_prev, aux_logits = init_channels, False, None
    reductions = (layers // 3, 2 * layers // 3)
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            channels *= 2
        s0, s1 = s1, _cell(s0, s1, genotype, channels, reduction, reduction_prev, norm, drop_path,
                           f"cell{i}")
        reduction_prev = reduction
        if auxiliary_head and i == reductions[1]:
            aux_logits = _auxiliary_head(s1, num_classes, norm)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(s1)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="dropout")(x)
    logits = tf.keras.layers.Dense(num_classes, name="logits")(x)
    outputs = [logits, aux_logits] if auxiliary_head else logits
    return tf.keras.Model(inputs, outputs, name=name)


def darts(num_classes: int, input_shape: Sequence[int], norm: Norm, dropout: float | None = None,
          **kwargs) -> tf.keras.Model:
    """DARTS-V2 on CIFAR: 20 cells, C = 36, drop-path 0.2 (``kwargs`` as ``cell_network``)."""
    return cell_network(DARTS_V2, "darts", num_classes, input_shape, norm, dropout, **kwargs)


def amoebanet(num_classes: int, input_shape: Sequence[int], norm: Norm, dropout: float | None = None,
              **kwargs) -> tf.keras.Model:
    """AmoebaNet-A cells in the same network at the BA paper's width: C = 128, 20 cells."""
    kwargs.setdefault("init_channels", 128)
    return cell_network(AMOEBANET_A, "amoebanet", num_classes, input_shape, norm, dropout, **kwargs)
