"""Tests for ba_dist.data.augment: determinism, tf.data parity and op semantics."""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist.data import augment as A

RNG = np.random.default_rng(0)
# Distinct random pixels, so a shifted or mirrored copy cannot match by accident.
IMAGE = RNG.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
SEEDS = [tf.constant([i, 17], tf.int64) for i in range(6)]
DETERMINISTIC = {"none", "imagenet_eval"}  # these ignore the seed


def _in_tf_data(fn, image, seed):
    ds = tf.data.Dataset.from_tensors((image, seed)).map(fn)
    return next(iter(ds)).numpy()


def _candidates(image, padding, flips):
    """All crops of the zero-padded image at the input size (and their mirrors)."""
    h, w = image.shape[:2]
    padded = np.pad(image.astype(np.float32), [(padding, padding), (padding, padding), (0, 0)])
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            if flips:
                yield (dy, dx, True), crop[:, ::-1]


def _match(out, image, padding, flips):
    matches = [key for key, c in _candidates(image, padding, flips) if np.array_equal(out, c)]
    assert matches, "output is not a (flipped) shift of the zero-padded input"
    return matches[0]


# --- Contract for every registered op ---------------------------------------
@pytest.mark.parametrize("name", sorted(A.AUGMENTATIONS))
def test_op_is_deterministic_seeded_and_same_in_tf_data(name):
    fn = A.get_augment(name)
    outs = [fn(IMAGE, s).numpy() for s in SEEDS]
    assert outs[0].dtype == np.float32
    np.testing.assert_array_equal(fn(IMAGE, SEEDS[0]).numpy(), outs[0])
    np.testing.assert_array_equal(_in_tf_data(fn, IMAGE, SEEDS[0]), outs[0])
    np.testing.assert_array_equal(_in_tf_data(fn, IMAGE, SEEDS[3]), outs[3])
    differs = any(not np.array_equal(outs[0], o) for o in outs[1:])
    assert differs == (name not in DETERMINISTIC)
    assert 0.0 <= outs[0].min() and outs[0].max() <= 255.0


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_int32_and_int64_seeds_accepted(dtype):
    out = A.get_augment("cifar_cutout")(IMAGE, tf.constant([3, 4], dtype))
    assert out.shape == IMAGE.shape


def test_bad_seed_and_bad_image_rank_raise():
    with pytest.raises(ValueError, match="seed"):
        A.get_augment("cifar")(IMAGE, tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="H, W, C"):
        A.get_augment("cifar")(IMAGE[None], SEEDS[0])


# --- CIFAR / cutout / digits ----------------------------------------------------
def test_cifar_is_a_shift_or_flip_of_padded_input():
    fn = A.get_augment("cifar")
    keys = {_match(fn(IMAGE, tf.constant([i, 1])).numpy(), IMAGE, 4, flips=True)
            for i in range(30)}
    assert len({k[:2] for k in keys}) > 5, "crop offsets barely vary"
    assert {k[2] for k in keys} == {False, True}, "flip never (or always) happens"


def test_cutout_zeroes_one_square():
    size = 5  # odd on purpose: the square must still be exactly size x size
    ones = np.ones((32, 32, 3), np.float32)
    fn = A.get_augment("cutout", size=size, fill=0.0)
    n_inside = 0
    for i in range(40):
        zero = fn(ones, tf.constant([i, 2])).numpy() == 0
        assert (zero == zero[:, :, :1]).all(), "mask differs between channels"
        ys, xs = np.nonzero(zero[:, :, 0])
        assert 0 < len(ys) <= size * size
        box = zero[ys.min():ys.max() + 1, xs.min():xs.max() + 1, 0]
        assert box.all(), "zeros are not one filled rectangle"
        inside = ys.min() > 0 and xs.min() > 0 and ys.max() < 31 and xs.max() < 31
        if inside:
            n_inside += 1
            assert box.shape == (size, size)
    assert n_inside > 10


