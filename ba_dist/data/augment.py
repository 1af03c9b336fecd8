"""Augmentation ops for Batch Augmentation: batched, uint8 in, all randomness passed in.

An op is an :class:`Augment`. Its one implementation is batched: ``op.batch(images,
sizes, index, u)`` makes ``N`` augmented copies (rows) from ``b`` unique images in one
call, row ``n`` from image ``index[n]`` with the uniform draws ``u[n]``:

* ``images`` ``[b, H, W, C]``, uint8 (or float32) in 0..255 units; images of
  different sizes come zero-padded to one ``H x W`` with their true ``sizes``
  ``[b, 2]`` (a ``padded_batch``), so each unique image is one slice of one
  tensor that crosses to the device once (``ba_dist.ba.copies``);
* ``u`` ``[N, op.draws]`` float32 uniforms in [0, 1): the op's only randomness.
  ``ba_dist.ba`` draws them from the one seed recipe (a stateless seed per
  sample, row ``c`` for copy ``c``), so copies are the same eagerly, in
  ``tf.data`` and on every rank;
* the result is float32 ``[N, H', W', C]`` in 0..255 units (normalize afterwards).

``op(image, seed)`` is the same op on one ``[H, W, C]`` image: row 0 of the draws of
``seed`` (``tf.random.stateless_uniform([1, op.draws], seed)``), so a single copy
and copy 0 of a batch with the same seed are the same pixels.

Ops are built by small factories (big_vision ``pp`` style) and looked up by name::

    aug = get_augment("cifar_cutout")             # or get_cifar_cutout()
    aug = get_augment("cifar|cutout(size=8)")     # chained from a string
    x = aug(image, seed)                          # [32, 32, 3] float32
    xs = aug.batch(images, sizes, index, u)       # [N, 32, 32, 3]; see ba_dist.ba.copies

What is vectorised: the Inception crop windows of all rows (TensorFlow's
``sample_distorted_bounding_box`` algorithm over ``[N, attempts]`` at once), the
CIFAR/digits pad-crop and flip (one gather over all rows) and Cutout (one mask).
The ImageNet crop + resize is one slice (mirrored on uint8 if flipped) and one
bilinear resize per row: on CPU, ``tf.image.crop_and_resize`` over all boxes
was measured 3-4x slower than that (docs/performance.md). Where the rows are
made on the host (``op.batch(..., host=True)``: ba-train's tf.data), the
Inception crop's slice + flip + resize of every row is one ``tf.numpy_function``
call running OpenCV's SIMD bilinear kernel on uint8, about a third of the cost
of TensorFlow's CPU kernel; same windows and flips, pixels within one level.

``mixup_batch`` is a batch-level op; apply it after the BA copies are made.
Until issue 15 every op drew from stateless TF ops per copy (a crop-window op,
a flip op, ...); the draws, and so the transform a given seed gives, changed
then (the distributions did not: tests/test_augment.py checks them).
"""
from __future__ import annotations

import ast
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

