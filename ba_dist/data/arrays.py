"""In-memory sources: arrays of images, the embedded UCI digits, synthetic data.

Their "encoded" payload is the raw uint8 pixel buffer, so the group broadcast
works for them as for file-backed sources. ``get_source("digits")`` needs no
download (the digits ship inside scikit-learn); ``get_source("synthetic")``
makes learnable random images for benchmarks and smoke runs.
"""
from __future__ import annotations

import numpy as np

from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source

__all__ = ["ArraySource", "DigitsSource", "SyntheticSource", "DIGITS_VAL_FRACTION"]


class ArraySource(Source):
    """A source held in memory as ``uint8 [N, H, W, C]`` images and int labels."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 default_augment: str = "none", default_eval: str = "none"):
        images = np.ascontiguousarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataSourceError(f"{name}: images must be uint8 [N,H,W,C], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DataSourceError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise DataSourceError(f"{name}: no samples")
        if labels.min() < 0 or labels.max() >= num_classes:
            bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
            raise DataSourceError(f"{name}[{bad}]: label {labels[bad]} outside [0, {num_classes})")
        self.name = name
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.image_shape = tuple(images.shape[1:])
        self.default_augment = default_augment
        self.default_eval = default_eval

    def __len__(self) -> int:
        return len(self.images)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def read(self, index: int) -> bytes:
        return self.images[index].tobytes()

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        expected = int(np.prod(self.image_shape))
        if len(payload) != expected:
            raise CorruptSampleError(self.describe(index), f"{len(payload)} bytes, expected {expected}")
        return np.frombuffer(payload, np.uint8).reshape(self.image_shape)

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


# The UCI digits ship inside scikit-learn: 1797 8x8 images with 17 grey levels.
# The validation split is a fixed, stratification-free 20% holdout chosen by a
# seeded permutation so every rank and every run sees the same split.
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class DigitsSource(ArraySource):
    """The real UCI handwritten digits bundled with scikit-learn (no download).

    Images are ``8x8x1`` uint8 (the 0..16 grey levels scaled by 16, capped at
    255); splits ``train`` (1438) and ``validation`` (359).
    """

    def __init__(self, split: str = "train"):
        from sklearn.datasets import load_digits
        data = load_digits()
        images = np.minimum(data.images * 16, 255).astype(np.uint8)[..., None]
        order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
        n_val = int(round(DIGITS_VAL_FRACTION * len(images)))
        splits = {"validation": order[:n_val], "train": order[n_val:]}
        if split not in splits:
            raise DataSourceError(f"digits has splits {sorted(splits)}, not {split!r}")
        idx = np.sort(splits[split])
        super().__init__("digits", images[idx], data.target[idx], 10,
                         default_augment="digits", default_eval="none")


class SyntheticSource(ArraySource):
    """Random images with a learnable label signal, for benchmarks and smoke runs.

    The class is encoded as a brightness offset of the image so a model can
    learn it, which makes a "loss goes down" check meaningful.
    """

    def __init__(self, split: str = "train", num_examples: int = 1024,
                 image_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10, seed: int = 0):
        if num_examples < 1 or num_classes < 1 or min(image_shape) < 1:
            raise DataSourceError(f"synthetic: bad sizes num_examples={num_examples}, "
                                  f"image_shape={image_shape}, num_classes={num_classes}")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        labels = rng.integers(0, num_classes, num_examples)
        noise = rng.integers(0, 128, (num_examples, *image_shape))
        offset = (labels * (127 // max(1, num_classes - 1)))[:, None, None, None]
        images = np.clip(noise + offset, 0, 255).astype(np.uint8)
        super().__init__("synthetic", images, labels, num_classes,
                         default_augment="cifar" if image_shape[0] >= 16 else "none")
