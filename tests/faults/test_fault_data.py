"""Bad training data: every kind is skipped and counted, or a clear error naming the file.

In-process (fast): a table of damaged samples, each alone among good ones, through a
real :class:`GroupLoader` on one rank, under ``on_corrupt='skip'`` and ``'error'``;
then the damage that a source refuses when it is built. End to end (two ``mpirun -np 2``
launches): a damaged image folder trained with skip (completes, ``skipped_samples``
equals the damaged files the sampler drew) and with error (every rank exits, naming
the file). Lockstep of the ranks of a group under damage is also covered by
tests/mpi/test_pipeline.py (folder and TFRecord, both broadcast modes).
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import faultlib
from ba_dist import dist
from ba_dist.data import loader as data_loader
from ba_dist.data.folder import ImageFolderSource
from ba_dist.data.sampler import GroupSampler
from ba_dist.data.sources import DataSourceError, get_source
from ba_dist.data.tfrecord import TFRecordSource
from launcher import REPO

FOLDER_CONFIG = str(REPO / "tests/faults/folder_config.py")


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _encoded(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(seed)).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _good_folder(root, per_class: int = 4, classes=("a", "b"), seed: int = 0):
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            fmt = "PNG" if k % 2 else "JPEG"
            (d / f"good{k}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(_encoded(seed + 10 * c + k, fmt))
    return root


# ---- damaged samples: name -> writes the bad file into class folder `d`, returns its name -------

def _zero_byte(d):
    (d / "zero.jpg").write_bytes(b"")
    return "zero.jpg"


def _truncated_jpeg(d):
    jpeg = _encoded(99, "JPEG")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return "truncated.jpg"


def _png_named_jpg(d):
    (d / "png_as.jpg").write_bytes(_encoded(98, "PNG"))  # format comes from the bytes: not a fault
    return "png_as.jpg"


def _not_an_image(d):
    (d / "notes.jpg").write_text("these are not pixels\n")
    return "notes.jpg"


def _unreadable(d):
    # as root every mode bit reads, so "unreadable" is a file that is gone (dangling link)
    (d / "gone.jpg").symlink_to(d / "nowhere.jpg")
    return "gone.jpg"


def _fifo(d):
    os.mkfifo(d / "pipe.jpg")  # would block the reader forever if opened blindly
    return "pipe.jpg"


FOLDER_FAULTS = {  # kind: (make, reason in the message; None = decodes, not a fault)
    "zero-byte file": (_zero_byte, r"empty \(0 bytes\)"),
    "truncated JPEG": (_truncated_jpeg, r"cannot decode JPEG"),
    "PNG named .jpg": (_png_named_jpg, None),
    "non-image file": (_not_an_image, r"not a JPEG/PNG/GIF/BMP image"),
    "unreadable file": (_unreadable, r"cannot read: No such file"),
    "FIFO named .jpg": (_fifo, r"not a regular file"),
}


def _example(image: bytes, label: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def _shard(path, records: list[bytes]) -> str:
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def _flip_middle_of_record(path, k: int) -> None:
    from ba_dist.data.tfrecord import scan_tfrecord
    offsets, lengths, _ = scan_tfrecord(path)
    raw = bytearray(open(path, "rb").read())
    raw[int(offsets[k] + lengths[k] // 2)] ^= 0xFF
    open(path, "wb").write(bytes(raw))


TFRECORD_FAULTS = {  # kind: (bad record or None, damage(path, k) or None, reason)
    "TFRecord flipped byte": (None, _flip_middle_of_record, r"data CRC mismatch"),
    "TFRecord label out of range": (_example(_encoded(5), 7), None, r"label 7 \(stored 7.*outside \[0, 2\)"),
    "TFRecord non-image payload": (_example(b"GIF? no, text", 1), None, r"not a JPEG/PNG/GIF/BMP image"),
    "TFRecord not an Example": (b"\x07garbage that is no protobuf", None, r"not a tf.train.Example"),
}


def _folder_source(tmp_path, kind):
    make, reason = FOLDER_FAULTS[kind]
    root = _good_folder(tmp_path / "data")
    name = make(root / "a")
    return ImageFolderSource(str(root)), os.path.join(str(root), "a", name), reason


def _tfrecord_source(tmp_path, kind):
    bad, damage, reason = TFRECORD_FAULTS[kind]
    records = [_example(_encoded(k), k % 2) for k in range(8)]
    k = 3
    if bad is not None:
        records[k] = bad
    path = _shard(tmp_path / "train-00000-of-00001", records)
    if damage is not None:
        damage(path, k)
    return TFRecordSource(files=[path], num_classes=2), f"{path}:{k}", reason


def _source(tmp_path, kind):
    return (_folder_source if kind in FOLDER_FAULTS else _tfrecord_source)(tmp_path, kind)


def _one_epoch(src, on_corrupt: str, timeout: float = 60):
    """One epoch of a one-rank GroupLoader in which a single step holds every sample."""
    sampler = GroupSampler(len(src), 1, len(src), seed=0)
    spec = data_loader.PipelineSpec(per_rank_unique=len(src), on_corrupt=on_corrupt, read_threads=2, prefetch=1)
    loader = data_loader.GroupLoader(src, sampler, spec, dist.make_topology(0, 1), num_steps=1)
    box = {}

    def consume():
        try:
            box["steps"] = [(ids.copy(), labels.copy(), images) for _, _, ids, labels, images in loader]
        except Exception as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for p in getattr(src, "_class_dirs", []):  # unblock a reader stuck on a FIFO, then fail
            for f in os.scandir(p):
                if f.name.endswith(".jpg") and not f.is_file() and os.path.exists(f.path):
                    os.close(os.open(f.path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the loader did not finish one step within {timeout}s (a read blocked)")
    return loader, box


@pytest.mark.parametrize("kind", list(FOLDER_FAULTS) + list(TFRECORD_FAULTS))
def test_damaged_sample_is_skipped_and_counted(kind, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ba_dist.data.loader")
    src, where, reason = _source(tmp_path, kind)
    bad = [i for i in range(len(src)) if src.describe(i) == where]
    assert len(bad) == 1
    loader, box = _one_epoch(src, "skip")
    assert "error" not in box, box.get("error")
    (ids, labels, images), = box["steps"]
    assert len(ids) == len(images) == len(src)  # the step keeps its size: substitutes fill the holes
    if reason is None:  # not damage after all: trained on, exactly as written
        assert loader.skipped == 0 and bad[0] in ids
        np.testing.assert_array_equal(images[list(ids).index(bad[0])], _pixels(98))
        return
    # the slot keeps its id (its augmentation seeds) and carries a good sample's image
    assert loader.skipped == 1 and list(ids) == list(loader.sampler.epoch_ids(0, 0)[0])
    k = list(ids).index(bad[0])
    assert any(np.array_equal(images[k], images[j]) for j in range(len(ids)) if j != k)
    # the warning names the file (or shard:record) and why
    assert re.search(rf"skipped 1 corrupt sample.*{re.escape(where)} \(.*{reason}", caplog.text), caplog.text
    assert all(0 <= y < src.num_classes for y in labels)


def test_substitute_copies_get_their_own_draws(tmp_path):
    """Issue 14: a substitute's BA copies differ from those of the sample it duplicates."""
    from ba_dist import ba
    from ba_dist.data import augment
    src, where, _ = _source(tmp_path, "zero-byte file")
    loader, box = _one_epoch(src, "skip")
    (ids, _, images), = box["steps"]
    drawn = list(loader.sampler.epoch_ids(0, 0)[0])
    k = [i for i in range(len(ids)) if src.describe(int(ids[i])) == where][0]
    dup = next(j for j in range(len(ids)) if j != k and np.array_equal(images[j], images[k]))
    flip = augment.get_augment("cifar")

    def copies(j):   # what ba_batches makes of slot j (seed 0, epoch 0, rank 0, 4 copies)
        return ba.sample_copies(tf.constant(images[j]), ba.copy_draws(0, 0, 0, ids[j], 4, flip.draws), flip).numpy()

    assert not np.array_equal(copies(k), copies(dup))    # same image, different augmentations
    for j in range(len(ids)):   # every other slot: the draws of the id the sampler drew, as before
        if j != k:
            assert ids[j] == drawn[j]
            np.testing.assert_array_equal(copies(j), ba.sample_copies(
                tf.constant(images[j]), ba.copy_draws(0, 0, 0, drawn[j], 4, flip.draws), flip).numpy())


