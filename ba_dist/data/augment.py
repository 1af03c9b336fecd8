"""Per-image augmentation ops for Batch Augmentation, all seeded explicitly.

Every op is a pure function ``fn(image, seed) -> image``:

* ``image`` is one ``[H, W, C]`` tensor, uint8 or float32, in 0..255 units;
  the result is float32 in the same units (normalize afterwards).
* ``seed`` is a shape ``[2]`` int32/int64 tensor. It feeds only stateless TF
  random ops, so an op gives the same pixels eagerly, inside
  ``tf.data.Dataset.map`` and on every Horovod rank. Batch Augmentation relies
  on this: the M copies of a sample differ only because their seeds differ.

Ops are built by small factories (big_vision ``pp`` style) and looked up by
name::

    aug = get_augment("cifar_cutout")             # or get_cifar_cutout()
    aug = get_augment("cifar|cutout(size=8)")     # chained from a string
    x = aug(image, seed)                          # [32, 32, 3] float32
    xs = ba.sample_copies(image, seeds, aug)      # ba_dist.ba; seeds [M, 2] -> [M, 32, 32, 3]

``mixup_batch`` is a batch-level op; apply it after the BA copies are made.
"""
from __future__ import annotations

import ast
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

__all__ = [
    "AugmentFn",
    "AUGMENTATIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_AREA_RANGE",
    "INCEPTION_ASPECT_RANGE",
    "LIGHT_AREA_RANGE",
    "chain",
    "decode_and_crop_imagenet",
    "get_alexnet",
    "get_augment",
    "get_cifar",
    "get_cifar_cutout",
    "get_cutout",
    "get_digits",
    "get_imagenet",
    "get_imagenet_eval",
    "get_imagenet_light",
    "get_none",
    "inception_crop_window",
    "mixup_batch",
    "normalize",
]

AugmentFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
Number = Union[int, float]

# Per-channel statistics in 0..255 units, because ops keep pixels in 0..255.
# CIFAR-10: the true per-pixel std over the training set (the often copied
# (0.2023, 0.1994, 0.2010) is a std of per-image means, not of pixels).
CIFAR10_MEAN = tuple(255.0 * v for v in (0.4914, 0.4822, 0.4465))
CIFAR10_STD = tuple(255.0 * v for v in (0.2470, 0.2435, 0.2616))
IMAGENET_MEAN = tuple(255.0 * v for v in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255.0 * v for v in (0.229, 0.224, 0.225))

# Szegedy et al. (2015) crop, as in the paper's appendix C.2.
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
# The MobileNet paper asks for "less aggressive" augmentation without giving
# numbers; raising the smallest crop from 8% to 35% of the image is our choice
# (small models underfit rather than overfit, so they want milder crops).
LIGHT_AREA_RANGE = (0.35, 1.0)


# ----------------------------------------------------------------------------
# Small helpers.
# ----------------------------------------------------------------------------
def _check_image(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            f"Augmentations take one [H, W, C] image, got shape {image.shape}; "
            "map them over a batch with tf.map_fn or copies().")
    return image


def _as_image(image: tf.Tensor) -> tf.Tensor:
    """Casts to float32 *without* rescaling (uint8 255 stays 255.0)."""
    return tf.cast(_check_image(image), tf.float32)


def _as_seed(seed: tf.Tensor) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            f"seed must be a shape [2] int32/int64 tensor, got {seed.dtype.name} "
            f"{seed.shape}.")
    return seed


def _split(seed: tf.Tensor, num: int):
    """Independent sub-seeds, so sub-ops of one op never share randomness."""
    return tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), num=num))


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_range(name: str, bounds: Sequence[float], low: float, high: float) -> None:
    if len(bounds) != 2 or not low < bounds[0] <= bounds[1] <= high:
        raise ValueError(
            f"{name} must be (min, max) with {low} < min <= max <= {high}, got {bounds!r}.")


