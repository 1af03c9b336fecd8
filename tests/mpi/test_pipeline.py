"""BA input pipeline under real mpirun: every rank runs this file at once.

Expected values are derived from rank, size and BA_DIST_TEST_M_RANKS /
BA_DIST_TEST_M_LOCAL (set by tests/test_multirank.py).
"""
import os

import numpy as np
import pytest

from ba_dist import dist
from ba_dist.data import loader as data_loader
from ba_dist.data import sources
from ba_dist.data.arrays import SyntheticSource
from ba_dist.data.batching import make_train_dataset
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
    spec = data_loader.PipelineSpec(per_rank_unique=B_PER_RANK, m_local=M_LOCAL, augment="digits",
                                 broadcast=mode, seed=seed, **kw)
    return data_loader.GroupLoader(src, sampler, spec, t,
                                num_steps=n_epochs * sampler.steps_per_epoch), sampler, spec


def _gather(ctx, obj):
    return ctx.world_comm.allgather(obj)


def test_same_ids_in_group_disjoint_across_groups_full_coverage(ctx):
    t = ctx.topology
    # 24 * size samples: divisible by groups * b, so one epoch covers everything once
    src = SyntheticSource(num_examples=B_PER_RANK * t.num_groups * 3, image_shape=(8, 8, 1))
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
    src = SyntheticSource(num_examples=n, image_shape=(8, 8, 1))
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
    ds = make_train_dataset(loader, spec, ctx.topology, 10, src.image_shape)
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


# ---- corrupt files in the middle of a folder and of a TFRecord shard ----------

N_CLASSES, PER_CLASS = 2, 8