def test_cutout_fills_the_dataset_mean_by_default():
    """Issue 14: the square is the CIFAR mean (0 after normalisation, as in the reference code)."""
    image = np.full((32, 32, 3), 200, np.uint8)
    for name in ("cutout", "cifar_cutout"):   # (cifar_cutout: after the crop's zero padding)
        out = A.get_augment(name)(image, SEEDS[1]).numpy()
        cut = (out != 200).any(-1) & (out != 0).any(-1)
        assert 0 < cut.sum() <= 16 * 16
        np.testing.assert_allclose(out[cut], np.broadcast_to(A.CIFAR10_MEAN, out[cut].shape), rtol=1e-6)
        normalised = A.normalize(out, A.CIFAR10_MEAN, A.CIFAR10_STD).numpy()
        np.testing.assert_allclose(normalised[cut], 0.0, atol=1e-5)
    # same draw as an explicit fill: only the value of the masked pixels changed
    explicit = A.get_cutout(fill=0.0)(image, SEEDS[1]).numpy()
    np.testing.assert_array_equal((explicit == 0).all(-1), (A.get_cutout()(image, SEEDS[1]).numpy() != 200).any(-1))
    grey = A.get_cutout(size=4)(np.full((8, 8, 1), 9, np.uint8), SEEDS[0]).numpy()   # digits: 0 (x / 255)
    assert grey.shape == (8, 8, 1) and (grey == 0).sum() > 0 and set(np.unique(grey)) <= {0.0, 9.0}


def test_cutout_fill_and_bad_size():
    out = A.get_cutout(size=32, fill=A.CIFAR10_MEAN)(np.zeros((8, 8, 3), np.uint8), SEEDS[0])
    np.testing.assert_allclose(out.numpy()[0, 0], A.CIFAR10_MEAN, rtol=1e-6)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="cutout size"):
            A.get_augment("cutout", size=bad)


def test_cifar_cutout_equals_chained_string():
    a = A.get_augment("cifar_cutout", size=8)
    b = A.get_augment("cifar|cutout(size=8)")
    c = A.chain(A.get_cifar(), A.get_cutout(8))
    for s in SEEDS[:3]:
        np.testing.assert_array_equal(a(IMAGE, s).numpy(), b(IMAGE, s).numpy())
        np.testing.assert_array_equal(a(IMAGE, s).numpy(), c(IMAGE, s).numpy())


def test_digits_translates_but_never_flips():
    digit = RNG.integers(0, 17, size=(8, 8, 1)).astype(np.float32)
    assert not np.array_equal(digit, digit[:, ::-1])
    fn = A.get_augment("digits")
    shifts = set()
    for i in range(50):
        out = fn(digit, tf.constant([i, 5])).numpy()
        assert out.shape == (8, 8, 1)
        mirrored = [c for _, c in _candidates(digit[:, ::-1], 1, flips=False)]
        assert not any(np.array_equal(out, c) for c in mirrored)
        shifts.add(_match(out, digit, 1, flips=False))
    assert len(shifts) > 3


