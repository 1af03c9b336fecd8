"""ba_dist.ba: the seed recipe (pinned: the random stream must never change) and BA as pure functions."""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as A
from ba_dist.seq import dropout

IMAGE = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)


def test_seed_recipe_is_pinned():
    # Values of the recipe as ba-train has used it since the first release: a
    # change here re-rolls every augmentation of every run (and of resumed ones).
    assert ba.copy_seeds(7, 3, 1, 42, 3).numpy().tolist() == [[1952431920, 0], [1952431920, 1], [1952431920, 2]]
    assert ba.copy_seeds(0, 0, 0, 0, 2).numpy().tolist() == [[-475428095, 0], [-475428095, 1]]
    assert ba.batch_seeds(7, 3, 1, [42, 43], 2).numpy().tolist() == [
        [[1952431920, 0], [1952431920, 1]], [[614060372, 0], [614060372, 1]]]
    assert ba.mixup_seed(11, tf.constant(2, tf.int64), tf.constant(5, tf.int64), 3).numpy().tolist() == [-2028418520, 3]
    assert ba.step_seed(3, 10, 1).numpy().tolist() == [2876923164685311201, 1]
    assert dropout.step_seed(3, 10, 1).numpy().tolist() == [2876923164685311201, 1]
    assert ba.analysis_seed(5, 17, 2).numpy().tolist() == [1160747022, 2]


def test_copies_are_pinned():
    y = ba.sample_copies(IMAGE, ba.copy_seeds(0, 0, 0, 7, 3), A.get_augment("cifar")).numpy()
    assert y.reshape(3, -1).sum(1).tolist() == [313960.0, 366456.0, 287663.0]
    assert y[:, 0, 0, 0].tolist() == [0.0, 90.0, 0.0] and y[:, 5, 5, 1].tolist() == [11.0, 54.0, 100.0]


def test_seeds_differ_by_every_part():
    base = ba.copy_seeds(1, 2, 3, 4, 2).numpy()
    assert not np.array_equal(base[0], base[1])                        # copy
    for other in (ba.copy_seeds(9, 2, 3, 4, 2), ba.copy_seeds(1, 9, 3, 4, 2), ba.copy_seeds(1, 2, 9, 4, 2),
                  ba.copy_seeds(1, 2, 3, 9, 2), ba.copy_seeds(1, ba.TTA_EPOCH, 3, 4, 2)):
        assert not np.array_equal(base, other.numpy())


def test_sample_copies_apply_the_op_per_seed():
    fn = A.get_augment("cifar_cutout")
    seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int64)
    out = ba.sample_copies(IMAGE, seeds, fn).numpy()
    assert out.shape == (4,) + IMAGE.shape
    for i in range(4):
        np.testing.assert_array_equal(out[i], fn(IMAGE, seeds[i]).numpy())
    assert not np.array_equal(out[0], out[1])
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        ba.sample_copies(IMAGE, tf.constant([1, 2]), fn)


def test_sample_copies_inside_tf_data_equal_eager():
    fn = A.get_augment("cifar")
    seeds = ba.copy_seeds(4, 1, 0, 3, 3)
    eager = ba.sample_copies(IMAGE, seeds, fn).numpy()
    ds = tf.data.Dataset.from_tensors(IMAGE).map(lambda x: ba.sample_copies(x, ba.copy_seeds(4, 1, 0, 3, 3), fn))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


def test_ba_batch_is_copy_major():
    b, m = 3, 2
    images = np.stack([IMAGE, 255 - IMAGE, IMAGE // 2])
    seeds = ba.batch_seeds(0, 0, 0, [10, 11, 12], m)
    fn = A.get_augment("cifar")
    x = ba.ba_batch(images, seeds, fn).numpy()
    assert x.shape == (m * b,) + IMAGE.shape
    for c in range(m):
        for i in range(b):  # row c*b + i is copy c of sample i
            np.testing.assert_array_equal(x[c * b + i], fn(images[i], seeds[i, c]).numpy())


def test_copy_major_and_repeat():
    x = tf.reshape(tf.range(6), [3, 2])                                  # [b=3, M=2]
    assert ba.copy_major(x).numpy().tolist() == [0, 2, 4, 1, 3, 5]
    assert ba.repeat(tf.constant([1, 2]), 3).numpy().tolist() == [1, 2, 1, 2, 1, 2]
    rows = np.array([[1, 2], [3, 4]])
    out = ba.repeat(rows, 2)
    assert isinstance(out, np.ndarray) and out.tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    assert ba.repeat(rows, 1) is rows
    with pytest.raises(ValueError, match="m_local"):
        ba.repeat(rows, 0)