__all__ = [
    "Augment",
    "AugmentFn",
    "AUGMENTATIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_AREA_RANGE",
    "INCEPTION_ASPECT_RANGE",
    "INCEPTION_ATTEMPTS",
    "LIGHT_AREA_RANGE",
    "as_augment",
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
    "inception_windows",
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
# Rejected windows before the whole image is taken: TensorFlow's default and the
# ImageNet input pipelines' (TF-models, TPU); with 8-100% area it is almost never reached.
INCEPTION_ATTEMPTS = 100
# The MobileNet paper asks for "less aggressive" augmentation without giving
# numbers; raising the smallest crop from 8% to 35% of the image is our choice
# (small models underfit rather than overfit, so they want milder crops).
LIGHT_AREA_RANGE = (0.35, 1.0)


# ----------------------------------------------------------------------------
# The op type and small helpers.
# ----------------------------------------------------------------------------
# batch_fn(images [b, H, W, C], sizes [b, 2] int32, index [N] int32 or None
# (None: row n is image n), u [N, draws]) -> float32 [N, H', W', C]
BatchFn = Callable[[tf.Tensor, tf.Tensor, Optional[tf.Tensor], tf.Tensor], tf.Tensor]


class Augment:
    """One augmentation op: ``op.batch(images, sizes, index, u)`` and ``op(image, seed)``.

    Attributes:
        name: the op's name (as in :data:`AUGMENTATIONS`, or ``"a|b"`` for a chain).
        draws: how many uniforms in [0, 1) one copy consumes (columns of ``u``).
    """

    def __init__(self, name: str, draws: int, batch_fn: BatchFn, host_fn: Optional[BatchFn] = None):
        self.name, self.draws, self._batch_fn, self._host_fn = name, int(draws), batch_fn, host_fn

    def __repr__(self) -> str:
        return f"Augment({self.name!r}, draws={self.draws})"

    def batch(self, images, sizes, index, u, host: bool = False) -> tf.Tensor:
        """``N`` copies, row ``n`` = this op on image ``index[n]`` with draws ``u[n]``.

        Args:
            images: ``[b, H, W, C]`` uint8 or float32 in 0..255 (zero-padded when
                the images differ in size).
            sizes: ``[b, 2]`` int true ``(height, width)`` of each image, or None
                when every image fills ``H x W``.
            index: ``[N]`` int, which image each row is made from; None: ``N = b``,
                row ``n`` from image ``n``.
            u: ``[N, draws]`` uniforms in [0, 1).
            host: the rows are made on the host CPU (in ``tf.data``): an op with a
                host kernel uses it for uint8 images (the Inception crops:
                OpenCV's bilinear resize, rounded to whole 0..255 levels). False
                (default): TensorFlow ops only, which run on any device.

        Returns:
            float32 ``[N, H', W', C]`` in 0..255 units.
        """
        images = tf.convert_to_tensor(images)
        if images.shape.rank is not None and images.shape.rank != 4:
            raise ValueError(f"{self.name}.batch takes [b, H, W, C] images, got shape {images.shape}.")
        if sizes is None:
            sizes = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
        index = None if index is None else tf.cast(index, tf.int32)
        u = tf.convert_to_tensor(u, tf.float32)
        if u.shape.rank is not None and (u.shape.rank != 2 or u.shape[1] not in (None, self.draws)):
            raise ValueError(f"{self.name} needs draws of shape [N, {self.draws}], got {u.shape}.")
        fn = self._host_fn if host and self._host_fn is not None and images.dtype == tf.uint8 else self._batch_fn
        return fn(images, tf.cast(sizes, tf.int32), index, u)

    def __call__(self, image, seed) -> tf.Tensor:
        """One copy of one ``[H, W, C]`` image: row 0 of the draws of ``seed``."""
        image = _check_image(image)
        u = draws(seed, 1, self.draws)
        return self.batch(image[None], None, None, u)[0]


def draws(seed: tf.Tensor, rows: int, k: int) -> tf.Tensor:
    """``float32 [rows, k]`` uniforms in [0, 1) of a shape ``[2]`` stateless seed (row c: copy c)."""
    return tf.random.stateless_uniform([rows, k], _as_seed(seed), dtype=tf.float32)


def _check_image(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            f"Augmentations take one [H, W, C] image, got shape {image.shape}; "
            "for a batch use op.batch() or ba_dist.ba.copies().")
    return image


def _as_seed(seed: tf.Tensor) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            f"seed must be a shape [2] int32/int64 tensor, got {seed.dtype.name} "
            f"{seed.shape}.")
    return seed


def _split(seed: tf.Tensor, num: int):
    """Independent sub-seeds (mixup's pairing and weight)."""
    return tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), num=num))


def _take(x: tf.Tensor, index: Optional[tf.Tensor]) -> tf.Tensor:
    return x if index is None else tf.gather(x, index)


def _num_rows(images: tf.Tensor, index: Optional[tf.Tensor]):
    """N, static (an int) when known, so per-row work unrolls without a loop in the graph."""
    n = images.shape[0] if index is None else index.shape[0]
    return n if n is not None else tf.shape(images if index is None else index)[0]


def _per_row(fn: Callable, n) -> tf.Tensor:
    """``fn(row)`` for every row, stacked: unrolled for a static N, else a ``map_fn``."""
    if isinstance(n, int):
        return tf.stack([fn(k) for k in range(n)])
    return tf.map_fn(fn, tf.range(n), fn_output_signature=tf.float32)