# --- ImageNet ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["imagenet", "imagenet_light", "alexnet", "imagenet_eval"])
def test_imagenet_ops_take_variable_sizes(name):
    fn = A.get_augment(name)
    shapes = [(375, 500, 3), (200, 300, 3)]
    images = [RNG.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    ds = ds.map(lambda x: fn(x, tf.constant([7, 7])))
    for img, out in zip(images, ds):
        assert out.shape == (224, 224, 3)
        np.testing.assert_array_equal(out.numpy(), fn(img, tf.constant([7, 7])).numpy())


@pytest.mark.parametrize("area_range", [A.INCEPTION_AREA_RANGE, A.LIGHT_AREA_RANGE])
def test_inception_crop_window_area_and_aspect(area_range):
    shape = tf.constant([375, 500, 3])
    fracs = []
    for i in range(150):
        y, x, h, w = A.inception_crop_window(shape, tf.constant([i, 9]),
                                             area_range=area_range).numpy()
        assert y >= 0 and x >= 0 and y + h <= 375 and x + w <= 500
        frac = h * w / (375 * 500)
        # 2% slack: TF rounds the box to whole pixels.
        assert area_range[0] * 0.98 <= frac <= 1.0
        assert 0.75 * 0.98 <= w / h <= 4 / 3 * 1.02 or frac == 1.0  # full-image fallback
        fracs.append(frac)
    assert min(fracs) < area_range[0] + 0.1 and max(fracs) > 0.8, "range not explored"


def test_imagenet_crop_covers_allowed_area_on_coordinate_image():
    # Channel 0 holds the row index, channel 1 the column index, so the output's
    # value range reveals which part of the input was cropped.
    h, w = 300, 400
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)
    fn = A.get_augment("imagenet", size=64)
    for i in range(20):
        out = fn(coords, tf.constant([i, 3])).numpy()
        span_y = out[..., 0].max() - out[..., 0].min() + 1
        span_x = out[..., 1].max() - out[..., 1].min() + 1
        # Resizing with half-pixel centres shrinks the span a little; allow 10%.
        assert 0.08 * 0.9 <= span_y * span_x / (h * w) <= 1.0


def test_decode_and_crop_matches_imagenet_op():
    image = RNG.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    # Without chroma subsampling, decoding only the window gives the same pixels
    # as decoding everything and slicing (4:2:0 upsampling differs at window edges).
    jpeg = tf.io.encode_jpeg(image, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    fn = A.get_imagenet(size=96)
    for s in SEEDS[:3]:
        out = A.decode_and_crop_imagenet(jpeg, s, size=96)
        assert out.shape == (96, 96, 3) and out.dtype == tf.float32
        np.testing.assert_array_equal(out.numpy(), fn(decoded, s).numpy())


def test_imagenet_eval_is_a_centre_crop():
    image = RNG.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)  # shorter side already 256
    out = A.get_augment("imagenet_eval")(image, SEEDS[0]).numpy()
    np.testing.assert_array_equal(out, image[16:240, 48:272].astype(np.float32))


def test_imagenet_bad_arguments():
    with pytest.raises(ValueError, match="larger than"):
        A.get_augment("alexnet", size=300, resize=256)
    with pytest.raises(ValueError, match="area_range"):
        A.get_augment("imagenet", area_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="size"):
        A.get_augment("imagenet", size=0)


# --- Lookup, copies, normalize -----------------------------------------------
def test_get_augment_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="randaugment") as err:
        A.get_augment("randaugment")
    for known in A.AUGMENTATIONS:
        assert known in str(err.value)
    with pytest.raises(ValueError, match="bogus"):
        A.get_augment("cifar|bogus(size=3)")
    with pytest.raises(ValueError, match="Bad arguments"):
        A.get_augment("cifar", size=3)


