"""BA input pipeline under real mpirun: every rank runs this file at once.

Expected values are derived from rank, size and BA_DIST_TEST_M_RANKS /
BA_DIST_TEST_M_LOCAL (set by tests/test_multirank.py).
"""
import os

import numpy as np
import pytest

from ba_dist import dist
from ba_dist.data import pipeline, sources
from ba_dist.data.sampler import GroupSampler

M_RANKS = int(os.environ.get("BA_DIST_TEST_M_RANKS", "1"))
M_LOCAL = int(os.environ.get("BA_DIST_TEST_M_LOCAL", "1"))
B_PER_RANK = 8


@pytest.fixture(scope="module")
def ctx():
    return dist.init(m_ranks=M_RANKS, m_local=M_LOCAL)


def _loader(ctx, src, mode="decoded", n_epochs=1, seed=3, **kw):
    t = ctx.topology
    sampler = GroupSampler(len(src), t.num_groups, B_PER_RANK, seed=seed)
    spec = pipeline.PipelineSpec(per_rank_unique=B_PER_RANK, m_local=M_LOCAL, augment="digits",
                                 broadcast=mode, seed=seed, **kw)
    return pipeline.GroupLoader(src, sampler, spec, t, ctx.group_comm,
                                num_steps=n_epochs * sampler.steps_per_epoch), sampler, spec


def _gather(ctx, obj):
    return ctx.world_comm.allgather(obj)


def test_same_ids_in_group_disjoint_across_groups_full_coverage(ctx):
    t = ctx.topology
    # 24 * size samples: divisible by groups * b, so one epoch covers everything once
    src = sources.SyntheticSource(num_examples=B_PER_RANK * t.num_groups * 3, image_shape=(8, 8, 1))
    loader, sampler, _ = _loader(ctx, src, n_epochs=2)
    steps = [(e, s, ids.copy()) for e, s, ids, _, _ in loader]
    assert len(steps) == 2 * sampler.steps_per_epoch == 6
    everyone = _gather(ctx, steps)
    for r, theirs in enumerate(everyone):
        if r // M_RANKS == t.group_id:
            for (e1, s1, a), (e2, s2, b) in zip(steps, theirs):
                assert (e1, s1) == (e2, s2)
                np.testing.assert_array_equal(a, b)  # same samples inside the group
    for epoch in (0, 1):
        per_group = [np.concatenate([ids for e, _, ids in everyone[g * M_RANKS] if e == epoch])
                     for g in range(t.num_groups)]
        allids = np.concatenate(per_group)
        assert len(allids) == len(src) and len(set(allids.tolist())) == len(src)  # cover once, no repeats
    # a new epoch is a new order
    assert not np.array_equal(steps[0][2], steps[3][2])


def test_equal_step_counts_when_size_does_not_divide(ctx):
    t = ctx.topology
    n = B_PER_RANK * t.num_groups * 2 + 5  # remainder of 5 samples
    src = sources.SyntheticSource(num_examples=n, image_shape=(8, 8, 1))
    loader, sampler, _ = _loader(ctx, src)
    count = sum(1 for _ in loader)
    assert count == sampler.steps_per_epoch == 2
    assert len(set(_gather(ctx, count))) == 1


@pytest.mark.parametrize("mode", ["decoded", "encoded", "none"])
def test_broadcast_modes_deliver_what_the_reader_decoded(ctx, mode):
    src = sources.get_source("digits")
    loader, _, _ = _loader(ctx, src, mode=mode)
    for _, _, ids, labels, images in loader:
        for i, y, img in zip(ids, labels, images):
            np.testing.assert_array_equal(img, src.load(int(i)))  # bit-exact pixels
            assert y == src.label(int(i))
    # all three modes give the same ids on every rank of the group
    partial = _loader(ctx, src, mode=mode)[0]
    first = _gather(ctx, next(iter(partial))[2])
    assert partial.stop(timeout=30)  # abandoning a loader mid-epoch ends cleanly on every rank
    t = ctx.topology
    assert all(np.array_equal(first[r], first[t.reader_rank]) for r in t.group_ranks)


def _first_batch(ctx, seed=3):
    src = sources.get_source("digits")
    loader, _, spec = _loader(ctx, src, seed=seed)
    ds = pipeline.make_train_dataset(loader, spec, ctx.topology, 10, src.image_shape)
    x, y = next(iter(ds))
    assert loader.stop(timeout=30)
    return x.numpy(), y.numpy()


def test_augmentations_differ_across_ranks_and_copies_and_repeat(ctx):
    t = ctx.topology
    x, y = _first_batch(ctx)
    assert x.shape == (M_LOCAL * B_PER_RANK, 8, 8, 1)
    # copy-major: row c*b + i is copy c of unique sample i -> labels repeat per block
    np.testing.assert_array_equal(y[:B_PER_RANK], y[(M_LOCAL - 1) * B_PER_RANK:])
    for c in range(1, M_LOCAL):
        assert not np.array_equal(x[:B_PER_RANK], x[c * B_PER_RANK:(c + 1) * B_PER_RANK])
    xs, ys = _gather(ctx, x), _gather(ctx, y)
    for r in t.group_ranks:
        if r != t.rank:  # same samples, different augmentation seeds
            assert not np.array_equal(xs[r], x)
            np.testing.assert_array_equal(ys[r], y)
    x2, _ = _first_batch(ctx)
    np.testing.assert_array_equal(x, x2)  # reproducible from the seeds alone
