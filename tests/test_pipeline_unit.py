"""Single-process tests of the BA sampling and batching (multi-rank ones: tests/mpi/test_pipeline.py)."""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist import ba, dist
from ba_dist.data import augment as aug
from ba_dist.data import sources
from ba_dist.data.batching import make_train_dataset
from ba_dist.data.loader import GroupLoader, PipelineSpec
from ba_dist.data.sampler import GroupSampler, eval_shard


@pytest.mark.parametrize("n,groups,b", [(100, 1, 10), (103, 4, 5), (64, 2, 32)])
def test_group_sampler_disjoint_equal_steps(n, groups, b):
    s = GroupSampler(n, groups, b, seed=5)
    assert s.steps_per_epoch == n // (groups * b)
    for epoch in (0, 1):
        per_group = [s.epoch_ids(epoch, g) for g in range(groups)]
        assert all(p.shape == (s.steps_per_epoch, b) for p in per_group)
        flat = np.concatenate([p.ravel() for p in per_group])
        assert len(set(flat.tolist())) == len(flat)               # disjoint, no repeats
        assert len(flat) == s.steps_per_epoch * groups * b         # remainder dropped (< groups*b)
        assert n - len(flat) < groups * b
    assert not np.array_equal(s.epoch_ids(0, 0), s.epoch_ids(1, 0))  # new order every epoch
    np.testing.assert_array_equal(s.epoch_ids(3, 0), GroupSampler(n, groups, b, seed=5).epoch_ids(3, 0))


def test_group_sampler_rejects_too_small_dataset():
    with pytest.raises(ValueError, match="smaller than one global unique batch"):
        GroupSampler(10, 4, 4)


@pytest.mark.parametrize("n,world", [(359, 2), (10, 4), (7, 8)])
def test_eval_shard_counts_every_sample_once(n, world):
    seen, counts = [], set()
    for r in range(world):
        ids, w = eval_shard(n, r, world)
        counts.add(len(ids))
        seen += ids[w > 0].tolist()
    assert len(counts) == 1 and sorted(seen) == list(range(n))


def test_ba_copies_are_copy_major_and_match_the_tf_data_path():
    ctx = dist.init()
    src = sources.get_source("digits")
    b, m = 8, 3
    spec = PipelineSpec(per_rank_unique=b, m_local=m, augment="digits", seed=11)
    sampler = GroupSampler(len(src), 1, b, seed=11)
    loader = GroupLoader(src, sampler, spec, ctx.topology, num_steps=1)
    x_data, y_data = next(iter(make_train_dataset(loader, spec, ctx.topology, 10, src.image_shape)))
    ids = sampler.epoch_ids(0, 0)[0]
    images = np.stack([src.load(int(i)) for i in ids])
    labels = tf.one_hot([src.label(int(i)) for i in ids], 10)
    op = aug.get_augment("digits")
    x = ba.copies(images, None, tf.stack([ba.copy_draws(spec.seed, 0, 0, i, m, op.draws) for i in ids]), op)
    y = ba.repeat(labels, m)
    # the pure function and the pipeline agree exactly (pipeline divides by 255)
    np.testing.assert_allclose(x.numpy() / 255.0, x_data.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), y_data.numpy())
    # row c*b + i is copy c of sample i: same label, different pixels
    for c in range(1, m):
        np.testing.assert_array_equal(y[c * b:(c + 1) * b], y[:b])
        assert not np.array_equal(x[c * b:(c + 1) * b], x[:b])
