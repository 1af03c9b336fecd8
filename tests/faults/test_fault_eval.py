"""Bad evaluation data and images that do not fit: skipped and counted, or one clear error on every rank.

In-process: ImageNet's known oddities in a raw folder (CMYK JPEG, PNG named .JPEG,
grayscale JPEG) decode to RGB; a damaged or misfit (1x1 among 40x40) validation
file is left out of ``val_count`` and counted in ``val_skipped`` under
``on_corrupt='skip'`` and is a ``DataSourceError`` naming it under ``'error'``; a
misfit training image is a corrupt sample of the loader. End to end (``mpirun -np 2``
ba-train): the same for a damaged validation folder, exit 2 on every rank.
"""
from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import faultlib
from ba_dist import dist, train_step
from ba_dist.data import loader as data_loader
from ba_dist.data.evaluation import make_eval_dataset
from ba_dist.data.folder import ImageFolderSource
from ba_dist.data.sampler import GroupSampler
from ba_dist.data.sources import DataSourceError
from launcher import REPO

FOLDER_CONFIG = str(REPO / "tests/faults/folder_config.py")


def _rgb(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _save(path, image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())
    return str(path)


def _imagenet_oddities(d) -> dict:
    """ImageNet's raw-folder oddities, written by PIL: file name -> what PIL itself reads as RGB."""
    smooth = np.kron(_rgb(1, 5), np.ones((8, 8, 1), np.uint8))  # 40x40 flat patches: JPEG keeps them
    files = {
        "n01_cmyk.JPEG": (Image.fromarray(smooth).convert("CMYK"), "JPEG"),
        "n01_png.JPEG": (Image.fromarray(smooth), "PNG"),
        "n01_gray.JPEG": (Image.fromarray(smooth).convert("L"), "JPEG"),
    }
    out = {}
    for name, (image, fmt) in files.items():
        _save(d / name, image, fmt)
        out[name] = np.asarray(Image.open(d / name).convert("RGB"))
    return out


def test_imagenet_oddities_decode_to_3_channel_rgb(tmp_path):
    d = tmp_path / "train" / "n01"
    d.mkdir(parents=True)
    expected = _imagenet_oddities(d)
    src = ImageFolderSource(str(tmp_path), split="train")
    assert len(src) == 3
    for i in range(len(src)):
        img = src.load(i)
        name = src.describe(i).rsplit("/", 1)[-1]
        assert img.shape == (40, 40, 3) and img.dtype == np.uint8, name
        # the same colours PIL sees (JPEG decoders differ by a few levels)
        assert np.abs(img.astype(int) - expected[name]).mean() < 3, name
    gray = src.load([src.describe(i).endswith("gray.JPEG") for i in range(3)].index(True))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


BAD_VAL = {"tiny.jpg": "size 1x1x3 differs from the 40x40x3", "zero.jpg": "empty (0 bytes)",
           "truncated.jpg": "cannot decode JPEG"}


def _val_folder(root, good_per_class: int = 5) -> tuple[str, int]:
    for c in ("a", "b"):
        d = root / "val" / c
        d.mkdir(parents=True)
        for k in range(good_per_class):
            _save(d / f"good{k}.png", Image.fromarray(_rgb(10 * ord(c) + k)), "PNG")
    bad = root / "val" / "a"
    _save(bad / "tiny.jpg", Image.fromarray(_rgb(3, 1)), "JPEG")
    (bad / "zero.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(_rgb(4)).save(jpeg, "JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    return str(root), 2 * good_per_class


def _evaluate(root: str, on_corrupt: str, batch_size: int = 4) -> dict:
    ctx = dist.init()
    src = ImageFolderSource(root, split="val")
    spec = data_loader.PipelineSpec(per_rank_unique=1, eval_transform="none", on_corrupt=on_corrupt, read_threads=2)
    ds, _ = make_eval_dataset(src, spec, 0, 1, batch_size, src.image_shape)
    net = tf.keras.Sequential([tf.keras.layers.GlobalAveragePooling2D(input_shape=(40, 40, 3)),
                               tf.keras.layers.Dense(2)])
    return train_step.evaluate_sharded(net, ds, 2)


def test_evaluation_skips_and_counts_bad_files_naming_each_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ba_dist.data.evaluation")
    root, good = _val_folder(tmp_path)
    out = _evaluate(root, "skip")
    assert out["val_count"] == good and out["val_skipped"] == len(BAD_VAL), out
    for name, reason in BAD_VAL.items():
        assert re.search(rf"skips corrupt sample \S+/val/a/{name}: .*{re.escape(reason)}", caplog.text), caplog.text
    caplog.clear()
    assert _evaluate(root, "skip")["val_skipped"] == len(BAD_VAL)  # counted every pass ...
    assert "skips corrupt sample" not in caplog.text                 # ... named once


def test_evaluation_under_on_corrupt_error_raises_naming_the_file(tmp_path):
    root, _ = _val_folder(tmp_path)
    with pytest.raises(DataSourceError, match=r"3 corrupt evaluation sample\(s\), first \S+/val/a/"
                                              r"(tiny|zero|truncated)\.jpg: .*set input.on_corrupt='skip'"):
        _evaluate(root, "error")


def test_misfit_training_image_is_a_corrupt_sample(tmp_path):
    root, _ = _val_folder(tmp_path)
    (tmp_path / "val" / "a" / "zero.jpg").unlink()
    (tmp_path / "val" / "a" / "truncated.jpg").unlink()
    src = ImageFolderSource(root, split="val")
    for on_corrupt in ("skip", "error"):
        spec = data_loader.PipelineSpec(per_rank_unique=len(src), on_corrupt=on_corrupt, image_shape=(40, 40, 3))
        loader = data_loader.GroupLoader(src, GroupSampler(len(src), 1, len(src), seed=0), spec,
                                         dist.make_topology(0, 1), num_steps=1)
        if on_corrupt == "skip":
            (_, _, ids, _, images), = list(loader)
            assert loader.skipped == 1 and all(im.shape == (40, 40, 3) for im in images)
        else:
            with pytest.raises(data_loader.DataError, match=r"val/a/tiny.jpg \(size 1x1x3 differs from the 40x40x3"):
                list(loader)


# ---- end to end: ba-train on 2 ranks, a damaged validation split ---------------------------------

@pytest.fixture(scope="module")
def damaged_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged_val")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                _save(d / f"good{k}.png", Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), "PNG")
    _save(root / "val" / "a" / "tiny.jpg", Image.fromarray(_rgb(3, 1)), "JPEG")  # 1x1 among 8x8
    (root / "val" / "b" / "zero.jpg").write_bytes(b"")
    return root


def test_training_with_damaged_validation_skips_and_counts(damaged_val, tmp_path):
    res = faultlib.run(2, ["--config", FOLDER_CONFIG, "--workdir", str(tmp_path / "wd"),
                           f"--config.input.source_kwargs.data_dir={damaged_val}"], tmp_path / "fault")
    assert res.returncode == 0, res.output[-4000:]
    result = json.loads((tmp_path / "wd" / "result.json").read_text())
    assert result["val_count"] == 8 and result["val_skipped"] == 2, result
    assert re.search(r"evaluation skips corrupt sample \S+/val/a/tiny.jpg: size 1x1x3 differs", res.output)
    assert re.search(r"evaluation skips corrupt sample \S+/val/b/zero.jpg: empty", res.output)


def test_training_with_damaged_validation_and_on_corrupt_error_exits_2(damaged_val, tmp_path):
    pattern = r"data error: 2 corrupt evaluation sample\(s\), first \S+/val/(a/tiny|b/zero).jpg"
    res, seconds = faultlib.run_reporting(2, ["--config", FOLDER_CONFIG, "--workdir", str(tmp_path / "wd"),
                                              f"--config.input.source_kwargs.data_dir={damaged_val}",
                                              "--config.input.on_corrupt=error"], tmp_path / "fault", pattern)
    assert res.returncode == 2, res.output[-4000:]
    assert seconds < faultlib.EXIT_BOUND_SEC
    assert len(re.findall(pattern, res.output)) == 2  # every rank says why
    assert not (tmp_path / "wd" / "result.json").exists()
