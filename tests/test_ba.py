"""ba_dist.ba: the seed recipe (pinned: the random stream must never change) and BA as pure functions."""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as A
from ba_dist.seq import dropout

IMAGE = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)


def test_seed_recipe_is_pinned():
    # Values of the recipe: a change here re-rolls every augmentation of every run
    # (and of resumed ones). Issue 15 changed the copy part (stated in ba.py and
    # docs/batch_augmentation.md): one seed per sample, its copies are rows of one draw.
    assert ba.sample_seed(7, 3, 1, 42).numpy().tolist() == [8119826923979503111, 42]
    assert ba.sample_seed(0, 0, 0, 0).numpy().tolist() == [980649757699351484, 0]
    np.testing.assert_allclose(ba.copy_draws(7, 3, 1, 42, 2, 3).numpy(),
                               [[0.748022, 0.251407, 0.310787], [0.648266, 0.296992, 0.698454]], atol=1e-6)
    assert ba.mixup_seed(11, tf.constant(2, tf.int64), tf.constant(5, tf.int64), 3).numpy().tolist() == [-2028418520, 3]
    assert ba.step_seed(3, 10, 1).numpy().tolist() == [2876923164685311201, 1]
    assert dropout.step_seed(3, 10, 1).numpy().tolist() == [2876923164685311201, 1]
    assert ba.analysis_seed(5, 17, 2).numpy().tolist() == [1160747022, 2]


def test_copy_c_does_not_depend_on_the_number_of_copies():
    few, many = ba.copy_draws(1, 2, 3, 4, 2, 203).numpy(), ba.copy_draws(1, 2, 3, 4, 8, 203).numpy()
    np.testing.assert_array_equal(few, many[:2])
    # and op(image, seed) is copy 0 of a sample whose seed is `seed`
    op = A.get_augment("imagenet", size=32)
    np.testing.assert_array_equal(op(IMAGE, ba.sample_seed(1, 2, 3, 4)).numpy(),
                                  ba.sample_copies(IMAGE, many, op).numpy()[0])


def test_copies_are_pinned():
    op = A.get_augment("cifar")
    y = ba.sample_copies(IMAGE, ba.copy_draws(0, 0, 0, 7, 3, op.draws), op).numpy()
    assert y.reshape(3, -1).sum(1).tolist() == [345378.0, 334728.0, 350925.0]
    assert y[:, 0, 0, 0].tolist() == [0.0, 0.0, 0.0] and y[:, 5, 5, 1].tolist() == [208.0, 17.0, 84.0]


def test_draws_differ_by_every_part():
    base = ba.copy_draws(1, 2, 3, 4, 2, 5).numpy()
    assert not np.array_equal(base[0], base[1])                        # copy
    for other in (ba.copy_draws(9, 2, 3, 4, 2, 5), ba.copy_draws(1, 9, 3, 4, 2, 5), ba.copy_draws(1, 2, 9, 4, 2, 5),
                  ba.copy_draws(1, 2, 3, 9, 2, 5), ba.copy_draws(1, ba.TTA_EPOCH, 3, 4, 2, 5)):
        assert not np.array_equal(base, other.numpy())


def test_sample_copies_apply_the_op_per_row():
    op = A.get_augment("cifar_cutout")
    draws = ba.copy_draws(5, 0, 0, 1, 4, op.draws)
    out = ba.sample_copies(IMAGE, draws, op).numpy()
    assert out.shape == (4,) + IMAGE.shape
    for i in range(4):
        np.testing.assert_array_equal(out[i], op.batch(IMAGE[None], None, [0], draws[i:i + 1]).numpy()[0])
    assert not np.array_equal(out[0], out[1])
    with pytest.raises(ValueError, match="draws"):
        ba.sample_copies(IMAGE, tf.constant([0.5, 0.5]), op)


def test_sample_copies_inside_tf_data_equal_eager():
    op = A.get_augment("cifar")
    eager = ba.sample_copies(IMAGE, ba.copy_draws(4, 1, 0, 3, 3, op.draws), op).numpy()
    ds = tf.data.Dataset.from_tensors(IMAGE).map(
        lambda x: ba.sample_copies(x, ba.copy_draws(4, 1, 0, 3, 3, op.draws), op))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


@pytest.mark.parametrize("name", ["cifar", "digits", "cifar_cutout"])
def test_copies_of_a_batch_are_copy_major(name):
    b, m = 3, 2
    images = np.stack([IMAGE, 255 - IMAGE, IMAGE // 2])
    op = A.get_augment(name)
    draws = tf.stack([ba.copy_draws(0, 0, 0, i, m, op.draws) for i in (10, 11, 12)])
    x = ba.copies(images, None, draws, op).numpy()
    assert x.shape == (m * b,) + IMAGE.shape
    for i in range(b):  # row c*b + i is copy c of sample i
        one = ba.sample_copies(images[i], draws[i], op).numpy()
        for c in range(m):
            np.testing.assert_array_equal(x[c * b + i], one[c])


@pytest.mark.parametrize("name", ["imagenet", "alexnet", "imagenet_eval"])
def test_copies_of_zero_padded_images_of_different_sizes(name):
    """A padded batch gives, row for row, the copies of each image on its own (padding is never read)."""
    rng = np.random.default_rng(3)
    shapes = [(60, 80), (90, 50), (40, 40)]
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in shapes]
    padded = np.zeros((3, 90, 80, 3), np.uint8)
    for k, img in enumerate(images):
        padded[k, :img.shape[0], :img.shape[1]] = img
    op = A.get_augment(name, size=32) if name != "alexnet" else A.get_augment(name, size=32, resize=40)
    draws = tf.stack([ba.copy_draws(2, 0, 0, i, 3, op.draws) for i in range(3)])
    def fn():
        return ba.copies(padded, [list(s) for s in shapes], draws, op)
    x = fn().numpy()
    np.testing.assert_array_equal(x, tf.function(fn)().numpy())
    for i, img in enumerate(images):
        one = ba.sample_copies(img, draws[i], op).numpy()
        for c in range(3):
            np.testing.assert_array_equal(x[c * 3 + i], one[c])


def test_repeat_is_copy_major():
    assert ba.repeat(tf.constant([1, 2]), 3).numpy().tolist() == [1, 2, 1, 2, 1, 2]
    rows = np.array([[1, 2], [3, 4]])
    out = ba.repeat(rows, 2)
    assert isinstance(out, np.ndarray) and out.tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    assert ba.repeat(rows, 1) is rows
    with pytest.raises(ValueError, match="m_local"):
        ba.repeat(rows, 0)
