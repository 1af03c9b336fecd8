"""ba_dataset on one rank: label formats kept, float images scaled, bad input refused by name."""
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import ba_dist.keras as ba

DIGITS = load_digits()
UINT8 = np.minimum(DIGITS.images * 16, 255).astype(np.uint8)[..., None]


def _first_batch(images, labels, **kwargs):
    data = ba.ba_dataset(tf.data.Dataset.from_tensor_slices((images, labels)), "none", per_rank_unique=8,
                         seed=1, **kwargs)
    x, y, ids = next(iter(data.audit))
    data.stop()
    return x.numpy(), y.numpy(), ids.numpy()


def test_integer_labels_stay_integer():
    ba.init()
    x, y, ids = _first_batch(UINT8, DIGITS.target)
    assert y.dtype == np.int64 and y.shape == (8,)
    np.testing.assert_array_equal(y, DIGITS.target[ids])


def test_onehot_labels_stay_onehot_and_mixup_makes_onehot():
    ba.init()
    onehot = np.eye(10, dtype=np.float32)[DIGITS.target]
    _, y, ids = _first_batch(UINT8, onehot)
    np.testing.assert_array_equal(y, onehot[ids])
    _, y, _ = _first_batch(UINT8, DIGITS.target, num_classes=10, mixup_alpha=0.2)
    assert y.shape == (8, 10) and np.allclose(y.sum(1), 1.0)


def test_float_images_in_unit_range_match_uint8():
    ba.init()
    floats = (UINT8 / 255.0).astype(np.float32)
    x_float, _, _ = _first_batch(floats, DIGITS.target)
    x_uint8, _, _ = _first_batch(UINT8, DIGITS.target)
    np.testing.assert_allclose(x_float, x_uint8, atol=1e-6)  # same model input: x / 255 in [0, 1]
    assert x_float.max() > 0.9


@pytest.mark.parametrize("images,match", [
    (UINT8.astype(np.float32), r"float images must be in \[0, 1\].*\[0, 255\]"),   # forgot / 255
    (UINT8.astype(np.int32), r"images of dtype int32 are not accepted"),
])
def test_bad_images_are_refused_by_name(images, match):
    ba.init()
    with pytest.raises(ValueError, match=match):
        _first_batch(images, DIGITS.target)


def test_soft_labels_are_refused():
    ba.init()
    soft = np.full((len(UINT8), 10), 0.1, np.float32)
    with pytest.raises(ValueError, match="is not one-hot"):
        _first_batch(UINT8, soft)
