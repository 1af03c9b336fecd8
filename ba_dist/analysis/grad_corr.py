"""Gradient correlation under augmentation: the paper's Table 1 (section 3).

Batch Augmentation reduces gradient variance only if the M augmented copies of
a sample give *correlated* gradients. The paper measures the Pearson
correlation of weight gradients (median +- std over 100 samples) for

    rho(x, T(x))   an image and an augmented version of it   (one row per augmentation set)
    rho(x, y)      two images of the same class
    rho(z, w)      two images of different classes           (here z = x, w of another class)

at initialization and after training. ResNet-44 on CIFAR-10 at initialization
gives 0.99, 0.99, 0.99 and -0.11; fully trained 0.13 (crop+flip), 0.09
(+cutout), 0.04 and 0.00.

Choices, stated once:

* A gradient is the gradient of the *data* loss (cross-entropy of one
  example; no weight decay, whose gradient is the same for every example and
  would inflate every correlation) w.r.t. all trainable variables,
  concatenated and flattened.
* The network runs in inference mode (``training=False``): batch norm uses its
  moving statistics, so a single example's gradient is well defined and does
  not depend on which other images share its batch. At initialization the
  moving statistics are (0, 1), i.e. BN is the identity there.
* ``x``, ``y`` and ``w`` are un-augmented: the source's evaluation transform
  (identity for digits and CIFAR, centre crop for ImageNet); ``T(x)`` is a
  training augmentation of the same decoded image. All images are then
  normalised as in training.
* Sample ``i`` draws ``x`` uniformly, ``y`` uniformly among the other images
  of ``x``'s class, ``w`` uniformly among images of other classes, and the
  augmentation seed from ``(seed, i, set)``: the result depends only on
  ``seed``, not on how samples are split over ranks.

Everything here is pure TensorFlow/numpy (no Horovod); ``ba-analyze grad-corr``
(:mod:`ba_dist.analysis.cli`) loads models and shards samples over ranks.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ba_dist import ba
from ba_dist.data import augment as aug

__all__ = [
    "SAME_CLASS",
    "DIFFERENT_CLASS",
    "pearson",
    "example_gradient",
    "example_gradients",
    "sample_pairs",
    "per_sample_correlations",
    "summarize",
    "grad_correlations",
    "accuracy",
    "augment_key",
    "markdown_table",
]

SAME_CLASS = "same_class"            # rho(x, y)
DIFFERENT_CLASS = "different_class"  # rho(z, w)
_AUG_PREFIX = "augmented:"           # rho(x, T(x)) for one augmentation set

Preprocess = Callable[[tf.Tensor], tf.Tensor]


def augment_key(name: str) -> str:
    """Result key of ``rho(x, T(x))`` for the augmentation set ``name``."""
    return _AUG_PREFIX + name


def pearson(a, b) -> float:
    """Pearson correlation of two equally long vectors (float64 arithmetic).

    Returns NaN when either vector is constant (the correlation is undefined).

    Raises:
        ValueError: the vectors differ in size or are empty.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"pearson() needs two non-empty vectors of one size, got {a.size} and {b.size}")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(a, b) / denom, -1.0, 1.0))


# One compiled per-example-gradient function per model; weak so models can be freed.
_GRAD_FNS: "weakref.WeakKeyDictionary[tf.keras.Model, Callable]" = weakref.WeakKeyDictionary()


def _grad_fn(model: tf.keras.Model) -> Callable:
    fn = _GRAD_FNS.get(model)
    if fn is not None:
        return fn
    tvars = model.trainable_variables

    def one(args):
        x, y = args
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x[None], training=False), tf.float32)
            loss = tf.keras.losses.sparse_categorical_crossentropy(y[None], logits, from_logits=True)[0]
        grads = tape.gradient(loss, tvars)
        return tf.concat([tf.reshape(tf.zeros_like(v) if g is None else tf.convert_to_tensor(g), [-1])
                          for g, v in zip(grads, tvars)], 0)

    @tf.function(reduce_retracing=True)
    def batched(xs, ys):
        # pfor turns the K single-example backward passes into one batched pass.
        return tf.vectorized_map(one, (xs, ys))

    _GRAD_FNS[model] = batched
    return batched