def _pad_and_random_crop(image: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """Zero-pads each side, then crops back to the input size at a random offset."""
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    out = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    out.set_shape(image.shape)  # stateless_random_crop forgets static shapes
    return out


def _resize_shorter_side(image: tf.Tensor, target: int) -> tf.Tensor:
    """Bilinear resize keeping the aspect ratio, the shorter side becomes `target`."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = target / tf.reduce_min(hw)
    # max() guards against rounding the shorter side to target - 1.
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), target)
    return tf.image.resize(image, new_hw, method="bilinear")


def _resize_and_flip(crop: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    # Bilinear weights are convex, so uint8 input stays within 0..255.
    out = tf.image.resize(crop, [size, size], method="bilinear")
    return tf.image.stateless_random_flip_left_right(out, seed=seed)


# ----------------------------------------------------------------------------
# Op factories. Each validates its arguments once, at construction.
# ----------------------------------------------------------------------------
def get_none() -> AugmentFn:
    """Identity; only casts to float32 (for evaluation or M=1 ablations)."""
    def _none(image, seed):
        del seed
        return _as_image(image)
    return _none


def get_cifar(padding: int = 4) -> AugmentFn:
    """He et al. (2016) CIFAR augmentation: pad, random crop back to H x W, flip.

    With the default 4 px padding there are only 9 * 9 * 2 = 162 distinct
    outputs, which is why the paper adds Cutout for large M.

    Args:
        padding: zero pixels added on each side before cropping. Zeros are in
            raw pixel units (black), as the paper describes.

    Returns:
        An op ``fn(image, seed)``.
    """
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}.")

    def _cifar(image, seed):
        crop_seed, flip_seed = _split(seed, 2)
        out = _pad_and_random_crop(_as_image(image), crop_seed, padding)
        return tf.image.stateless_random_flip_left_right(out, seed=flip_seed)
    return _cifar


def get_cutout(size: int = 16, fill: Optional[Union[Number, Sequence[Number]]] = None) -> AugmentFn:
    """DeVries & Taylor (2017) Cutout: one `size` x `size` square set to `fill`.

    The centre is a uniform random pixel, so near a border the square is
    clipped (the original implementation does the same). The square is exactly
    `size` pixels wide for odd and even sizes alike.

    Args:
        size: side of the square in pixels (16 for CIFAR-10, 8 for CIFAR-100).
        fill: value of the masked pixels in 0..255 units, scalar or per channel.
            ``None`` (default): the dataset mean, ``CIFAR10_MEAN`` for 3-channel
            images and 0 for others (the digits, which are divided by 255). The
            reference code cuts out after normalization, i.e. sets the square to 0
            there; filling with the mean the pipeline normalises by
            (``input.normalize='cifar10'``, also used for CIFAR-100) gives exactly
            that. Until issue 14 the default was 0 (black): the random draws are
            unchanged, only the masked pixels' value is.

    Returns:
        An op ``fn(image, seed)``.
    """
    _check_positive_int("cutout size", size)

    def _cutout(image, seed):
        image = _as_image(image)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        seed_y, seed_x = _split(seed, 2)
        cy = tf.random.stateless_uniform([], seed_y, minval=0, maxval=h, dtype=tf.int32)
        cx = tf.random.stateless_uniform([], seed_x, minval=0, maxval=w, dtype=tf.int32)
        y0, x0 = cy - size // 2, cx - size // 2
        rows, cols = tf.range(h), tf.range(w)
        in_rows = (rows >= y0) & (rows < y0 + size)
        in_cols = (cols >= x0) & (cols < x0 + size)
        mask = (in_rows[:, None] & in_cols[None, :])[:, :, None]
        value = fill if fill is not None else (CIFAR10_MEAN if image.shape[-1] == 3 else 0.0)
        return tf.where(mask, tf.constant(value, tf.float32), image)
    return _cutout


def get_cifar_cutout(padding: int = 4, size: int = 16,
                     fill: Optional[Union[Number, Sequence[Number]]] = None) -> AugmentFn:
    """The paper's CIFAR regime (section 4.1): `get_cifar` then `get_cutout`."""
    return chain(get_cifar(padding), get_cutout(size, fill))


def inception_crop_window(
        image_shape: tf.Tensor, seed: tf.Tensor,
        area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
        aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE,
        max_attempts: int = 100) -> tf.Tensor:
    """Samples an Inception-style crop window, shared by both ImageNet paths.

    Args:
        image_shape: ``[H, W, C]`` int32 tensor (``tf.shape`` of a decoded image
            or ``tf.image.extract_jpeg_shape`` of the encoded one).
        seed: shape [2] int seed.
        area_range: crop area as a fraction of the image area.
        aspect_ratio_range: crop width / height.
        max_attempts: after this many rejected samples TF returns the whole
            image, which is the usual fallback for extreme aspect ratios.

    Returns:
        int32 ``[y, x, h, w]``, the ``crop_window`` of ``tf.image.decode_and_crop_jpeg``.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.zeros([1, 0, 4]),  # no boxes: the whole image is the object
        seed=_as_seed(seed),
        min_object_covered=0.0,  # area_range alone bounds the crop size
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], axis=0)


def get_imagenet(size: int = 224, area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
                 aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE
                 ) -> AugmentFn:
    """Inception crop (paper appendix C.2, ResNet-50): random crop, resize, flip.

    Accepts images of any size (decoded JPEGs differ); the output is always
    ``[size, size, C]``. No color jitter, as in the paper.

    Args:
        size: output side in pixels.
        area_range: crop area fraction, 8%..100% for ResNet-50.
        aspect_ratio_range: crop width / height, [3/4, 4/3].

    Returns:
        An op ``fn(image, seed)``.
    """
    _check_positive_int("size", size)
    _check_range("area_range", area_range, 0.0, 1.0)
    _check_range("aspect_ratio_range", aspect_ratio_range, 0.0, float("inf"))

    def _imagenet(image, seed):
        image = _check_image(image)
        crop_seed, flip_seed = _split(seed, 2)
        y, x, h, w = tf.unstack(inception_crop_window(
            tf.shape(image), crop_seed, area_range, aspect_ratio_range))
        crop = tf.slice(image, [y, x, 0], [h, w, -1])  # slice before casting: less work
        return _resize_and_flip(tf.cast(crop, tf.float32), size, flip_seed)
    return _imagenet


def get_imagenet_light(size: int = 224,
                       area_range: Tuple[float, float] = LIGHT_AREA_RANGE) -> AugmentFn:
    """MobileNet's "less aggressive" Inception crop: 35%..100% area by default."""
    return get_imagenet(size, area_range=area_range)


def get_alexnet(size: int = 224, resize: int = 256) -> AugmentFn:
    """Original AlexNet regime: shorter side to `resize`, random `size` crop, flip.

    The PCA "lighting" noise of Krizhevsky et al. (2012) is left out.
    """
    _check_positive_int("size", size)
    _check_positive_int("resize", resize)
    if size > resize:
        raise ValueError(f"crop size {size} is larger than the resized shorter side {resize}.")

    def _alexnet(image, seed):
        crop_seed, flip_seed = _split(seed, 2)
        image = _resize_shorter_side(_as_image(image), resize)
        crop = tf.image.stateless_random_crop(
            image, [size, size, tf.shape(image)[-1]], seed=crop_seed)
        crop.set_shape([size, size, image.shape[-1]])
        return tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)
    return _alexnet


