"""Tests for ba_dist.models: ghost batch norm semantics and the model zoo's contract.

Kept small for shared 2-core machines: big models are only built and counted; forward
passes use the small models on tiny batches.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ba_dist.models import (MODEL_NAMES, DropPath, DropPathSchedule, GhostBatchNormalization,
                            build_model, is_norm_variable, list_models, norm_layers,
                            norm_variables, set_drop_path_rate)
from ba_dist.models import nas_cells
from ba_dist.models.layers import Norm

CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)
DIGITS = (8, 8, 1)


def _ghost_and_bn(virtual_batch_size: int, momentum: float = 0.9):
    """A GhostBatchNormalization and a BatchNormalization with identical non-trivial init."""
    common = dict(momentum=momentum, epsilon=1e-5,
                  gamma_initializer=tf.keras.initializers.Constant(1.5),
                  beta_initializer=tf.keras.initializers.Constant(-0.25))
    return (GhostBatchNormalization(virtual_batch_size=virtual_batch_size, **common),
            tf.keras.layers.BatchNormalization(**common))


def _images(shape, seed=0, loc=2.0, scale=3.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype("float32")


# --------------------------------------------------------------------------- ghost BN


def test_ghost_bn_single_chunk_matches_batch_norm_on_images():
    ghost, bn = _ghost_and_bn(virtual_batch_size=8)
    for step in range(3):
        x = _images((8, 4, 4, 3), seed=step)
        np.testing.assert_allclose(ghost(x, training=True), bn(x, training=True), atol=1e-5)
    # Keras's fused (4-D) BN updates with the unbiased variance, as the ghost layer does.
    np.testing.assert_allclose(ghost.moving_mean, bn.moving_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance, bn.moving_variance, rtol=1e-5, atol=1e-5)
    x = _images((5, 4, 4, 3), seed=9)
    np.testing.assert_allclose(ghost(x, training=False), bn(x, training=False), atol=1e-5)


def test_ghost_bn_single_chunk_on_features_documents_the_variance_rule():
    ghost, bn = _ghost_and_bn(virtual_batch_size=16)
    x = _images((16, 6))
    np.testing.assert_allclose(ghost(x, training=True), bn(x, training=True), atol=1e-5)
    np.testing.assert_allclose(ghost.moving_mean, 0.1 * x.mean(0), rtol=1e-5, atol=1e-6)
    # Unbiased chunk variance (Keras's non-fused 2-D path would use ddof=0).
    np.testing.assert_allclose(ghost.moving_variance, 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)


def test_ghost_bn_normalises_each_chunk_on_its_own():
    ghost, _ = _ghost_and_bn(virtual_batch_size=8, momentum=0.0)
    x = np.concatenate([_images((8, 3, 3, 2), seed=1), _images((8, 3, 3, 2), seed=2, loc=7.0)])
    y = ghost(x, training=True).numpy()
    for chunk in range(2):
        part = x[8 * chunk: 8 * (chunk + 1)]
        _, bn = _ghost_and_bn(virtual_batch_size=8)
        np.testing.assert_allclose(y[8 * chunk: 8 * (chunk + 1)], bn(part, training=True),
                                   atol=1e-5)
    _, whole = _ghost_and_bn(virtual_batch_size=16)
    assert not np.allclose(y, whole(x, training=True), atol=1e-2)  # the chunking matters
    # momentum 0: moving stats are exactly the mean of the chunk statistics.
    chunks = x.reshape(2, 8 * 3 * 3, 2)
    np.testing.assert_allclose(ghost.moving_mean, chunks.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance, chunks.var(1, ddof=1).mean(0), rtol=1e-5)


def test_ghost_bn_inference_uses_moving_statistics_for_any_batch():
    layer = GhostBatchNormalization(virtual_batch_size=4, epsilon=1e-3)
    layer.build((None, 3))
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
    mean, var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    layer.set_weights([gamma, beta, mean, var])
    x = _images((5, 3))  # 5 is not a multiple of 4: fine outside training
    expected = gamma * (x - mean) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)  # default: inference
    layer.trainable = False  # frozen BN runs in inference mode, like Keras BN
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, mean)


def test_ghost_bn_rejects_a_batch_that_is_not_a_multiple():
    layer = GhostBatchNormalization(virtual_batch_size=4)
    with pytest.raises(ValueError, match="multiple of virtual_batch_size=4.*got batch size 10"):
        layer(_images((10, 3)), training=True)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def train_call(x):
        return layer(x, training=True)

    train_call(_images((8, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="virtual_batch_size=4"):
        train_call(_images((6, 3)))
    with pytest.raises(ValueError, match="virtual_batch_size"):
        GhostBatchNormalization(virtual_batch_size=0)


def test_ghost_bn_config_and_keras_saving_round_trip(tmp_path):
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=0.8, epsilon=1e-4,
                                    center=False, name="gbn")
    clone = GhostBatchNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

    inputs = tf.keras.Input((3,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(layer(inputs)))
    model(_images((8, 3)), training=True)  # move the statistics away from their init
    path = str(tmp_path / "ghost.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects: the layer is registered
    x = _images((5, 3), seed=3)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    assert loaded.get_layer("gbn").virtual_batch_size == 4


def test_ghost_bn_trains_inside_a_compiled_model():
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((5,)),
        tf.keras.layers.Dense(8),
        GhostBatchNormalization(virtual_batch_size=16, name="gbn"),
        tf.keras.layers.Dense(3),
    ])
    model.compile(optimizer="sgd",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _images((32, 5)), np.arange(32) % 3
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert np.abs(model.get_layer("gbn").moving_mean.numpy()).sum() > 0


def test_ghost_bn_mixed_precision_keeps_float32_statistics():
    layer = GhostBatchNormalization(virtual_batch_size=4, dtype="mixed_float16")
    x = _images((8, 4), loc=50.0)
    y = layer(x, training=True)
    assert y.dtype == tf.float16
    assert all(w.dtype == tf.float32 for w in layer.weights)
    reference = GhostBatchNormalization(virtual_batch_size=4)
    x16 = x.astype("float16").astype("float32")  # what the mixed layer actually receives
    np.testing.assert_allclose(y.numpy().astype("float32"), reference(x16, training=True),
                               atol=1e-2)


# --------------------------------------------------------------------------- model zoo

# Published parameter counts (trainable parameters, as papers/PyTorch count them: BN moving
# statistics excluded). name: (num_classes, input_shape, published, exact count we build).
PUBLISHED = {
    # He et al. 2016, "Deep Residual Learning", Table 6 (0.27M .. 1.7M). Exact counts equal
    # those printed by akamaster/pytorch_resnet_cifar10 (option A).
    "resnet20": (10, CIFAR, 0.27e6, 269_722),
    "resnet32": (10, CIFAR, 0.46e6, 464_154),
    "resnet44": (10, CIFAR, 0.66e6, 658_586),
    "resnet56": (10, CIFAR, 0.85e6, 853_018),
    "resnet110": (10, CIFAR, 1.7e6, 1_727_962),
    # He et al. 2016 / torchvision resnet50 (25,557,032).
    "resnet50": (1000, IMAGENET, 25.6e6, 25_557_032),
    # Zagoruyko & Komodakis 2016, "Wide Residual Networks": WRN-28-10, 36.5M.
    "wrn28_10": (10, CIFAR, 36.5e6, 36_479_194),
    # Li et al. 2017, "Pruning Filters for Efficient ConvNets", Table 1: VGG-16, 1.5e7.
    "vgg16": (10, CIFAR, 15.0e6, 14_987_210),
    # Huang et al. 2017, "Densely Connected ConvNets", Table 2: DenseNet-BC-100 k=12, 0.8M
    # (CIFAR-100 head, as in the BA paper's Table 2).
    "densenet100_12": (100, CIFAR, 0.8e6, 800_032),
    # torchvision alexnet: 61,100,840 (+9,344 for BN in place of biases).
    "alexnet": (1000, IMAGENET, 61.1e6, 61_110_184),
    # Howard et al. 2017, "MobileNets", Table 8: 1.0 MobileNet-224, 4.2M.
    "mobilenet_v1": (1000, IMAGENET, 4.2e6, 4_231_976),
    # Liu et al. 2019 (DARTS), Table 1: DARTS (second order) 3.3M; the exact count equals the
    # "param size = 3.349342MB" that the DARTS reference code prints (no auxiliary head).
    "darts": (10, CIFAR, 3.3e6, 3_349_342),
    # AmoebaNet-A cells in DARTS's network at C = 128 (BA paper Table 5, "width=128"); no
    # published count at this width: the reference is ours (3.2M at C = 36 is checked below).
    "amoebanet": (10, CIFAR, 37_490_058, 37_490_058),
    # Ours: conv 288 + 18,432, BN 2 x (64 + 128) / 2, dense 1,024 x 10 + 10.
    "digits_cnn": (10, DIGITS, 29_162, 29_162),
    # Ours on 64 features: 64x256 + 256x256 + 256x10 + 10 + BN 2 x 2 x 256.
    "mlp": (10, (64,), 85_514, 85_514),
}


def _trainable_count(model: tf.keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def test_registry_lists_every_model_once():
    assert list_models() == MODEL_NAMES
    assert set(MODEL_NAMES) == set(PUBLISHED)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_matches_published_size_and_zoo_contract(name):
    num_classes, input_shape, published, exact = PUBLISHED[name]
    model = build_model(name, num_classes, input_shape)
    count = _trainable_count(model)
    assert count == exact
    assert abs(count - published) / published < 0.02
    assert model.name == name
    assert model.output_shape == (None, num_classes)
    assert model.layers[-1].activation is tf.keras.activations.linear  # logits, no softmax

    layers = norm_layers(model)
    assert layers and all(isinstance(l, tf.keras.layers.BatchNormalization) for l in layers)
    by_name = {v.ref() for v in model.variables if is_norm_variable(v)}
    assert by_name == {v.ref() for v in norm_variables(model)}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            assert isinstance(layer.depthwise_initializer, tf.keras.initializers.HeNormal)
        elif isinstance(layer, tf.keras.layers.Conv2D):
            assert isinstance(layer.kernel_initializer, tf.keras.initializers.HeNormal)
            assert not layer.use_bias  # every conv is followed by BN
    del model
    tf.keras.backend.clear_session()


def test_alexnet_without_bn_is_torchvision_alexnet():
    model = build_model("alexnet", 1000, IMAGENET, bn="none")
    assert _trainable_count(model) == 61_100_840  # torchvision.models.alexnet()
    assert not norm_layers(model)
    assert [l.rate for l in model.layers if isinstance(l, tf.keras.layers.Dropout)] == [0.5, 0.5]
    tf.keras.backend.clear_session()


def test_unknown_model_and_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="known models: resnet20, .*mlp"):
        build_model("resnet18", 10, CIFAR)
    for kwargs in (dict(bn="layer"), dict(bn="ghost", ghost_batch_size=0),
                   dict(bn_momentum=1.0), dict(dropout=1.5), dict(dtype_policy="float8")):
        with pytest.raises(ValueError):
            build_model("digits_cnn", 10, DIGITS, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("digits_cnn", 0, DIGITS)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("resnet20", 10, (32, 32))


@pytest.mark.parametrize("name,input_shape", [("resnet20", CIFAR), ("digits_cnn", DIGITS),
                                              ("mlp", (64,))])
def test_ghost_and_no_normalization_variants(name, input_shape):
    ghost = build_model(name, 10, input_shape, bn="ghost", ghost_batch_size=16,
                        bn_momentum=0.8)
    layers = norm_layers(ghost)
    assert layers and all(isinstance(l, GhostBatchNormalization) for l in layers)
    assert {(l.virtual_batch_size, l.momentum) for l in layers} == {(16, 0.8)}
    x = _images((32,) + input_shape)
    logits = ghost(x, training=True)  # 2 ghost batches of 16
    assert logits.shape == (32, 10) and np.all(np.isfinite(logits))

    plain = build_model(name, 10, input_shape, bn="none")
    assert not norm_layers(plain)
    assert not any(is_norm_variable(v) for v in plain.variables)
    assert plain(x[:3], training=False).shape == (3, 10)


@pytest.mark.parametrize("name,input_shape", [("vgg16", CIFAR), ("densenet100_12", CIFAR),
                                              ("mobilenet_v1", (64, 64, 3))])
def test_medium_models_forward_pass(name, input_shape):
    model = build_model(name, 7, input_shape)
    logits = model(_images((2,) + input_shape), training=False)
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))


def test_dtype_policy_is_scoped_to_the_model_and_logits_are_float32():
    before = tf.keras.mixed_precision.global_policy().name
    model = build_model("digits_cnn", 10, DIGITS, bn="ghost", ghost_batch_size=4,
                        dtype_policy="mixed_bfloat16")
    assert tf.keras.mixed_precision.global_policy().name == before
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("bn1").moving_mean.dtype == tf.float32
    logits = model(_images((8,) + DIGITS), training=True)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits))


def test_resnet_with_ghost_bn_saves_and_loads(tmp_path):
    model = build_model("resnet20", 10, CIFAR, bn="ghost", ghost_batch_size=4)
    x = _images((8,) + CIFAR)
    model(x, training=True)
    path = str(tmp_path / "resnet20.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x[:3]), model(x[:3]), atol=1e-5)


def test_digits_cnn_with_ghost_bn_learns_uci_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    tf.keras.utils.set_random_seed(0)
    model = build_model("digits_cnn", 10, DIGITS, bn="ghost", ghost_batch_size=32)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # drop_remainder: every training batch must be a multiple of the ghost batch size.
    data = tf.data.Dataset.from_tensor_slices((images[train], digits.target[train]))
    data = data.shuffle(1400, seed=0).batch(64, drop_remainder=True)
    model.fit(data, epochs=6, verbose=0)
    _, accuracy = model.evaluate(images[test], digits.target[test], verbose=0)
    assert accuracy > 0.95


# --------------------------------------------------------------------------- cell networks


def test_drop_path_drops_whole_examples_in_training_only():
    tf.keras.utils.set_random_seed(0)
    layer = DropPath(0.5)
    x = np.ones((256, 2, 2, 3), "float32")
    y = layer(x, training=True).numpy()
    per_example = y.reshape(256, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}           # dropped, or kept and x / keep
    assert np.all(per_example.min(1) == per_example.max(1))    # one draw per example
    assert 0.35 < (per_example[:, 0] == 0).mean() < 0.65
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer(x), x)                 # default: inference

    @tf.function
    def train(inputs):
        return layer(inputs, training=True)

    train(x)
    assert set_drop_path_rate(tf.keras.Sequential([layer]), 0.0) == 1
    np.testing.assert_array_equal(train(x), x)  # the traced step sees the new rate
    with pytest.raises(ValueError, match="drop-path rate"):
        DropPath(1.0)


def test_drop_path_schedule_ramps_like_darts():
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, DropPath(0.2)(DropPath(0.2)(inputs)))
    schedule = DropPathSchedule(0.2, epochs=10)
    schedule.set_model(model)
    for epoch, rate in ((0, 0.0), (5, 0.1), (9, 0.18)):
        schedule.on_epoch_begin(epoch)
        assert [float(l.rate.numpy()) for l in model.layers[1:]] == pytest.approx([rate, rate])


def test_cell_network_small_forward_auxiliary_head_and_drop_path():
    tf.keras.utils.set_random_seed(1)
    # 5 cells: reductions at cells 1 and 3, the auxiliary head on cell 3's 8x8 output.
    model = nas_cells.cell_network(nas_cells.AMOEBANET_A, "tiny", 10, CIFAR, Norm(),
                                   init_channels=8, layers=5, drop_path=0.3, auxiliary_head=True)
    assert model.output_shape == [(None, 10), (None, 10)]
    assert model.get_layer("cell3_out").output_shape == (None, 8, 8, 3 * 32)
    x = _images((4,) + CIFAR)
    logits, aux = model(x, training=True)
    assert logits.shape == aux.shape == (4, 10) and np.all(np.isfinite(logits))
    # Drop-path is the only randomness: training calls differ, inference calls do not.
    assert not np.allclose(model(x, training=True)[0], logits)
    np.testing.assert_array_equal(model(x)[0], model(x)[0])
    set_drop_path_rate(model, 0.0)
    np.testing.assert_allclose(model(x, training=True)[0], model(x, training=True)[0], atol=1e-5)

    darts = nas_cells.cell_network(nas_cells.DARTS_V2, "tiny_darts", 10, CIFAR, Norm("ghost", 2),
                                   init_channels=8, layers=5)
    assert darts(x[:2], training=True).shape == (2, 10)
    assert darts.get_layer("cell1_out").output_shape == (None, 16, 16, 4 * 16)


def test_amoebanet_cells_at_darts_width_match_the_published_size():
    # Real et al. / Liu et al. Table 1: AmoebaNet-A (N = 6, F = 36), 3.2M parameters.
    model = nas_cells.amoebanet(10, CIFAR, Norm(), init_channels=36)
    assert abs(_trainable_count(model) - 3.2e6) / 3.2e6 < 0.02
    tf.keras.backend.clear_session()


def test_auxiliary_head_count_and_rejection():
    model = build_model("darts", 10, CIFAR, auxiliary_head=True)
    assert _trainable_count(model) == 3_349_342 + 476_426
    assert [o.shape.as_list() for o in model.outputs] == [[None, 10], [None, 10]]
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_model("resnet20", 10, CIFAR, auxiliary_head=True)
    tf.keras.backend.clear_session()