def _image_at(images: tf.Tensor, sizes: tf.Tensor, i) -> tf.Tensor:
    """Image ``i`` without its zero padding."""
    return tf.slice(images, tf.stack([i, 0, 0, 0]), tf.concat([[1], sizes[i], [-1]], 0))[0]


def _uniform_int(u: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """``floor(u * n)`` as int32 in ``[0, n)`` (``u`` in [0, 1), ``n`` >= 1)."""
    n = tf.cast(n, tf.int32)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float32)), tf.int32), n - 1)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_range(name: str, bounds: Sequence[float], low: float, high: float) -> None:
    if len(bounds) != 2 or not low < bounds[0] <= bounds[1] <= high:
        raise ValueError(
            f"{name} must be (min, max) with {low} < min <= max <= {high}, got {bounds!r}.")


def _shift_crop(images: tf.Tensor, index: Optional[tf.Tensor], u_y: tf.Tensor, u_x: tf.Tensor,
                padding: int, flip: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Zero-pads each side by ``padding``, crops back to ``H x W`` at offsets
    ``floor(u * (2 padding + 1))`` and mirrors the rows where ``flip``: every row in one gather."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])  # the b unique images
    oy, ox = _uniform_int(u_y, 2 * padding + 1), _uniform_int(u_x, 2 * padding + 1)
    n = tf.shape(u_y)[0]
    rows = oy[:, None] + tf.range(h)[None, :]                                  # [N, h]
    cols = tf.range(w)[None, :]
    if flip is not None:
        cols = tf.where(flip[:, None], w - 1 - cols, cols)
    cols = ox[:, None] + cols                                                  # [N, w]
    src = tf.range(n) if index is None else index
    at = tf.stack([tf.broadcast_to(src[:, None, None], [n, h, w]),
                   tf.broadcast_to(rows[:, :, None], [n, h, w]),
                   tf.broadcast_to(cols[:, None, :], [n, h, w])], axis=-1)
    out = tf.cast(tf.gather_nd(padded, at), tf.float32)
    return tf.ensure_shape(out, [None] + images.shape[1:].as_list())


def _resize_shorter_side(image: tf.Tensor, target: int) -> tf.Tensor:
    """Bilinear resize keeping the aspect ratio, the shorter side becomes `target`."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = target / tf.reduce_min(hw)
    # max() guards against rounding the shorter side to target - 1.
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), target)
    return tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear")


# ----------------------------------------------------------------------------
# Op factories. Each validates its arguments once, at construction.
# ----------------------------------------------------------------------------
def get_none() -> Augment:
    """Identity; only casts to float32 (for evaluation or M=1 ablations)."""
    return Augment("none", 0, lambda images, sizes, index, u: tf.cast(_take(images, index), tf.float32))


def get_cifar(padding: int = 4) -> Augment:
    """He et al. (2016) CIFAR augmentation: pad, random crop back to H x W, flip.

    With the default 4 px padding there are only 9 * 9 * 2 = 162 distinct
    outputs, which is why the paper adds Cutout for large M. Draws: row
    offset, column offset, flip (each uniform).

    Args:
        padding: zero pixels added on each side before cropping. Zeros are in
            raw pixel units (black), as the paper describes.
    """
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}.")

    def _cifar(images, sizes, index, u):
        return _shift_crop(images, index, u[:, 0], u[:, 1], padding, flip=u[:, 2] < 0.5)
    return Augment("cifar", 3, _cifar)


def get_cutout(size: int = 16, fill: Optional[Union[Number, Sequence[Number]]] = None) -> Augment:
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
            that. Until issue 14 the default was 0 (black).
    """
    _check_positive_int("cutout size", size)

    def _cutout(images, sizes, index, u):
        x = tf.cast(_take(images, index), tf.float32)
        hw = _take(sizes, index)
        cy, cx = _uniform_int(u[:, 0], hw[:, 0]), _uniform_int(u[:, 1], hw[:, 1])
        y0, x0 = (cy - size // 2)[:, None], (cx - size // 2)[:, None]
        rows, cols = tf.range(tf.shape(x)[1])[None, :], tf.range(tf.shape(x)[2])[None, :]
        in_rows = (rows >= y0) & (rows < y0 + size)                            # [N, H]
        in_cols = (cols >= x0) & (cols < x0 + size)                            # [N, W]
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]
        value = fill if fill is not None else (CIFAR10_MEAN if x.shape[-1] == 3 else 0.0)
        return tf.where(mask, tf.constant(value, tf.float32), x)
    return Augment("cutout", 2, _cutout)


def get_cifar_cutout(padding: int = 4, size: int = 16,
                     fill: Optional[Union[Number, Sequence[Number]]] = None) -> Augment:
    """The paper's CIFAR regime (section 4.1): `get_cifar` then `get_cutout`."""
    return chain(get_cifar(padding), get_cutout(size, fill))


def inception_windows(hw: tf.Tensor, u: tf.Tensor,
                      area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
                      aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE) -> tf.Tensor:
    """Inception-style crop windows of N images at once.

    The algorithm of TensorFlow's ``sample_distorted_bounding_box`` with no boxes
    and ``min_object_covered=0`` (what the Inception/ResNet pipelines use), run
    over ``[N, attempts]`` at once: per attempt an aspect ratio uniform in
    ``aspect_ratio_range``, a whole-pixel height uniform between the heights
    of the smallest and largest allowed area (width = round(height * aspect)),
    rounding repairs and rejection as there; the first accepted attempt wins,
    else the whole image; then the offset is uniform over the positions TF
    uses (``[0, H - h)``, 0 when the crop is full height). Same distribution,
    not the same draws: tests/test_augment.py compares the two.

    Args:
        hw: ``[N, 2]`` int ``(height, width)`` of each row's image.
        u: ``[N, 2 * attempts + 2]`` uniforms: aspect ratios, heights, then y and x.
        area_range: crop area as a fraction of the image area.
        aspect_ratio_range: crop width / height.

    Returns:
        int32 ``[N, 4]`` windows ``(y, x, h, w)``, the ``crop_window`` of
        ``tf.image.decode_and_crop_jpeg``.
    """
    attempts = (u.shape[1] - 2) // 2
    big_h = tf.cast(hw[:, 0:1], tf.float32)
    big_w = tf.cast(hw[:, 1:2], tf.float32)
    lo, hi = aspect_ratio_range
    aspect = lo + u[:, :attempts] * (hi - lo)                                 # [N, A]
    min_area, max_area = area_range[0] * big_w * big_h, area_range[1] * big_w * big_h
    h = tf.round(tf.sqrt(min_area / aspect))
    max_h = tf.round(tf.sqrt(max_area / aspect))
    # the tallest height whose rounded width still fits: (W + 0.5 - eps) / aspect, once more if rounding says no
    fit = tf.floor((tf.cast(big_w, tf.float64) + 0.5 - 1e-7) / tf.cast(aspect, tf.float64))
    fit = tf.cast(fit, tf.float32)
    fit = tf.where(tf.round(fit * aspect) > big_w, fit - 1, fit)
    max_h = tf.where(tf.round(max_h * aspect) > big_w, fit, max_h)
    max_h = tf.minimum(max_h, big_h)
    h = tf.minimum(h, max_h)
    h = h + tf.minimum(tf.floor(u[:, attempts:2 * attempts] * (max_h - h + 1)), max_h - h)
    w = tf.round(h * aspect)
    area = w * h
    h = tf.where(area < min_area, h + 1, h)
    w = tf.where(area < min_area, tf.round(h * aspect), w)
    area = w * h
    h = tf.where(area > max_area, h - 1, h)
    w = tf.where(area > max_area, tf.round(h * aspect), w)
    area = w * h
    ok = ((area >= min_area) & (area <= max_area) & (w <= big_w) & (h <= big_h)
          & (w > 0) & (h > 0) & (area >= 1.0))
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(ok, axis=1)
    h = tf.where(found, tf.gather(h, first, batch_dims=1), big_h[:, 0])
    w = tf.where(found, tf.gather(w, first, batch_dims=1), big_w[:, 0])
    h, w = tf.cast(h, tf.int32), tf.cast(w, tf.int32)
    y = tf.where(h < hw[:, 0], _uniform_int(u[:, -2], tf.maximum(hw[:, 0] - h, 1)), 0)
    x = tf.where(w < hw[:, 1], _uniform_int(u[:, -1], tf.maximum(hw[:, 1] - w, 1)), 0)
    return tf.stack([y, x, h, w], axis=1)


def inception_crop_window(
        image_shape: tf.Tensor, seed: tf.Tensor,
        area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
        aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE) -> tf.Tensor:
    """One window of :func:`inception_windows` for an image of ``image_shape`` ``[H, W, C]``.

    The window copy 0 of ``get_imagenet(...)(image, seed)`` crops: int32 ``[y, x, h, w]``.
    """
    u = draws(seed, 1, _IMAGENET_DRAWS)
    return inception_windows(tf.cast(image_shape, tf.int32)[None, :2], u[:, :-1], area_range, aspect_ratio_range)[0]


# aspect ratios and heights of every attempt, y, x, flip
_IMAGENET_DRAWS = 2 * INCEPTION_ATTEMPTS + 3


def _crop_flip(images: tf.Tensor, i, window: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Window ``(y, x, h, w)`` of image ``i``, mirrored when ``flip``; still uint8 (a quarter of the bytes).

    (A strided slice with stride -1 would mirror while slicing, but TF's kernel for
    negative strides was measured 25x slower than this slice + reverse.)
    """
    y, x, h, w = tf.unstack(window)
    crop = tf.slice(images, tf.stack([i, y, x, 0]), tf.stack([1, h, w, -1]))[0]
    return tf.cond(flip, lambda: tf.reverse(crop, [1]), lambda: crop)


def _resize(crop: tf.Tensor, size: int) -> tf.Tensor:
    # float input: TF's bilinear kernel is faster on float32 than on uint8 here
    return tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bilinear")


_OPENCV = None


def _opencv():
    """OpenCV, set to one thread per call the first time (process-wide).

    tf.data already runs several steps' kernels at once (``map`` with AUTOTUNE
    parallel calls); OpenCV's own threads were measured slower even for one
    step alone on 2 idle cores (0.236 against 0.202 ms per copy, docs/performance.md).
    """
    global _OPENCV
    if _OPENCV is None:
        try:
            import cv2
        except ImportError as e:  # a requirement of ba_dist: only a broken install lacks it
            raise ImportError("ba_dist's host copies need OpenCV: pip install opencv-python-headless "
                              "(see requirements/constraints.txt)") from e
        cv2.setNumThreads(1)
        _OPENCV = cv2
    return _OPENCV


def _aligned_empty(shape, align: int = 64) -> np.ndarray:
    """An uninitialised uint8 array at a 64-byte aligned address.

    TensorFlow takes a ``tf.numpy_function`` result without copying only when
    it is aligned as its own buffers are; a plain ``np.empty`` (16-byte
    aligned) is copied once more (measured: ~25% of the host kernel's time).
    Reusing output buffers from a pool was measured slower than a fresh one.
    """
    n = int(np.prod(shape))
    raw = np.empty(n + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n].reshape(shape)


def _host_crop_resize(images: tf.Tensor, src: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
                      size: int, n) -> tf.Tensor:
    """The host kernel of :func:`_crop_flip` + :func:`_resize` for every row, one call: uint8 ``[n, size, size, C]``.

    TensorFlow's CPU bilinear kernel costs about 0.24 ms per 224x224x3 copy on
    one core, most of a copy's cost; OpenCV's SIMD kernel on uint8 makes the
    same resize (half-pixel centres, no antialiasing: the same sampling points
    and weights) in about a third of that, rounding to whole 0..255 levels
    (docs/performance.md). The windows and flips are the op's own, so the two
    kernels make the same crops; their pixels differ by rounding (< 1 level).
    """
    cv2 = _opencv()
    channels = images.shape[-1]

    def kernel(images, src, windows, flips):
        out = _aligned_empty((len(src), size, size, images.shape[-1]))  # TF takes it without a copy
        # (plain ints: indexing numpy arrays per row costs more than the resize's setup)
        for k, (i, (y, x, h, w), flip) in enumerate(zip(src.tolist(), windows.tolist(), flips.tolist())):
            crop, dst = images[i, y:y + h, x:x + w], out[k]
            if crop.shape[-1] == 1:  # OpenCV drops a single channel axis
                crop, dst = crop[..., 0], dst[..., 0]
            cv2.resize(crop, (size, size), dst=dst, interpolation=cv2.INTER_LINEAR)
            if flip:  # mirroring the resized copy = resizing the mirrored crop (symmetric sampling)
                cv2.flip(dst, 1, dst=dst)
        return out

    out = tf.numpy_function(kernel, [images, src, windows, flips], tf.uint8, stateful=False)
    out.set_shape([n if isinstance(n, int) else None, size, size, channels])
    return out


def get_imagenet(size: int = 224, area_range: Tuple[float, float] = INCEPTION_AREA_RANGE,
                 aspect_ratio_range: Tuple[float, float] = INCEPTION_ASPECT_RANGE
                 ) -> Augment:
    """Inception crop (paper appendix C.2, ResNet-50): random crop, flip, resize.

    Accepts images of any size (decoded JPEGs differ); the output is always
    ``[size, size, C]``. No color jitter, as in the paper. The windows of all
    rows are sampled at once (:func:`inception_windows`); each row is then one
    slice (mirrored on uint8 if flipped) and one bilinear resize.

    Args:
        size: output side in pixels.
        area_range: crop area fraction, 8%..100% for ResNet-50.
        aspect_ratio_range: crop width / height, [3/4, 4/3].
    """
    _check_positive_int("size", size)
    _check_range("area_range", area_range, 0.0, 1.0)
    _check_range("aspect_ratio_range", aspect_ratio_range, 0.0, float("inf"))

    def _windows(sizes, index, u):
        windows = inception_windows(_take(sizes, index), u[:, :-1], area_range, aspect_ratio_range)
        return windows, u[:, -1] < 0.5

    def _imagenet(images, sizes, index, u):
        windows, flips = _windows(sizes, index, u)
        n = _num_rows(images, index)
        src = tf.range(n) if index is None else index
        if isinstance(n, int):  # the pipelines: N known, unstack once instead of indexing per row
            rows = zip(tf.unstack(src, n), tf.unstack(windows, n), tf.unstack(flips, n))
            return tf.stack([_resize(_crop_flip(images, i, wd, f), size) for i, wd, f in rows])
        return _per_row(lambda k: _resize(_crop_flip(images, src[k], windows[k], flips[k]), size), n)

    def _imagenet_host(images, sizes, index, u):
        windows, flips = _windows(sizes, index, u)
        n = _num_rows(images, index)
        src = tf.range(n) if index is None else index
        return tf.cast(_host_crop_resize(images, src, windows, flips, size, n), tf.float32)
    return Augment("imagenet", _IMAGENET_DRAWS, _imagenet, _imagenet_host)


def get_imagenet_light(size: int = 224,
                       area_range: Tuple[float, float] = LIGHT_AREA_RANGE) -> Augment:
    """MobileNet's "less aggressive" Inception crop: 35%..100% area by default."""
    op = get_imagenet(size, area_range=area_range)
    op.name = "imagenet_light"
    return op


def get_alexnet(size: int = 224, resize: int = 256) -> Augment:
    """Original AlexNet regime: shorter side to `resize`, random `size` crop, flip.

    The PCA "lighting" noise of Krizhevsky et al. (2012) is left out. Per row
    (the resized size differs per image). Draws: row offset, column offset, flip.
    """
    _check_positive_int("size", size)
    _check_positive_int("resize", resize)
    if size > resize:
        raise ValueError(f"crop size {size} is larger than the resized shorter side {resize}.")

    def _alexnet(images, sizes, index, u):
        src = tf.range(_num_rows(images, index)) if index is None else index

        def one(k):
            image = _resize_shorter_side(_image_at(images, sizes, src[k]), resize)
            hw = tf.shape(image)[:2]
            y, x = _uniform_int(u[k, 0], hw[0] - size + 1), _uniform_int(u[k, 1], hw[1] - size + 1)
            crop = image[y:y + size, x:x + size]
            return tf.where(u[k, 2] < 0.5, tf.reverse(crop, [1]), crop)
        out = _per_row(one, _num_rows(images, index))
        return tf.ensure_shape(out, [None, size, size, images.shape[-1]])
    return Augment("alexnet", 3, _alexnet)


def get_imagenet_eval(size: int = 224, crop_fraction: float = 0.875) -> Augment:
    """Deterministic evaluation: shorter side to size / crop_fraction, centre crop (no draws)."""
    _check_positive_int("size", size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}.")
    resize = int(round(size / crop_fraction))  # 256 for 224

    def _imagenet_eval(images, sizes, index, u):
        src = tf.range(_num_rows(images, index)) if index is None else index

        def one(k):
            image = _resize_shorter_side(_image_at(images, sizes, src[k]), resize)
            h, w = tf.shape(image)[0], tf.shape(image)[1]
            return tf.image.crop_to_bounding_box(image, (h - size) // 2, (w - size) // 2, size, size)
        out = _per_row(one, _num_rows(images, index))
        return tf.ensure_shape(out, [None, size, size, images.shape[-1]])
    return Augment("imagenet_eval", 0, _imagenet_eval)


def get_digits(max_shift: int = 1) -> Augment:
    """UCI 8x8 digits: random translation by up to `max_shift` px, never flipped.

    Flips would turn some digits into others or into non-digits. Pixels keep
    their input range (0..16 for the UCI set). Draws: row offset, column offset.
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}.")

    def _digits(images, sizes, index, u):
        return _shift_crop(images, index, u[:, 0], u[:, 1], max_shift)
    return Augment("digits", 2, _digits)


AUGMENTATIONS: Dict[str, Callable[..., Augment]] = {
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
def chain(*ops: Augment) -> Augment:
    """Composes ops left to right; each takes its own columns of the draws."""
    if not ops:
        raise ValueError("chain() needs at least one op.")
    ops = tuple(as_augment(op) for op in ops)

    def _chain(images, sizes, index, u, host=False):
        start = 0
        for k, op in enumerate(ops):
            part = u[:, start:start + op.draws]
            images = op.batch(images, sizes if k == 0 else None, index if k == 0 else None, part, host=host)
            start += op.draws
        return images

    def _chain_host(images, sizes, index, u):
        return _chain(images, sizes, index, u, host=True)
    host = _chain_host if any(op._host_fn is not None for op in ops) else None
    return Augment("|".join(op.name for op in ops), sum(op.draws for op in ops), _chain, host)


def as_augment(fn: Union[Augment, AugmentFn]) -> Augment:
    """An :class:`Augment` as is; a plain ``fn(image, seed) -> image`` made into one.

    The plain function runs once per row (no batching) with a seed made from
    the row's two draws, so it still varies per copy and is reproducible.
    """
    if isinstance(fn, Augment):
        return fn
    if not callable(fn):
        raise ValueError(f"an augmentation must be an Augment or fn(image, seed), got {fn!r}")

    def _custom(images, sizes, index, u):
        src = tf.range(_num_rows(images, index)) if index is None else index
        seeds = tf.cast(u * 2.0 ** 31, tf.int64)

        def one(k):
            return tf.cast(fn(_image_at(images, sizes, src[k]), seeds[k]), tf.float32)
        return _per_row(one, _num_rows(images, index))
    return Augment(getattr(fn, "__name__", "custom"), 2, _custom)


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


def get_augment(name: str, **kwargs) -> Augment:
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
    Same draws as ``get_imagenet``, so for the same seed it returns the same
    pixels as ``get_imagenet(size)(tf.io.decode_jpeg(b, channels=3), seed)``.

    Returns:
        float32 ``[size, size, 3]`` in 0..255 (grayscale/CMYK JPEGs become RGB).
    """
    _check_positive_int("size", size)
    u = draws(seed, 1, _IMAGENET_DRAWS)
    window = inception_windows(tf.image.extract_jpeg_shape(jpeg_bytes)[None, :2], u[:, :-1],
                               area_range, aspect_ratio_range)[0]
    crop = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
    crop = tf.cond(u[0, -1] < 0.5, lambda: tf.reverse(crop, [1]), lambda: crop)
    return _resize(crop, size)


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