@pytest.fixture(scope="module")
def damaged_data(ctx, tmp_path_factory):
    """Rank 0 writes a small JPEG folder and TFRecord shards, both with damage."""
    root = None
    if ctx.rank == 0:
        from PIL import Image

        from ba_dist.data import tfrecord
        from ba_dist.data.make_tfrecords import write_shards
        root = tmp_path_factory.mktemp("damaged")
        rng = np.random.default_rng(0)
        for c in range(N_CLASSES):
            d = root / "folder" / "train" / f"class{c}"
            d.mkdir(parents=True)
            for k in range(PER_CLASS):
                Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / f"img{k}.jpg", quality=90)
        write_shards(str(root / "folder"), str(root / "shards"), split="train", num_shards=2, log=None)
        # damage after the shards were written: a truncated JPEG and a text file in the folder
        good = (root / "folder/train/class0/img3.jpg").read_bytes()
        (root / "folder/train/class0/img3.jpg").write_bytes(good[: len(good) // 2])
        (root / "folder/train/class1/img5.jpg").write_text("not an image at all")
        # one flipped byte in the middle of the 3rd record of the first shard
        shard = sorted((root / "shards").glob("train-*"))[0]  # not the index/ folder
        offsets, lengths, _ = tfrecord.scan_tfrecord(str(shard))
        raw = bytearray(shard.read_bytes())
        raw[int(offsets[2] + lengths[2] // 2)] ^= 0xFF
        shard.write_bytes(bytes(raw))
    return ctx.world_comm.bcast(str(root) if root else None, root=0)


def _run_all(loader):
    return [(ids.copy(), labels.copy(), list(items)) for _, _, ids, labels, items in loader]


@pytest.mark.parametrize("kind", ["folder", "tfrecord"])
def test_corrupt_samples_skipped_in_lockstep(ctx, damaged_data, kind):
    t = ctx.topology
    extra = {} if kind == "folder" else {"num_classes": N_CLASSES}
    src = sources.get_source(kind, split="train", data_dir=f"{damaged_data}/{'folder' if kind == 'folder' else 'shards'}",
                             **extra)
    sampler = GroupSampler(len(src), t.num_groups, 4, seed=1)
    spec = data_loader.PipelineSpec(per_rank_unique=4, m_local=M_LOCAL, broadcast="decoded", on_corrupt="skip", seed=1)
    loader = data_loader.GroupLoader(src, sampler, spec, t, num_steps=sampler.steps_per_epoch)
    steps = _run_all(loader)
    everyone = _gather(ctx, (steps, loader.skipped))
    for r in t.group_ranks:  # identical substituted ids and counts inside the group
        assert len(everyone[r][0]) == len(steps) == sampler.steps_per_epoch
        for (a, _, _), (b, _, _) in zip(steps, everyone[r][0]):
            np.testing.assert_array_equal(a, b)
        assert everyone[r][1] == loader.skipped
    bad = {i for i in range(len(src)) if _is_bad(src, i)}
    # no corrupt sample reached training: its slot (which keeps its id, for its own
    # augmentation seeds) carries the image of another slot of the step
    for ids, _, items in steps:
        for k in [k for k, i in enumerate(ids) if i in bad]:
            assert any(np.array_equal(items[k], items[j]) for j in range(len(ids)) if ids[j] not in bad)
    assert sum(everyone[g * M_RANKS][1] for g in range(t.num_groups)) == len(bad & set(
        np.concatenate([sampler.epoch_ids(0, g).ravel() for g in range(t.num_groups)]).tolist()))
    assert len(bad) == 2 if kind == "folder" else len(bad) == 1


def _is_bad(src, i):
    try:
        src.load(i)
        return False
    except sources.CorruptSampleError:
        return True


def test_corrupt_sample_error_policy_names_the_file(ctx, damaged_data):
    t = ctx.topology
    src = sources.get_source("folder", split="train", data_dir=f"{damaged_data}/folder")
    # one step covers the whole folder: each group gets half of it
    sampler = GroupSampler(len(src), t.num_groups, len(src) // t.num_groups, seed=1)
    spec = data_loader.PipelineSpec(per_rank_unique=len(src) // t.num_groups, broadcast="decoded",
                                 on_corrupt="error", seed=1)
    loader = data_loader.GroupLoader(src, sampler, spec, t, num_steps=1)
    mine = {src.describe(int(i)) for i in sampler.epoch_ids(0, t.group_id)[0]}
    damaged = {w for w in mine if w.endswith(("class0/img3.jpg", "class1/img5.jpg"))}
    if damaged:  # every rank of the group stops, naming the reader's file
        with pytest.raises(data_loader.DataError, match="|".join(sorted(p.split("/")[-1] for p in damaged))):
            _run_all(loader)
    else:
        assert len(_run_all(loader)) == 1


def test_decoded_broadcast_is_one_bcast_of_the_buffer_the_reader_decoded_into(ctx, damaged_data):
    """No packing pass: the one buffer Bcast per step is the memory the reader's images
    live in (a substitute's slot shares its source's bytes), the other ranks' images are
    views into the buffer they received, and every rank of the group has the same pixels."""
    t = ctx.topology
    src = sources.get_source("folder", split="train", data_dir=f"{damaged_data}/folder")
    sampler = GroupSampler(len(src), t.num_groups, 4, seed=1)
    spec = data_loader.PipelineSpec(per_rank_unique=4, broadcast="decoded", on_corrupt="skip", seed=1)
    loader = data_loader.GroupLoader(src, sampler, spec, t, num_steps=sampler.steps_per_epoch)
    sent, bcast = [], loader.channel.bcast  # the real channel, its buffers recorded

    def recording_bcast(buffer):
        sent.append(buffer)
        bcast(buffer)
    loader.channel.bcast = recording_bcast
    steps = _run_all(loader)
    # one Bcast per step, plus the 16-byte opening announcement
    assert len(sent) == len(steps) + 1 and sent[0].nbytes == 16
    bad = {i for i in range(len(src)) if _is_bad(src, i)}
    for (ids, _, items), buf in zip(steps, sent[1:]):
        assert all(np.shares_memory(img, buf) for img in items)
        # the int64 header, then each good sample's pixels once (a substitute adds none)
        pixels = sum(img.nbytes for i, img in zip(ids, items) if i not in bad)
        assert buf.nbytes == 8 * (6 + 6 * len(ids)) + pixels
    substituted = 0
    for ids, _, items in steps:
        for k, i in enumerate(ids):
            if i in bad:  # its slot carries another slot's bytes, not a copy of them
                assert any(np.shares_memory(items[k], items[j]) for j in range(len(ids)) if j != k)
                substituted += 1
            else:
                np.testing.assert_array_equal(items[k], src.load(int(i)))  # bit-exact
    everyone = _gather(ctx, (steps, substituted))
    for r in t.group_ranks:
        assert len(everyone[r][0]) == len(steps)
        for (a_ids, a_labels, a_items), (b_ids, b_labels, b_items) in zip(steps, everyone[r][0]):
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_labels, b_labels)
            for x, y in zip(a_items, b_items):
                np.testing.assert_array_equal(x, y)
    assert sum(everyone[g * M_RANKS][1] for g in range(t.num_groups)) == len(bad) == 2  # the test saw substitutes