def example_gradients(model: tf.keras.Model, xs, ys) -> np.ndarray:
    """Per-example gradients of the data loss, ``[K, num_trainable_params]`` float32.

    Args:
        model: a network returning logits; run with ``training=False``.
        xs: ``[K, H, W, C]`` model inputs (already normalised).
        ys: ``[K]`` integer labels.
    """
    xs = tf.convert_to_tensor(xs, tf.float32)
    ys = tf.convert_to_tensor(ys, tf.int64)
    if xs.shape.rank is None or xs.shape.rank < 2 or ys.shape.rank != 1 or xs.shape[0] != ys.shape[0]:
        raise ValueError(f"example_gradients() takes xs [K, ...] and ys [K], got {xs.shape} and {ys.shape}")
    logger = tf.get_logger()
    level = logger.level
    # pfor has no batched rule for Conv2DBackpropFilter and warns (once per trace)
    # that it loops instead; the result is the same, the warning is noise here.
    logger.setLevel("ERROR")
    try:
        return _grad_fn(model)(xs, ys).numpy()
    finally:
        logger.setLevel(level)


def example_gradient(model: tf.keras.Model, x, y) -> np.ndarray:
    """Flattened gradient of one example's cross-entropy w.r.t. all trainable variables.

    Args:
        model: a network returning logits; run with ``training=False``.
        x: one ``[H, W, C]`` model input (already normalised).
        y: its integer label.
    """
    return example_gradients(model, tf.convert_to_tensor(x, tf.float32)[None], [int(y)])[0]


def _labels_of(source) -> Optional[np.ndarray]:
    labels = getattr(source, "labels", None)
    return None if labels is None else np.asarray(labels)