@pytest.mark.parametrize("kind", [k for k, (_, r) in FOLDER_FAULTS.items() if r] + list(TFRECORD_FAULTS))
def test_damaged_sample_under_on_corrupt_error_names_the_file(kind, tmp_path):
    src, where, reason = _source(tmp_path, kind)
    _, box = _one_epoch(src, "error")
    assert isinstance(box.get("error"), data_loader.DataError), box
    assert re.search(rf"{re.escape(where)} \(.*{reason}.*set input.on_corrupt='skip'", str(box["error"]))


# ---- damage that a source refuses when it is built (before any rank trains) --------------------

def _empty_class(tmp_path):
    root = _good_folder(tmp_path / "data")
    (root / "c").mkdir()
    return lambda **kw: ImageFolderSource(str(root), **kw), f"{root}/c: class folder has no"


def _missing_dir(tmp_path):
    return (lambda **kw: get_source("folder", data_dir=str(tmp_path / "missing"), **kw),
            f"data_dir '{tmp_path}/missing' does not exist")


def _no_images(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "readme.txt").write_text("no images")
    return lambda **kw: ImageFolderSource(str(tmp_path / "data"), **kw), "no .jpg/.jpeg/.png images in any"


def _records(tmp_path):
    return _shard(tmp_path / "train-00000-of-00001", [_example(_encoded(k), k % 2) for k in range(6)])