def test_normalize_per_channel():
    out = A.normalize(np.full((2, 2, 3), 255, np.uint8), A.IMAGENET_MEAN, A.IMAGENET_STD)
    expected = (255 - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD)
    np.testing.assert_allclose(out.numpy()[1, 1], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        A.normalize(IMAGE, (0, 0, 0), (1, 0, 1))


# --- mixup -------------------------------------------------------------------
def test_mixup_with_given_indices_and_lam_is_exact():
    x = RNG.random((6, 4, 4, 3), dtype=np.float32)
    y = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    idx = np.array([5, 4, 3, 2, 1, 0])
    lam = np.float32(0.3)
    mx, my = A.mixup_batch(x, y, 0.2, SEEDS[0], indices=idx, lam=lam)
    np.testing.assert_array_equal(mx.numpy(), lam * x + (np.float32(1) - lam) * x[idx])
    np.testing.assert_array_equal(my.numpy(), lam * y + (np.float32(1) - lam) * y[idx])


def test_mixup_random_draws_are_seeded_and_valid():
    x = RNG.random((8, 4, 4, 3), dtype=np.float32)
    y = np.eye(8, dtype=np.float32)
    roll = np.roll(np.arange(8), 1)  # fixed pairing: row 0 mixes with row 7
    lams, perms = [], []
    for s in SEEDS:
        _, my = A.mixup_batch(x, y, 0.2, s, indices=roll)
        _, my2 = A.mixup_batch(x, y, 0.2, s, indices=roll)
        np.testing.assert_array_equal(my.numpy(), my2.numpy())
        lam = my.numpy()[0, 0]
        assert 0.0 <= lam <= 1.0
        lams.append(lam)
        # lam = 0 leaves only the partner: a permutation of the batch.
        mx, _ = A.mixup_batch(x, y, 0.2, s, lam=0.0)
        order = [int(np.flatnonzero((x == row).all(axis=(1, 2, 3)))[0]) for row in mx.numpy()]
        assert sorted(order) == list(range(8))
        perms.append(tuple(order))
    assert len(set(lams)) > 1 and len(set(perms)) > 1
    # Beta(0.2, 0.2) is U-shaped: most draws sit near 0 or 1.
    assert np.mean([min(l, 1 - l) < 0.2 for l in lams]) >= 0.5


def test_mixup_bad_alpha_or_lam():
    x, y = np.zeros((2, 2, 2, 1), np.float32), np.eye(2, dtype=np.float32)
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            A.mixup_batch(x, y, alpha, SEEDS[0])
    with pytest.raises(ValueError, match="lam"):
        A.mixup_batch(x, y, 0.2, SEEDS[0], lam=1.5)


# --- The batched Inception window sampler against TensorFlow's per-copy op -----------
def _tf_op_windows(hw, n, area_range, aspect_range):
    """n windows (y, x, h, w) from tf.image.stateless_sample_distorted_bounding_box, one call each."""
    out = []
    for i in range(n):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [hw[0], hw[1], 3], tf.zeros([1, 0, 4]), seed=[i, 77], min_object_covered=0.0,
            aspect_ratio_range=aspect_range, area_range=area_range, max_attempts=A.INCEPTION_ATTEMPTS,
            use_image_if_no_bounding_boxes=True)
        out.append([begin[0], begin[1], size[0], size[1]])
    return np.array(out, np.float64)


@pytest.mark.parametrize("hw,area_range", [((375, 500), A.INCEPTION_AREA_RANGE), ((375, 500), A.LIGHT_AREA_RANGE),
                                           ((40, 600), A.INCEPTION_AREA_RANGE)])  # the last: many fallbacks
def test_batched_windows_have_the_distribution_of_tensorflows_op(hw, area_range):
    from scipy import stats
    n = 2000
    ours = A.inception_windows(tf.tile([list(hw)], [n, 1]),
                               tf.random.stateless_uniform([n, 2 * A.INCEPTION_ATTEMPTS + 2], [5, 5]),
                               area_range, A.INCEPTION_ASPECT_RANGE).numpy().astype(np.float64)
    theirs = _tf_op_windows(hw, n, area_range, A.INCEPTION_ASPECT_RANGE)
    big_h, big_w = hw
    for win in (ours, theirs):
        y, x, h, w = win.T
        assert (y >= 0).all() and (x >= 0).all() and (y + h <= big_h).all() and (x + w <= big_w).all()

    def features(win):
        y, x, h, w = win.T
        return {"area": h * w / (big_h * big_w), "aspect": w / h,
                "centre y": (y + h / 2) / big_h, "centre x": (x + w / 2) / big_w}
    for (name, a), b in zip(features(ours).items(), features(theirs).values()):
        # fixed seeds: the outcome is the same on every run; p < 1e-3 would mean another distribution
        assert stats.ks_2samp(a, b).pvalue > 1e-3, (name, stats.ks_2samp(a, b))
    full = [np.mean((win[:, 2] == big_h) & (win[:, 3] == big_w)) for win in (ours, theirs)]
    assert abs(full[0] - full[1]) < 0.03, full  # the whole-image fallback as often


