"""The ba_dist model zoo: every network of the Batch Augmentation paper, built by name.

Usage::

    from ba_dist.models import build_model, is_norm_variable
    model = build_model("resnet44", num_classes=10, input_shape=(32, 32, 3), bn="ghost")
    decayed = [v for v in model.trainable_variables if not is_norm_variable(v)]

All models are Keras functional models that take channels-last float inputs (normalised
by the data pipeline) and return **logits** (no softmax). Convs use He-normal
initialisation; a conv or dense layer followed by a normalization layer has no bias.

========================  =============================================  ===============
name                      network (source of the parameter count)        trainable params
========================  =============================================  ===============
resnet20 ... resnet110    He et al. 2016 CIFAR ResNets, option A         0.27M ... 1.7M
resnet50                  ResNet-50 v1.5 (torchvision)                   25.6M (1000 cls)
wrn28_10                  Wide-ResNet-28-10 (Zagoruyko & Komodakis)      36.5M (10 cls)
vgg16                     VGG-16-BN, CIFAR (Li et al. 2017)              15.0M (10 cls)
densenet100_12            DenseNet-BC-100, k=12 (Huang et al.)           0.8M (100 cls)
alexnet                   one-tower AlexNet (+BN, BA authors' code)      61.1M (1000 cls)
mobilenet_v1              MobileNet v1, width 1.0 (Howard et al.)        4.2M (1000 cls)
darts                     DARTS-V2, 20 cells, C=36 (Liu et al.)          3.3M (10 cls)
amoebanet                 AmoebaNet-A cells, 20 cells, C=128 (BA T.5)    37.5M (10 cls)
digits_cnn                2-conv CNN for 8x8x1 UCI digits                29k (10 cls)
mlp                       2 x 256 hidden units                           depends on input
========================  =============================================  ===============

Where ``dropout`` goes: before the classifier (CIFAR/ImageNet ResNets, MobileNet,
digits_cnn), between the two convs of every block (wrn28_10), after every conv
(densenet100_12), before each hidden dense layer (alexnet, vgg16) or after each hidden
layer (mlp); darts and amoebanet use drop-path in their cells (``ba_dist.models.drop_path``)
and take dropout, if given, before the classifier. ``dropout=None`` keeps each network's
reference value: 0.5 for alexnet and vgg16, none for the others.

darts and amoebanet have DARTS's auxiliary classifier when built with
``auxiliary_head=True``: the model then outputs ``[logits, aux_logits]`` and the training
loss should add ``0.4 * CE(aux_logits)``; by default they output the logits only.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import tensorflow as tf

from ba_dist.models.alexnet import alexnet
from ba_dist.models.densenet import densenet_bc
from ba_dist.models.drop_path import DropPath, DropPathSchedule, set_drop_path_rate
from ba_dist.models.ghost_bn import GhostBatchNormalization
from ba_dist.models.layers import (NORM_KINDS, NORM_LAYER_TYPES, Norm, is_norm_variable,
                                   norm_layers, norm_variables)
from ba_dist.models.mobilenet import mobilenet_v1
from ba_dist.models.nas_cells import amoebanet, darts
from ba_dist.models.resnet_cifar import resnet_cifar
from ba_dist.models.resnet_imagenet import resnet_imagenet
from ba_dist.models.small import digits_cnn, mlp
from ba_dist.models.vgg import vgg_cifar
from ba_dist.models.wide_resnet import wide_resnet

__all__ = [
    "AUXILIARY_HEAD_MODELS",
    "DropPath",
    "DropPathSchedule",
    "MODEL_NAMES",
    "NORM_KINDS",
    "NORM_LAYER_TYPES",
    "GhostBatchNormalization",
    "build_model",
    "is_norm_variable",
    "list_models",
    "norm_layers",
    "norm_variables",
    "set_drop_path_rate",
]

# Every builder takes (num_classes, input_shape, norm, dropout) and returns a Model.
_BUILDERS: dict[str, Callable[..., tf.keras.Model]] = {
    "resnet20": functools.partial(resnet_cifar, 20),
    "resnet32": functools.partial(resnet_cifar, 32),
    "resnet44": functools.partial(resnet_cifar, 44),
    "resnet56": functools.partial(resnet_cifar, 56),
    "resnet110": functools.partial(resnet_cifar, 110),
    "resnet50": resnet_imagenet,
    "wrn28_10": functools.partial(wide_resnet, 28, 10),
    "vgg16": vgg_cifar,
    "densenet100_12": functools.partial(densenet_bc, 100, 12),
    "alexnet": alexnet,
    "mobilenet_v1": mobilenet_v1,
    "darts": darts,
    "amoebanet": amoebanet,
    "digits_cnn": digits_cnn,
    "mlp": mlp,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# Builders that also take auxiliary_head=True (a second output, DARTS's auxiliary classifier).
AUXILIARY_HEAD_MODELS: tuple[str, ...] = ("darts", "amoebanet")


def list_models() -> tuple[str, ...]:
    """The names ``build_model`` accepts, in the order of ``MODEL_NAMES``."""
    return MODEL_NAMES


@contextlib.contextmanager
def _global_policy(name: str | None) -> Iterator[tf.keras.mixed_precision.Policy]:
    """Sets the Keras dtype policy while layers are created, then restores the old one.

    Layers read the global policy when constructed, so this scopes a policy to one model
    instead of leaving it set for the whole process.
    """
    previous = tf.keras.mixed_precision.global_policy()
    if name is None:
        yield previous
        return
    try:
        policy = tf.keras.mixed_precision.Policy(name)
    except ValueError as error:
        raise ValueError(f"dtype_policy {name!r} is not a Keras dtype policy (use e.g. "
                         "'float32', 'mixed_float16' or 'mixed_bfloat16')") from error
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def build_model(name: str, num_classes: int, input_shape: Sequence[int], *,
                bn: str = "batch", ghost_batch_size: int = 32, bn_momentum: float = 0.9,
                dropout: float | None = None,
                dtype_policy: str | None = None,
                auxiliary_head: bool = False) -> tf.keras.Model:
    """Builds a zoo model by name.

    Args:
        name: One of ``MODEL_NAMES``.
        num_classes: Size of the logits.
        input_shape: Input shape without the batch axis, channels last, e.g. ``(32, 32, 3)``.
        bn: ``"batch"`` (tf.keras BatchNormalization over the per-replica batch),
            ``"ghost"`` (GhostBatchNormalization over consecutive chunks of
            ``ghost_batch_size`` examples; the per-replica training batch must be a multiple
            of it) or ``"none"`` (no normalization; layers get biases instead).
        ghost_batch_size: Examples per ghost batch; the paper normalises subsets of 32 for
            ResNet-50 (appendix C.2).
        bn_momentum: Moving-statistics momentum in the Keras convention (0.9 is PyTorch's
            default 0.1).
        dropout: Dropout rate (placement per model in the module docstring); ``None`` keeps
            the network's reference value.
        dtype_policy: Keras dtype policy for this model only, e.g. ``"mixed_float16"``;
            ``None`` uses the current global policy. Under a mixed policy the logits are
            cast to float32 (a final linear ``Activation`` named ``logits_float32``), so the
            loss is computed in float32; normalization statistics are float32 anyway.
        auxiliary_head: Only for ``AUXILIARY_HEAD_MODELS``: add the auxiliary classifier,
            so the model outputs ``[logits, aux_logits]`` (module docstring).

    Returns:
        An uncompiled functional ``tf.keras.Model`` named ``name`` that outputs logits
        (a list of two logits tensors with ``auxiliary_head=True``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), or a bad
            ``num_classes``, ``input_shape``, ``bn``, ``ghost_batch_size``, ``bn_momentum``,
            ``dropout`` or ``dtype_policy``, or ``auxiliary_head`` for a model without one.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) or None, got {dropout!r}")
    if auxiliary_head and name not in AUXILIARY_HEAD_MODELS:
        raise ValueError(f"auxiliary_head=True: {name!r} has no auxiliary head (only "
                         f"{', '.join(AUXILIARY_HEAD_MODELS)} have one)")
    norm = Norm(bn, ghost_batch_size=ghost_batch_size, momentum=bn_momentum)
    extra = {"auxiliary_head": True} if auxiliary_head else {}
    with _global_policy(dtype_policy) as policy:
        model = _BUILDERS[name](num_classes=num_classes, input_shape=tuple(input_shape),
                                norm=norm, dropout=dropout, **extra)
        if policy.compute_dtype != "float32":
            # Softmax/cross-entropy in float16 loses precision and can overflow.
            logits = [tf.keras.layers.Activation("linear", dtype="float32", name=f"{out}_float32")(t)
                      for out, t in zip(("logits", "aux_logits"), model.outputs)]
            model = tf.keras.Model(model.inputs, logits if auxiliary_head else logits[0],
                                   name=model.name)
    return model