def sample_pairs(source, n: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` index triples ``(x, y, w)``: y in x's class (y != x), w in another class.

    Deterministic in ``seed``. Uses the source's label array when it has one,
    else rejection sampling through ``source.label(i)``.

    Raises:
        ValueError: ``n < 1``, or the source has no class with two images or only one class.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples must be a positive int, got {n!r}")
    rng = np.random.default_rng([int(seed), 0x6A7C])
    size = len(source)
    labels = _labels_of(source)
    out = []
    if labels is not None:
        by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        if len(by_class) < 2 or max(len(v) for v in by_class.values()) < 2:
            raise ValueError(f"{source.name}: needs >= 2 classes and a class with >= 2 images")
        eligible = np.concatenate([v for v in by_class.values() if len(v) >= 2])
        for _ in range(n):
            x = int(rng.choice(eligible))
            same = by_class[labels[x]]
            y = int(rng.choice(same[same != x]))
            w = int(rng.choice(np.flatnonzero(labels != labels[x])))
            out.append((x, y, w))
        return out
    limit = 100 * max(source.num_classes, 2)
    for _ in range(n):
        x = int(rng.integers(size))
        lx = source.label(x)
        y = w = None
        for _ in range(limit):
            j = int(rng.integers(size))
            lj = source.label(j)
            if y is None and j != x and lj == lx:
                y = j
            elif w is None and lj != lx:
                w = j
            if y is not None and w is not None:
                break
        if y is None or w is None:
            raise ValueError(f"{source.name}: no same-class / other-class partner for sample {x} "
                             f"after {limit} draws")
        out.append((x, y, w))
    return out


def _identity(x):
    return x / 255.0


def per_sample_correlations(model: tf.keras.Model, source, augment_fns: Mapping[str, aug.AugmentFn],
                            n: int = 100, seed: int = 0, *, samples: Optional[Iterable[int]] = None,
                            eval_fn: Optional[aug.AugmentFn] = None,
                            preprocess: Optional[Preprocess] = None) -> Dict[str, Dict[int, float]]:
    """Correlations of each sample, ``{measure: {sample index: rho}}``.

    Args:
        model: network returning logits.
        source: a :class:`ba_dist.data.sources.Source` (usually the training split).
        augment_fns: ``{name: fn(image, seed)}``, one ``rho(x, T(x))`` measure each.
        n: number of samples drawn (all of them unless ``samples`` is given).
        seed: makes the draw and the augmentations reproducible.
        samples: subset of ``range(n)`` to compute (how ranks split the work).
        eval_fn: transform of un-augmented images (default: none, i.e. identity).
        preprocess: float 0..255 image batch -> model input (default ``x / 255``).

    Returns:
        Keys :func:`augment_key` (name) for every set, :data:`SAME_CLASS`, :data:`DIFFERENT_CLASS`.
    """
    if not augment_fns:
        raise ValueError("augment_fns is empty: give at least one augmentation set")
    eval_fn = eval_fn or aug.get_none()
    preprocess = preprocess or _identity
    triples = sample_pairs(source, n, seed)
    names = list(augment_fns)
    out: Dict[str, Dict[int, float]] = {augment_key(k): {} for k in names}
    out[SAME_CLASS], out[DIFFERENT_CLASS] = {}, {}
    zero = tf.zeros([2], tf.int64)
    for i in (range(n) if samples is None else samples):
        x, y, w = triples[i]
        img_x = source.load(x)
        images = [eval_fn(img_x, zero)]
        images += [augment_fns[k](img_x, ba.analysis_seed(seed, i, j)) for j, k in enumerate(names)]
        images += [eval_fn(source.load(y), zero), eval_fn(source.load(w), zero)]
        label = source.label(x)
        labels = [label] * (1 + len(names)) + [source.label(y), source.label(w)]
        g = example_gradients(model, preprocess(tf.stack(images)), labels)
        for j, k in enumerate(names):
            out[augment_key(k)][i] = pearson(g[0], g[1 + j])
        out[SAME_CLASS][i] = pearson(g[0], g[-2])
        out[DIFFERENT_CLASS][i] = pearson(g[0], g[-1])
    return out


def summarize(values: Sequence[float]) -> dict:
    """Median +- std (the paper's format), plus mean, min, max and the values themselves."""
    v = np.asarray(list(values), np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": None, "std": None, "mean": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": float(np.median(v)), "std": float(np.std(v)), "mean": float(v.mean()),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size), "values": [float(a) for a in v]}


def grad_correlations(model: tf.keras.Model, source, augment_fns: Mapping[str, aug.AugmentFn],
                      n: int = 100, seed: int = 0, **kwargs) -> dict:
    """The paper's Table 1 for one network state: ``{measure: summarize(...)}``.

    Arguments as :func:`per_sample_correlations`.
    """
    per = per_sample_correlations(model, source, augment_fns, n, seed, **kwargs)
    return {k: summarize([v[i] for i in sorted(v)]) for k, v in per.items()}


def accuracy(model: tf.keras.Model, source, limit: int = 1000, *, eval_fn: Optional[aug.AugmentFn] = None,
             preprocess: Optional[Preprocess] = None, batch_size: int = 256) -> tuple[float, int]:
    """Top-1 accuracy (inference mode) on the first ``limit`` samples; returns (accuracy, count)."""
    eval_fn = eval_fn or aug.get_none()
    preprocess = preprocess or _identity
    count = min(len(source), limit)
    zero = tf.zeros([2], tf.int64)
    correct = 0
    for start in range(0, count, batch_size):
        ids = range(start, min(count, start + batch_size))
        x = preprocess(tf.stack([eval_fn(source.load(i), zero) for i in ids]))
        pred = np.argmax(model(x, training=False).numpy(), -1)
        correct += int(np.sum(pred == np.array([source.label(i) for i in ids])))
    return correct / max(count, 1), count


def _cell(stats: dict) -> str:
    if stats.get("median") is None:
        return "n/a"
    return f"{stats['median']:.2f} ± {stats['std']:.2f}"


def markdown_table(states: Sequence[dict], augment_names: Sequence[str]) -> str:
    """Table 1 layout: one column per network state, one row per measure.

    Args:
        states: dicts with ``name``, ``epoch``, ``val_top1`` and ``rho`` (measure -> summary).
        augment_names: the augmentation sets, in row order.
    """
    def esc(s):
        return str(s).replace("|", "\\|")

    head = "| Measure | " + " | ".join(esc(s["name"]) for s in states) + " |"
    rows = [head, "|" + "---|" * (len(states) + 1)]
    rows.append("| Epoch | " + " | ".join(_fmt_epoch(s.get("epoch")) for s in states) + " |")
    rows.append("| Validation accuracy | " + " | ".join(
        "n/a" if s.get("val_top1") is None else f"{100 * s['val_top1']:.2f}%" for s in states) + " |")
    for name in augment_names:
        rows.append(f"| ρ(x, T(x)) ({esc(name)}) | " + " | ".join(_cell(s["rho"][augment_key(name)])
                                                              for s in states) + " |")
    rows.append("| ρ(x, y) same class | " + " | ".join(_cell(s["rho"][SAME_CLASS]) for s in states) + " |")
    rows.append("| ρ(z, w) different classes | " + " | ".join(_cell(s["rho"][DIFFERENT_CLASS])
                                                              for s in states) + " |")
    return "\n".join(rows)


def _fmt_epoch(e) -> str:
    if e is None:
        return "n/a"
    return str(int(e)) if float(e).is_integer() else f"{e:.2f}"