def _truncated_tail(tmp_path):
    path = _records(tmp_path)
    size = os.path.getsize(path)
    os.truncate(path, size - 10)
    return lambda **kw: TFRecordSource(files=[path], num_classes=2, **kw), f"{path}: truncated record at byte"


def _damaged_header(tmp_path):
    from ba_dist.data.tfrecord import scan_tfrecord
    path = _records(tmp_path)
    offsets, _, _ = scan_tfrecord(path)
    raw = bytearray(open(path, "rb").read())
    raw[int(offsets[2]) - 12] ^= 0x01  # the length field of record 2
    open(path, "wb").write(bytes(raw))
    return lambda **kw: TFRecordSource(files=[path], num_classes=2, **kw), f"{path}: damaged record header at byte"


def _no_shards(tmp_path):
    (tmp_path / "tfr").mkdir()
    return lambda **kw: get_source("tfrecord", data_dir=str(tmp_path / "tfr"), **kw), "no TFRecord shards matching"


BUILD_FAULTS = {  # kind: (setup -> (build(**kw), message), kwargs that accept it instead, samples then)
    "empty class folder": (_empty_class, {"empty_class": "ignore"}, 8),
    "missing data dir": (_missing_dir, None, None),
    "folder without images": (_no_images, None, None),
    "TFRecord truncated tail": (_truncated_tail, {"on_truncated": "skip"}, 5),
    "TFRecord damaged header": (_damaged_header, {"on_truncated": "skip"}, 2),
    "no TFRecord shards": (_no_shards, None, None),
}


@pytest.mark.parametrize("kind", list(BUILD_FAULTS))
def test_damaged_dataset_is_refused_by_name_or_accepted_when_asked(kind, tmp_path):
    setup, accept, n = BUILD_FAULTS[kind]
    build, message = setup(tmp_path)
    with pytest.raises(DataSourceError, match=re.escape(message)):
        build()
    if accept is not None:  # the explicit opt-in keeps what is good
        src = build(**accept)
        assert len(src) == n
        assert all(src.load(i).shape == (8, 8, 3) for i in range(len(src)))


# ---- end to end: ba-train on 2 ranks over a damaged folder ------------------------------------

DAMAGED = ("zero.jpg", "truncated.jpg", "notes.jpg", "gone.jpg", "pipe.jpg")


@pytest.fixture(scope="module")
def damaged_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged_folder")
    _good_folder(root / "train", per_class=12)
    _good_folder(root / "val", per_class=4, seed=500)
    a = root / "train" / "a"
    made = [_zero_byte(a), _truncated_jpeg(a), _not_an_image(a), _unreadable(a), _fifo(a)]
    assert tuple(made) == DAMAGED
    _png_named_jpg(a)
    return root


def _expected_skips(root, epochs: int, b: int = 8) -> int:
    """Damaged files among the samples the sampler draws (the remainder of each epoch is dropped)."""
    src = ImageFolderSource(str(root), split="train")
    bad = {i for i in range(len(src)) if os.path.basename(src.describe(i)) in DAMAGED}
    sampler = GroupSampler(len(src), 1, b, seed=0)
    return sum(int(i) in bad for e in range(epochs) for i in sampler.epoch_ids(e, 0).ravel())


def test_training_on_damaged_folder_skips_and_counts(damaged_folder, tmp_path):
    res = faultlib.run(2, ["--config", FOLDER_CONFIG, "--workdir", str(tmp_path / "wd"),
                           f"--config.input.source_kwargs.data_dir={damaged_folder}"], tmp_path / "fault")
    assert res.returncode == 0, res.output[-4000:]
    expected = _expected_skips(damaged_folder, epochs=2)
    assert expected > 0
    rows = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["skipped_samples"] == expected  # cumulative; counted once per group
    assert json.loads((tmp_path / "wd" / "result.json").read_text())["skipped_samples"] == expected
    assert re.search(r"skipped \d+ corrupt sample\(s\) at epoch \d step \d: \S+/train/a/("
                     + "|".join(map(re.escape, DAMAGED)) + ")", res.output)


def test_training_on_damaged_folder_with_on_corrupt_error_stops_naming_the_file(damaged_folder, tmp_path):
    pattern = (r"DataError: .*corrupt sample\(s\) at epoch 0 step \d+: \S+/train/a/("
               + "|".join(map(re.escape, DAMAGED)) + r") \(")
    res, seconds = faultlib.run_reporting(2, ["--config", FOLDER_CONFIG, "--workdir", str(tmp_path / "wd"),
                                              f"--config.input.source_kwargs.data_dir={damaged_folder}",
                                              "--config.input.on_corrupt=error"], tmp_path / "fault", pattern)
    assert res.returncode != 0
    assert seconds < faultlib.EXIT_BOUND_SEC
    assert "set input.on_corrupt='skip' to skip and count them" in res.output
    assert not (tmp_path / "wd" / "result.json").exists()
