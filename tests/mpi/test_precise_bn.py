"""Precise BN on every rank at once: the true average of all ranks' batch statistics, identical everywhere."""
import os

import numpy as np
import tensorflow as tf

from ba_dist import dist
from ba_dist.models.ghost_bn import GhostBatchNormalization
from ba_dist.precise_bn import update_bn_statistics

M_RANKS = int(os.environ.get("BA_DIST_TEST_M_RANKS", "1"))
M_LOCAL = int(os.environ.get("BA_DIST_TEST_M_LOCAL", "1"))


def test_precise_bn_averages_over_ranks():
    ctx = dist.init(m_ranks=M_RANKS, m_local=M_LOCAL)
    n, r = ctx.size, ctx.rank
    tf.keras.utils.set_random_seed(7)          # same initial weights on every rank
    x = tf.keras.Input((6,))
    h = tf.keras.layers.Dense(4)(x)
    bn1 = tf.keras.layers.BatchNormalization(momentum=0.99)
    bn2 = GhostBatchNormalization(virtual_batch_size=4, momentum=0.99)
    g = tf.keras.layers.Dense(3, bias_initializer=tf.keras.initializers.Constant(2.0))(x)
    net = tf.keras.Model(x, tf.keras.layers.Concatenate()([bn1(h), bn2(g)]))
    rng = np.random.default_rng(100 + r)       # every rank its own batches, shifted by rank
    batches = [rng.normal(loc=r + i, scale=1 + r, size=(8, 6)).astype("float32") for i in range(3)]
    before = [v.numpy().copy() for v in (bn1.moving_mean, bn2.moving_mean)]
    update_bn_statistics(net, batches, 3)

    # expected: this rank's mean over its batches of the batch statistics (computed with the same weights
    # and the new statistics do not feed back in training mode), then the mean over ranks
    h_of = tf.keras.Model(x, h)
    hs = [h_of(b).numpy() for b in batches]
    local_mean1 = np.mean([f.mean(axis=0) for f in hs], axis=0)
    local_var1 = np.mean([f.var(axis=0) for f in hs], axis=0)   # Keras non-fused path (2-D): biased variance
    expect_mean1 = ctx.world_comm.allreduce(local_mean1) / n
    expect_var1 = ctx.world_comm.allreduce(local_var1) / n
    np.testing.assert_allclose(bn1.moving_mean.numpy(), expect_mean1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), expect_var1, rtol=1e-3, atol=1e-4)
    # ghost BN (chunks of 4 rows): mean of the chunk means, mean of the Bessel-corrected chunk variances
    gs = [tf.keras.Model(x, g)(b).numpy().reshape(2, 4, 3) for b in batches]
    local_mean2 = np.mean([c.mean(axis=1).mean(axis=0) for c in gs], axis=0)
    local_var2 = np.mean([c.var(axis=1).mean(axis=0) * 4 / 3 for c in gs], axis=0)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), ctx.world_comm.allreduce(local_mean2) / n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), ctx.world_comm.allreduce(local_var2) / n,
                               rtol=1e-3, atol=1e-4)
    assert not np.allclose(bn1.moving_mean.numpy(), before[0], atol=1e-3)
    assert not np.allclose(bn2.moving_mean.numpy(), before[1], atol=1e-3)

    # every rank holds identical statistics, bit for bit
    mine = np.concatenate([v.numpy().ravel() for v in (bn1.moving_mean, bn1.moving_variance,
                                                       bn2.moving_mean, bn2.moving_variance)])
    for other in ctx.world_comm.allgather(mine):
        np.testing.assert_array_equal(other, mine)
