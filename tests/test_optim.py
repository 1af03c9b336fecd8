"""Tests for ba_dist.optim: regimes, LR scaling, weight decay, optimizer."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ba_dist import optim

SPE = 10  # steps per epoch in schedule tests


def lr_at(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)))


# ---------------------------------------------------------------- durations, scaling

def test_epochs_to_steps():
    assert optim.epochs_to_steps(30, 5005) == 150150
    assert optim.epochs_to_steps(81.92, 100) == 8192
    assert optim.epochs_to_steps(0.5, 393) == 197  # halves round up, not to even
    assert optim.epochs_to_steps(0, 7) == 0
    with pytest.raises(ValueError):
        optim.epochs_to_steps(1, 0)
    with pytest.raises(ValueError):
        optim.epochs_to_steps(-1, 10)


@pytest.mark.parametrize("rule,batch,expected", [
    ("none", 8192, 0.1),
    ("linear", 8192, 3.2),       # Goyal et al.: 0.1 * 8192 / 256
    ("linear", 64, 0.025),
    ("sqrt", 1024, 0.2),         # Hoffer et al.: 0.1 * sqrt(4)
    ("sqrt", 256 * 16, 0.4),
])
def test_scale_lr(rule, batch, expected):
    assert optim.scale_lr(0.1, batch, rule) == pytest.approx(expected)


def test_scale_lr_reference_batch_and_errors():
    # BA default: the rule sees the unique batch B, so M does not change the LR.
    assert optim.scale_lr(0.1, 64, "linear", reference_batch=64) == pytest.approx(0.1)
    assert optim.scale_lr(0.1, 64 * 10, "linear", reference_batch=64) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cubic"):
        optim.scale_lr(0.1, 256, "cubic")
    with pytest.raises(ValueError):
        optim.scale_lr(0.1, 0, "linear")


# ---------------------------------------------------------------- schedules

def test_piecewise_values_around_boundaries():
    s = optim.PiecewiseConstantWithWarmup(0.1, [30, 60, 80], SPE, decay=0.1)
    expected = {0: 0.1, 299: 0.1, 300: 0.01, 301: 0.01, 599: 0.01, 600: 1e-3,
                799: 1e-3, 800: 1e-4, 899: 1e-4, 10**6: 1e-4}
    for step, lr in expected.items():
        assert lr_at(s, step) == pytest.approx(lr, rel=1e-6), step


def test_explicit_values():
    s = optim.PiecewiseConstantWithWarmup(0.5, [1, 2], SPE, values=[0.5, 0.3, 0.05])
    assert [lr_at(s, t) for t in (9, 10, 19, 20)] == pytest.approx([0.5, 0.3, 0.3, 0.05])


def test_warmup_linear_monotone_and_reaches_base():
    s = optim.PiecewiseConstantWithWarmup(0.8, [30], SPE, decay=0.1, warmup_epochs=5,
                                          warmup_start_lr=0.1)
    warm = np.array([lr_at(s, t) for t in range(0, 51)])
    assert warm[0] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(warm[:50]), 0.7 / 50, rtol=1e-4)  # linear
    assert np.all(np.diff(warm) > 0)  # strictly increasing up to and into base_lr
    assert warm[25] == pytest.approx(0.45)
    assert warm[50] == pytest.approx(0.8)  # end of warmup: exactly base_lr
    assert lr_at(s, 299) == pytest.approx(0.8)
    assert lr_at(s, 300) == pytest.approx(0.08)


def test_warmup_default_starts_at_zero():
    s = optim.PiecewiseConstantWithWarmup(0.4, [], SPE, decay=0.1, warmup_epochs=1)
    assert [lr_at(s, t) for t in (0, 5, 10, 11)] == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_large_batch_warmup_ramps_from_the_reference_lr_to_the_scaled_lr():
    # Goyal et al.: B = 8192 is k = 32 x 256, LR 0.1 -> 3.2 over 5 epochs, then the regime.
    scaled = optim.scale_lr(0.1, 8192, "linear")
    s = optim.make_schedule("imagenet", scaled, SPE, warmup_epochs=5, reference_lr=0.1)
    assert [lr_at(s, t) for t in (0, 25, 50, 299, 300)] == pytest.approx([0.1, 1.65, 3.2, 3.2, 0.32])
    # An explicit start wins; an unscaled LR (nothing to ramp from) and cosine start at 0.
    explicit = optim.make_schedule("imagenet", scaled, SPE, warmup_epochs=5, reference_lr=0.1,
                                   warmup_start_lr=0.0)
    assert lr_at(explicit, 0) == 0.0
    assert lr_at(optim.make_schedule("imagenet", 0.1, SPE, warmup_epochs=5, reference_lr=0.1), 0) == 0.0
    cosine = optim.make_schedule("cosine", scaled, SPE, total_epochs=90, warmup_epochs=5, reference_lr=0.1)
    assert lr_at(cosine, 0) == 0.0


def test_ba_train_schedule_warms_up_from_the_config_lr():
    """The schedule ba-train builds for the 512-node run (slurm/resnet50_imagenet_512nodes.sh)."""
    from pathlib import Path
    from ba_dist import config as config_lib, train
    repo = Path(__file__).resolve().parents[1]
    cfg = config_lib.load_config_file(f"{repo}/configs/resnet50_imagenet.py:fixed_steps")
    cfg.input.batch_size, cfg.optim.lr_scaling, cfg.optim.warmup_epochs = 8192, "linear", 5.0
    spe = 1_281_167 // 8192
    lr = optim.scale_lr(cfg.optim.base_lr, cfg.input.batch_size, cfg.optim.lr_scaling)
    s = optim.make_schedule(cfg.optim.regime, lr, spe, **train._schedule_kwargs(cfg))
    assert lr_at(s, 0) == pytest.approx(0.1) and lr_at(s, 5 * spe) == pytest.approx(3.2)


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        optim.PiecewiseConstantWithWarmup(0.1, [1], SPE)
    with pytest.raises(ValueError, match="len"):
        optim.PiecewiseConstantWithWarmup(0.1, [1], SPE, values=[0.1])
    with pytest.raises(ValueError, match="strictly increase"):
        optim.PiecewiseConstantWithWarmup(0.1, [2, 1], SPE, decay=0.1)
    with pytest.raises(ValueError, match="warmup"):
        optim.PiecewiseConstantWithWarmup(0.1, [1], SPE, decay=0.1, warmup_epochs=2)


@pytest.mark.parametrize("name,kwargs", [
    ("imagenet", {"warmup_epochs": 5, "warmup_start_lr": 0.1}),
    ("cifar_wrn", {}),
    ("cosine", {"total_epochs": 20, "warmup_epochs": 2}),
])
def test_graph_equals_eager(name, kwargs):
    s = optim.make_schedule(name, 0.4, SPE, **kwargs)
    steps = tf.constant([0, 1, 7, 25, 49, 50, 51, 299, 300, 1199, 1200, 5000], tf.int64)
    eager = np.array([float(s(t)) for t in steps])
    graph_fn = tf.function(lambda t: s(t))
    graph = np.array([float(graph_fn(t)) for t in steps])
    np.testing.assert_allclose(graph, eager, rtol=1e-7)


def test_serialization_round_trip():
    s = optim.PiecewiseConstantWithWarmup(0.2, [3, 6.5], 7, decay=0.2, warmup_epochs=1.5,
                                          warmup_start_lr=0.02)
    clone = optim.PiecewiseConstantWithWarmup.from_config(s.get_config())
    assert clone.get_config() == s.get_config()
    # Through Keras' registry too, as an optimizer checkpoint/config would go.
    revived = tf.keras.optimizers.schedules.deserialize(
        tf.keras.optimizers.schedules.serialize(s))
    assert isinstance(revived, optim.PiecewiseConstantWithWarmup)
    for t in (0, 5, 10, 11, 20, 21, 45, 46, 100):
        assert lr_at(revived, t) == pytest.approx(lr_at(s, t)), t


@pytest.mark.parametrize("name,drops,total", [
    ("imagenet", [30, 60, 80], 90),
    ("imagenet_ba_fast", [30, 35], 40),
    ("imagenet_ba_faster", [15, 20, 22], 23),
    ("cifar_resnet", [81, 122], 164),
    ("cifar_wrn", [60, 120, 160], 200),
])
def test_named_regimes(name, drops, total):
    assert optim.regime_epochs(name) == total
    s = optim.make_schedule(name, 0.1, SPE)
    factor = 0.2 if name == "cifar_wrn" else 0.1
    for i, epoch in enumerate(drops):
        assert lr_at(s, epoch * SPE - 1) == pytest.approx(0.1 * factor ** i)
        assert lr_at(s, epoch * SPE) == pytest.approx(0.1 * factor ** (i + 1))


def test_cifar_resnet_matches_he_iterations():
    # He et al.: drops at 32k and 48k iterations at batch 128 on 50k images.
    assert optim.REGIMES["cifar_resnet"][0] == [int(32000 * 128 / 50000),
                                                int(48000 * 128 / 50000)]


def test_constant_and_cosine():
    c = optim.make_schedule("constant", 0.3, SPE)
    assert [lr_at(c, t) for t in (0, 10**6)] == pytest.approx([0.3, 0.3])
    cos = optim.make_schedule("cosine", 0.4, SPE, total_epochs=10)
    assert [lr_at(cos, t) for t in (0, 50, 100)] == pytest.approx([0.4, 0.2, 0.0], abs=1e-7)
    with pytest.raises(ValueError, match="total_epochs"):
        optim.make_schedule("cosine", 0.4, SPE)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="imagenet_ba_fast"):  # lists the known ones
        optim.make_schedule("imagenet_fast", 0.1, SPE)
    with pytest.raises(ValueError, match="cifar_wrn"):
        optim.regime_epochs("wrn")
    with pytest.raises(ValueError, match="no fixed length"):
        optim.regime_epochs("constant")
    with pytest.raises(ValueError, match="takes only"):
        optim.make_schedule("imagenet", 0.1, SPE, total_epochs=3)


# ---------------------------------------------------------------- weight decay

class GhostBatchNormalization(tf.keras.layers.Layer):
    """Stand-in: a custom norm layer recognised by its class name only."""

    def build(self, input_shape):
        self.gamma = self.add_weight(name="scale", shape=input_shape[-1:], initializer="ones")
        self.beta = self.add_weight(name="offset", shape=input_shape[-1:], initializer="zeros")

    def call(self, x):
        return x * self.gamma + self.beta


def _model():
    inner = tf.keras.Sequential([tf.keras.layers.Conv2D(3, 3, name="inner_conv"),
                                 tf.keras.layers.BatchNormalization(name="inner_bn")],
                                name="block")
    x = inp = tf.keras.Input((6, 6, 2))
    x = tf.keras.layers.Conv2D(4, 3, name="conv")(x)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = GhostBatchNormalization(name="gbn")(x)
    x = inner(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.LayerNormalization(name="ln")(x)
    out = tf.keras.layers.Dense(5, name="dense")(x)
    return tf.keras.Model(inp, out)


def _refs(variables):
    return {v.ref() for v in variables}


def test_decayed_variables_exclude_exactly_norm_layers():
    model = _model()
    by_layer = {name: model.get_layer(name) for name in ("conv", "bn", "gbn", "ln", "dense")}
    inner = model.get_layer("block")
    norm = _refs(by_layer["bn"].trainable_weights + by_layer["gbn"].trainable_weights
                 + by_layer["ln"].trainable_weights
                 + inner.get_layer("inner_bn").trainable_weights)
    assert len(norm) == 8  # gamma + beta of 4 norm layers
    decayed = _refs(optim.decayed_variables(model))
    assert decayed == _refs(model.trainable_variables) - norm
    assert decayed == _refs(by_layer["conv"].trainable_weights
                            + by_layer["dense"].trainable_weights
                            + inner.get_layer("inner_conv").trainable_weights)

    no_bias = _refs(optim.decayed_variables(model, decay_biases=False))
    kernels = [model.get_layer("conv").kernel, model.get_layer("dense").kernel,
               inner.get_layer("inner_conv").kernel]
    assert no_bias == _refs(kernels)
    dense_kernel = model.get_layer("dense").kernel
    assert _refs(optim.decayed_variables(model, exclude=lambda v: v is dense_kernel)) \
        == decayed - {dense_kernel.ref()}


def test_l2_loss_value_and_gradient():
    model = _model()
    wd = 5e-4
    kernel = model.get_layer("conv").kernel
    gamma = model.get_layer("bn").gamma
    bn_beta = model.get_layer("bn").beta
    # Make BN params non-trivial so a leak into the loss would show.
    gamma.assign(tf.fill(gamma.shape, 3.0))
    with tf.GradientTape() as tape:
        loss = optim.l2_regularization_loss(model, wd)
    grads = tape.gradient(loss, [kernel, gamma, bn_beta])
    np.testing.assert_allclose(grads[0].numpy(), wd * kernel.numpy(), rtol=1e-6)
    assert grads[1] is None or not np.any(grads[1].numpy())
    assert grads[2] is None or not np.any(grads[2].numpy())
    expected = wd / 2 * sum(float(tf.reduce_sum(v ** 2))
                            for v in optim.decayed_variables(model))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Variable-list form and zero decay.
    assert float(optim.l2_regularization_loss([kernel], 2.0)) == pytest.approx(
        float(tf.reduce_sum(kernel ** 2)), rel=1e-6)
    assert float(optim.l2_regularization_loss(model, 0.0)) == 0.0


# ---------------------------------------------------------------- optimizer

def test_make_optimizer_follows_schedule():
    sched = optim.PiecewiseConstantWithWarmup(0.5, [0.2], 10, decay=0.1)  # drop at step 2
    opt = optim.make_optimizer(sched, momentum=0.0)
    assert isinstance(opt, tf.keras.optimizers.legacy.SGD)
    w = tf.Variable(0.0)
    deltas = []
    for _ in range(4):
        before = float(w)
        opt.apply_gradients([(tf.constant(1.0), w)])
        deltas.append(before - float(w))
    assert deltas == pytest.approx([0.5, 0.5, 0.05, 0.05])
    assert optim.make_optimizer(0.1, nesterov=True).get_config()["nesterov"] is True
    assert math.isclose(optim.make_optimizer(0.1).get_config()["momentum"], 0.9)