def test_batched_copies_are_deterministic_per_seed_and_in_graph():
    from ba_dist import ba
    op = A.get_augment("imagenet", size=48)
    images = np.stack([IMAGE, IMAGE[::-1]])
    draws = tf.stack([ba.copy_draws(3, 1, 0, i, 4, op.draws) for i in range(2)])
    eager = ba.copies(images, None, draws, op).numpy()
    np.testing.assert_array_equal(eager, ba.copies(images, None, draws, op).numpy())
    np.testing.assert_array_equal(eager, tf.function(lambda: ba.copies(images, None, draws, op))().numpy())
    assert len({eager[k].tobytes() for k in range(8)}) == 8   # every copy its own transform


@pytest.mark.parametrize("channels", [3, 1])
def test_host_kernel_makes_the_same_crops_as_the_tensorflow_ops(channels):
    """host=True (tf.data) resizes with OpenCV: same windows and flips, pixels within one level."""
    from ba_dist import ba
    op = A.get_augment("imagenet", size=40)
    rng = np.random.default_rng(3)
    shapes = [(50, 70), (64, 48), (33, 90)]  # ragged: zero-padded into one batch
    padded = np.zeros((3, 64, 90, channels), np.uint8)
    for k, (h, w) in enumerate(shapes):
        padded[k, :h, :w] = rng.integers(0, 256, (h, w, channels))
    sizes = [list(s) for s in shapes]
    draws = tf.stack([ba.copy_draws(5, 0, 0, i, 8, op.draws) for i in range(3)])
    device = ba.copies(padded, sizes, draws, op).numpy()
    host = ba.copies(padded, sizes, draws, op, host=True).numpy()
    assert host.shape == device.shape == (24, 40, 40, channels) and host.dtype == np.float32
    assert np.abs(host - device).max() <= 1.0
    assert np.array_equal(host, np.round(host))  # whole 0..255 levels
    assert (np.abs(host - device).mean(axis=(1, 2, 3)) < 0.5).all()  # every row: the same crop, not a neighbour
    flips = (tf.reshape(tf.transpose(draws, [1, 0, 2]), [-1, op.draws])[:, -1] < 0.5).numpy()
    assert 0 < flips.sum() < len(flips)  # mirrored and plain rows both compared
    graph = tf.function(lambda: ba.copies(padded, sizes, draws, op, host=True))().numpy()
    np.testing.assert_array_equal(host, graph)  # deterministic, eager = graph


def test_host_flag_keeps_tensorflow_ops_where_there_is_no_host_kernel():
    from ba_dist import ba
    images = np.stack([IMAGE, IMAGE[::-1]])
    for name in ("cifar", "imagenet_eval"):
        op = A.get_augment(name)
        draws = tf.stack([ba.copy_draws(3, 1, 0, i, 2, op.draws) for i in range(2)])
        np.testing.assert_array_equal(ba.copies(images, None, draws, op).numpy(),
                                      ba.copies(images, None, draws, op, host=True).numpy())
    op = A.get_augment("imagenet(size=32)|cutout(size=8)")  # a chain: its imagenet part on the host
    draws = tf.stack([ba.copy_draws(3, 1, 0, i, 2, op.draws) for i in range(2)])
    host = ba.copies(images, None, draws, op, host=True).numpy()
    assert np.abs(host - ba.copies(images, None, draws, op).numpy()).max() <= 1.0
    floats = images.astype(np.float32)  # float images: TensorFlow ops (the host kernel is uint8)
    np.testing.assert_array_equal(ba.copies(floats, None, draws, op, host=True).numpy(),
                                  ba.copies(floats, None, draws, op).numpy())