def get_imagenet_eval(size: int = 224, crop_fraction: float = 0.875) -> AugmentFn:
    """Deterministic evaluation: shorter side to size / crop_fraction, centre crop.

    The seed is accepted (same signature as training ops) and ignored.
    """
    _check_positive_int("size", size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}.")
    resize = int(round(size / crop_fraction))  # 256 for 224

    def _imagenet_eval(image, seed):
        del seed
        image = _resize_shorter_side(_as_image(image), resize)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        out = tf.image.crop_to_bounding_box(image, (h - size) // 2, (w - size) // 2, size, size)
        out.set_shape([size, size, image.shape[-1]])
        return out
    return _imagenet_eval


def get_digits(max_shift: int = 1) -> AugmentFn:
    """UCI 8x8 digits: random translation by up to `max_shift` px, never flipped.

    Flips would turn some digits into others or into non-digits. Pixels keep
    their input range (0..16 for the UCI set).
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}.")

    def _digits(image, seed):
        return _pad_and_random_crop(_as_image(image), _as_seed(seed), max_shift)
    return _digits


AUGMENTATIONS: Dict[str, Callable[..., AugmentFn]] = {
    "none": get_none,
    "cifar": get_cifar,
    "cutout": get_cutout,
    "cifar_cutout": get_cifar_cutout,
    "imagenet": get_imagenet,
    "imagenet_light": get_imagenet_light,
    "alexnet": get_alexnet,
    "imagenet_eval": get_imagenet_eval,
    "digits": get_digits,
}


# ----------------------------------------------------------------------------
# Composition and lookup.
# ----------------------------------------------------------------------------
def chain(*fns: AugmentFn) -> AugmentFn:
    """Composes ops left to right; each gets its own sub-seed of the seed."""
    if not fns:
        raise ValueError("chain() needs at least one op.")

    def _chain(image, seed):
        for fn, sub_seed in zip(fns, _split(seed, len(fns))):
            image = fn(image, sub_seed)
        return image
    return _chain


def _parse_op(spec: str) -> Tuple[str, dict]:
    """Parses ``"name"`` or ``"name(key=literal, ...)"``."""
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"Cannot parse augmentation {spec!r}: {e.msg}.") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
            and all(kw.arg for kw in node.keywords)):
        try:
            return node.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            pass
    raise ValueError(
        f"Cannot parse augmentation {spec!r}; write name or name(key=literal, ...).")


def get_augment(name: str, **kwargs) -> AugmentFn:
    """Builds an op by name, e.g. ``get_augment("cutout", size=8)``.

    `name` may also chain ops big_vision style, ``"cifar|cutout(size=8)"``;
    then arguments go inside the string, not in `kwargs`.

    Raises:
        ValueError: unknown op (the message lists the known ones), unparsable
            string, or bad arguments.
    """
    if not isinstance(name, str):
        raise ValueError(f"Augmentation name must be a string, got {name!r}.")
    specs = [_parse_op(s) for s in name.split("|")]
    if len(specs) > 1 and kwargs:
        raise ValueError(
            f"Pass arguments inside the chain string, e.g. 'cifar|cutout(size=8)', "
            f"not as keywords {sorted(kwargs)} to get_augment({name!r}).")
    fns = []
    for op, op_kwargs in specs:
        if op not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {op!r}; known: {', '.join(sorted(AUGMENTATIONS))}.")
        try:
            fns.append(AUGMENTATIONS[op](**op_kwargs, **kwargs))
        except TypeError as e:  # unexpected keyword: make it a user-facing error
            raise ValueError(f"Bad arguments for augmentation {op!r}: {e}.") from None
    return fns[0] if len(fns) == 1 else chain(*fns)


# ----------------------------------------------------------------------------
# Decode path, normalization and batch-level ops.
# ----------------------------------------------------------------------------
def decode_and_crop_imagenet(
        jpeg_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224,
        area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
        aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE) -> tf.Tensor:
    """Inception crop that decodes only the crop window of a JPEG.

    The usual single-copy path (decode cost scales with the crop, not the
    image); the baseline that BA's decode-once-augment-M-times is compared to.
    Same seed splitting as ``get_imagenet``, so for the same seed it returns
    the same pixels as ``get_imagenet(size)(tf.io.decode_jpeg(b, channels=3), seed)``.

    Returns:
        float32 ``[size, size, 3]`` in 0..255 (grayscale/CMYK JPEGs become RGB).
    """
    _check_positive_int("size", size)
    crop_seed, flip_seed = _split(seed, 2)
    window = inception_crop_window(tf.image.extract_jpeg_shape(jpeg_bytes), crop_seed,
                                   area_range, aspect_ratio_range)
    crop = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
    return _resize_and_flip(_as_image(crop), size, flip_seed)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """Per-channel ``(image - mean) / std`` in float32; mean/std in 0..255 units."""
    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive per channel, got {tuple(std)}.")
    return (tf.cast(image, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(
        std, tf.float32)


def mixup_batch(images: tf.Tensor, labels_onehot: tf.Tensor, alpha: float, seed: tf.Tensor,
                indices: Optional[tf.Tensor] = None, lam: Optional[Number] = None
                ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al., 2018) of a whole batch, with explicit randomness.

    ``out = lam * x + (1 - lam) * x[indices]`` for images and one-hot labels.
    With BA, call it on the batch *after* the M copies are made, so copies of
    one sample get different partners (the paper uses alpha = 0.2, table 4).

    Args:
        images: ``[B, H, W, C]`` batch.
        labels_onehot: ``[B, K]`` one-hot (or already soft) labels.
        alpha: Beta(alpha, alpha) concentration, > 0.
        seed: shape [2] int seed; drives both lam and the pairing.
        indices: optional ``[B]`` pairing, to fix the randomness in tests.
        lam: optional mixing weight in [0, 1], likewise.

    Returns:
        ``(mixed_images, mixed_labels)``, both float32.
    """
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"mixup alpha must be a positive number, got {alpha!r}.")
    if isinstance(lam, (int, float)) and not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup lam must be in [0, 1], got {lam!r}.")
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels_onehot, tf.float32)
    perm_seed, lam_seed = _split(seed, 2)
    if indices is None:
        # argsort of iid uniforms is a uniform random permutation.
        indices = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], perm_seed))
    if lam is None:
        # Beta(a, a) = G1 / (G1 + G2) with G1, G2 ~ Gamma(a) independent.
        g = tf.random.stateless_gamma([2], lam_seed, alpha=alpha)
        total = g[0] + g[1]
        # For tiny alpha both draws can underflow to 0; Beta then sits at 0 or 1.
        lam = tf.where(total > 0, g[0] / tf.maximum(total, 1e-30), 1.0)
    lam = tf.cast(lam, tf.float32)
    mixed_images = lam * images + (1.0 - lam) * tf.gather(images, indices)
    mixed_labels = lam * labels + (1.0 - lam) * tf.gather(labels, indices)
    return mixed_images, mixed_labels
