"""A user script written only against the documented ba_dist.keras API, run on every rank.

Under the 4-rank launch (m_ranks=2, m_local=2) this is the public API's
promise: the ranks of a group see the same sample ids, augmentations differ,
and the model trains.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import horovod.tensorflow.keras as hvd
from sklearn.datasets import load_digits

import ba_dist.keras as ba

M_RANKS = int(os.environ.get("BA_DIST_TEST_M_RANKS", "1"))
M_LOCAL = int(os.environ.get("BA_DIST_TEST_M_LOCAL", "1"))
B = 16


def _digits():
    d = load_digits()
    return tf.data.Dataset.from_tensor_slices((np.minimum(d.images * 16, 255).astype(np.uint8)[..., None], d.target))


def test_user_script_groups_share_ids_and_train():
    ctx = ba.init(m_ranks=M_RANKS, m_local=M_LOCAL)
    t = ctx.topology
    data = ba.ba_dataset(_digits(), "digits", per_rank_unique=B, num_classes=10, seed=7)
    assert data.steps_per_epoch == (1797 // t.num_groups) // B
    it = iter(data.audit)
    batches = [next(it) for _ in range(3)]
    ids = np.stack([b[2].numpy() for b in batches])            # [steps, m_local * B]
    xs = np.stack([b[0].numpy() for b in batches])
    assert xs.shape[1] == M_LOCAL * B
    # copy-major: copy c of unique sample i sits at c*B + i
    for c in range(M_LOCAL):
        np.testing.assert_array_equal(ids[:, c * B:(c + 1) * B], ids[:, :B])
    all_ids = ctx.world_comm.allgather(ids)
    all_xs = ctx.world_comm.allgather(xs)
    for r in range(t.world_size):
        same_group = r // M_RANKS == t.group_id
        if same_group:
            np.testing.assert_array_equal(all_ids[r], ids)         # group-synchronised sampling
            if r != t.rank:
                assert not np.array_equal(all_xs[r], xs)          # own augmentation seeds
        else:
            assert not set(all_ids[r].ravel()) & set(ids.ravel())  # disjoint group shards

    model = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(8, 8, 1)),
                                 tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(10)])
    model.compile(optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.legacy.SGD(0.1, momentum=0.9)),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    schedule = ba.make_schedule("constant", 0.1, data.steps_per_epoch, warmup_epochs=0.5)
    hist = model.fit(data.dataset, steps_per_epoch=data.steps_per_epoch, epochs=3, verbose=0,
                     callbacks=ba.ba_callbacks(data=data, schedule=schedule))
    h = hist.history
    assert h["loss"][-1] < h["loss"][0] and h["accuracy"][-1] > 0.6, h
    assert all(g > 0 for g in h["grad_norm"]) and h["lr"][-1] == pytest.approx(0.1)
    # metrics were averaged: every rank holds the same numbers
    assert len({round(v, 6) for v in ctx.world_comm.allgather(h["loss"][-1])}) == 1


def test_broadcast_dataset_only_the_reader_iterates():
    """broadcast=True: the group's reader iterates the dataset and sends decoded images;
    the group still sees the same samples (labels) with its own augmentations."""
    ctx = ba.init(m_ranks=M_RANKS, m_local=M_LOCAL)
    t = ctx.topology
    data = ba.ba_dataset(_digits(), "digits", per_rank_unique=B, num_classes=10, seed=3, broadcast=True)
    assert (data.audit is None) == (M_RANKS > 1)
    it = iter(data.dataset)
    x, y = (v.numpy() for v in next(it))
    assert x.shape == (M_LOCAL * B, 8, 8, 1) and y.shape == (M_LOCAL * B,)  # integer labels stay integer
    xs, ys = ctx.world_comm.allgather(x), ctx.world_comm.allgather(y)
    for r in t.group_ranks:
        np.testing.assert_array_equal(ys[r], y)
        if r != t.rank:
            assert not np.array_equal(xs[r], x)
    data.stop()  # every rank, same step: the reader's end marker releases the group
