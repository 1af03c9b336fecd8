"""Precise BN in one process: the moving statistics become the mean of the N batches' statistics."""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist import dist
from ba_dist.models.ghost_bn import GhostBatchNormalization
from ba_dist.precise_bn import update_bn_statistics


def _net(bn):
    x = tf.keras.Input((4, 4, 3))
    y = tf.keras.layers.Conv2D(5, 3, padding="same", kernel_initializer="he_normal")(x)
    y = bn(y)
    return tf.keras.Model(x, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(y)))


@pytest.mark.parametrize("kind", ["keras", "ghost"])
def test_moving_mean_is_the_mean_of_batch_means(kind):
    dist.init()
    tf.keras.utils.set_random_seed(3)
    bn = tf.keras.layers.BatchNormalization(momentum=0.9) if kind == "keras" else \
        GhostBatchNormalization(virtual_batch_size=4, momentum=0.9)
    net = _net(bn)
    conv = tf.keras.Model(net.input, net.layers[1].output)
    rng = np.random.default_rng(0)
    # batches with very different means: an EMA (or a lagging moving average) cannot match their plain mean
    batches = [(rng.normal(loc=3.0 * i, size=(8, 4, 4, 3)).astype("float32"), np.zeros(8)) for i in range(5)]
    used = update_bn_statistics(net, iter(batches + batches), num_batches=5)   # only the first 5 count
    assert used == 5
    feats = [conv(x, training=False).numpy() for x, _ in batches]
    if kind == "keras":
        means = [f.mean(axis=(0, 1, 2)) for f in feats]
        variances = [f.var(axis=(0, 1, 2), ddof=1) for f in feats]
    else:   # ghost BN: mean over the ghost batches of 4, Bessel over 4*4*4 values
        chunks = [f.reshape(2, 4, 4, 4, 5) for f in feats]
        means = [c.mean(axis=(1, 2, 3)).mean(axis=0) for c in chunks]
        n = 4 * 4 * 4
        variances = [c.var(axis=(1, 2, 3)).mean(axis=0) * n / (n - 1) for c in chunks]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-3, atol=1e-4)
    assert bn.momentum == 0.9     # restored


def test_needs_batches():
    dist.init()
    net = _net(tf.keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match="num_batches=0"):
        update_bn_statistics(net, [], 0)
    with pytest.raises(ValueError, match="no batch"):
        update_bn_statistics(net, [], 3)
