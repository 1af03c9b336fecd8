"""Tests for the file-backed sources (data/folder.py, tfrecord.py, tfds_source.py) and make_tfrecords.

All data is built here with PIL in tmp dirs; tfds runs offline (mock_data and a
tiny GeneratorBasedBuilder prepared locally).
"""
import io
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ba_dist.data import make_tfrecords, tfrecord
from ba_dist.data.arrays import ArraySource
from ba_dist.data.folder import ImageFolderSource
from ba_dist.data.sources import CorruptSampleError, DataSourceError, get_source
from ba_dist.data.tfds_source import TFDSSource
from ba_dist.data.tfrecord import TFRecordSource


# ---------------------------------------------------------------- test data

def _image(h, w, seed, channels=3):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, w)[None, :, None] * np.ones((h, 1, channels))
    return (ramp + rng.integers(0, 50, (h, w, channels))).astype(np.uint8)


def _encode(array, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array.squeeze()).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_folder(root):
    """3 classes: 4 small JPEGs each, plus a grey JPEG, an RGBA PNG and two 500x375 JPEGs."""
    for c, name in enumerate(["cat", "dog", "fox"]):
        for k in range(4):
            _write(f"{root}/train/{name}/img{k}.jpg", _encode(_image(48, 64, 10 * c + k), "JPEG", quality=90))
    _write(f"{root}/train/cat/grey.jpg", _encode(_image(40, 30, 99, channels=1), "JPEG"))
    _write(f"{root}/train/dog/alpha.png", _encode(_image(33, 44, 98, channels=4), "PNG"))
    for k in range(2):
        _write(f"{root}/train/fox/big{k}.JPEG", _encode(_image(375, 500, 90 + k), "JPEG", quality=85))
    return root


def index_of(source, name):
    return next(i for i in range(len(source)) if source.describe(i).endswith(os.sep + name))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("folder")))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfr"))
    summary = make_tfrecords.write_shards(folder, out, "train", num_shards=3, label_offset=1, log=None)
    return out, summary


@pytest.fixture
def bad_folder(tmp_path):
    good = _encode(_image(48, 64, 0), "JPEG")
    d = tmp_path / "bad" / "a"
    d.mkdir(parents=True)
    (d / "good.jpg").write_bytes(good)
    (d / "png_as.jpg").write_bytes(_encode(_image(20, 30, 1), "PNG"))
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (d / "notes.jpg").write_text("these are not pixels\n")
    (d / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (d / "folder.jpg").mkdir()  # a directory is not a sample
    (d / "readme.txt").write_text("ignored: not an image extension")
    return str(tmp_path / "bad")


def parse(payload):
    return tf.train.Example.FromString(payload).features.feature


# ---------------------------------------------------------------- image folders

def test_folder_index_labels_and_registry(folder):
    src = get_source("folder", split="train", data_dir=folder)
    assert isinstance(src, ImageFolderSource)
    assert src.class_names == ["cat", "dog", "fox"] and src.num_classes == 3
    assert len(src) == 16
    assert [src.label(i) for i in range(len(src))] == [0] * 5 + [1] * 5 + [2] * 6
    assert src.describe(index_of(src, "big1.JPEG")) == os.path.join(folder, "train", "fox", "big1.JPEG")
    assert (src.default_augment, src.default_eval) == ("imagenet", "imagenet_eval")


def test_folder_decodes_rgb_from_grey_png_and_large_jpeg(folder):
    src = ImageFolderSource(folder)
    grey = src.load(index_of(src, "grey.jpg"))
    assert grey.shape == (40, 30, 3) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    alpha = src.load(index_of(src, "alpha.png"))  # PNG is lossless: alpha dropped, RGB exact
    np.testing.assert_array_equal(alpha, _image(33, 44, 98, channels=4)[..., :3])
    i = index_of(src, "big0.JPEG")
    big = src.load(i)
    pil = np.asarray(Image.open(io.BytesIO(src.read(i))).convert("RGB"))  # another JPEG decoder
    assert big.shape == pil.shape == (375, 500, 3)
    assert np.abs(big.astype(int) - pil).max() <= 8  # IDCTs differ by a few levels only


def test_folder_flat_layout_and_split_aliases(tmp_path):
    _write(f"{tmp_path}/flat/b/x.png", _encode(_image(8, 8, 0), "PNG"))
    _write(f"{tmp_path}/flat/a/y.png", _encode(_image(8, 8, 1), "PNG"))
    flat = ImageFolderSource(f"{tmp_path}/flat", split="train")
    assert flat.class_names == ["a", "b"] and len(flat) == 2
    with pytest.raises(DataSourceError, match="no folder for split 'validation'"):
        ImageFolderSource(f"{tmp_path}/flat", split="validation")
    _write(f"{tmp_path}/split/val/a/y.png", _encode(_image(8, 8, 1), "PNG"))
    assert len(ImageFolderSource(f"{tmp_path}/split", split="validation")) == 1
    with pytest.raises(DataSourceError, match="found val"):
        ImageFolderSource(f"{tmp_path}/split", split="train")  # split folders exist, train is not one


@pytest.mark.parametrize("name,reason", [
    ("empty.jpg", "empty"),
    ("truncated.jpg", "cannot decode JPEG"),
    ("notes.jpg", "not a JPEG/PNG"),
    ("dangling.jpg", "cannot read"),
])
def test_folder_corrupt_samples(bad_folder, name, reason):
    src = ImageFolderSource(bad_folder)
    i = index_of(src, name)
    with pytest.raises(CorruptSampleError, match=reason) as e:
        src.load(i)
    assert e.value.where == os.path.join(bad_folder, "a", name)


def test_folder_png_named_jpg_decodes_and_dirs_are_skipped(bad_folder):
    src = ImageFolderSource(bad_folder)
    assert not any(src.describe(i).endswith("folder.jpg") for i in range(len(src)))
    assert len(src) == 6  # readme.txt is not indexed either
    np.testing.assert_array_equal(src.load(index_of(src, "png_as.jpg")), _image(20, 30, 1))


def test_folder_file_removed_after_indexing(bad_folder):
    src = ImageFolderSource(bad_folder)
    i = index_of(src, "good.jpg")
    os.remove(src.describe(i))
    with pytest.raises(CorruptSampleError, match="cannot read: No such file"):
        src.read(i)


def test_folder_location_errors(tmp_path):
    with pytest.raises(DataSourceError, match=str(tmp_path / "missing")):
        get_source("folder", data_dir=str(tmp_path / "missing"))
    (tmp_path / "noclasses").mkdir()
    with pytest.raises(DataSourceError, match="no class folders"):
        ImageFolderSource(str(tmp_path / "noclasses"))
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no .jpg/.jpeg/.png images in any"):
        ImageFolderSource(str(tmp_path / "noimages"))


def test_folder_empty_class(tmp_path):
    _write(f"{tmp_path}/d/a/x.jpg", _encode(_image(8, 8, 0), "JPEG"))
    _write(f"{tmp_path}/d/c/x.jpg", _encode(_image(8, 8, 0), "JPEG"))
    (tmp_path / "d" / "b").mkdir()
    with pytest.raises(DataSourceError, match=f"{tmp_path}/d/b: class folder has no"):
        ImageFolderSource(str(tmp_path / "d"))
    src = ImageFolderSource(str(tmp_path / "d"), empty_class="ignore")
    assert src.class_names == ["a", "b", "c"] and [src.label(0), src.label(1)] == [0, 2]


# ---------------------------------------------------------------- CRC32C

def test_crc32c_matches_reference_and_tf_writer(tmp_path):
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert tfrecord.crc32c(b"") == 0
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    path = str(tmp_path / "r.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(data)
    raw = open(path, "rb").read()
    assert tfrecord.masked_crc32c(raw[:8]) == struct.unpack("<I", raw[8:12])[0]
    assert tfrecord.masked_crc32c(raw[12:-4]) == struct.unpack("<I", raw[-4:])[0]


# ---------------------------------------------------------------- make_tfrecords + TFRecordSource

def test_write_shards_layout_and_features(shards):
    out, summary = shards
    names = [f"train-{k:05d}-of-00003" for k in range(3)]
    assert sorted(os.listdir(out)) == ["index"] + names
    assert sorted(os.listdir(f"{out}/index")) == [f"{n}.idx" for n in names]  # start-up reads these, no scan
    assert summary.written == 16 and summary.skipped == [] and summary.per_shard == [6, 5, 5]
    feature = parse(TFRecordSource(out, label_offset=-1).read(0))
    for key in ["image/encoded", "image/class/label", "image/format", "image/height", "image/width",
                "image/filename", "image/class/text"]:
        assert key in feature, key
    assert feature["image/format"].bytes_list.value[0] == b"JPEG"


def test_tfrecord_round_trip_matches_folder(folder, shards):
    out, _ = shards
    tfr = get_source("tfrecord", split="train", data_dir=out, num_classes=3, label_offset=-1)
    ref = ImageFolderSource(folder)
    assert len(tfr) == len(ref) == 16
    seen = set()
    for i in range(len(tfr)):
        feature = parse(tfr.read(i))
        cls = feature["image/class/text"].bytes_list.value[0].decode()
        name = feature["image/filename"].bytes_list.value[0].decode()
        j = index_of(ref, os.path.join(cls, name))
        seen.add(j)
        assert tfr.label(i) == ref.label(j)
        image = tfr.load(i)
        assert (feature["image/height"].int64_list.value[0], feature["image/width"].int64_list.value[0]) \
            == image.shape[:2]
        if name.endswith(".png"):  # re-encoded as JPEG: close, not equal
            assert feature["image/encoded"].bytes_list.value[0][:3] == b"\xff\xd8\xff"
            assert np.abs(image.astype(int) - ref.load(j)).mean() < 4  # ~9 with chroma subsampling
        else:  # the same JPEG bytes decode to the same pixels
            np.testing.assert_array_equal(image, ref.load(j))
    assert seen == set(range(16))
    # Shards hold 6, 5, 5 records (16 dealt round-robin); ids run through shard 0 first.
    assert [tfr.describe(i)[len(out) + 1:] for i in (5, 6, 15)] == \
        ["train-00000-of-00003:5", "train-00001-of-00003:0", "train-00002-of-00003:4"]


def test_tfrecord_label_offset_and_out_of_range(shards):
    out, _ = shards  # written with label_offset=1 (TF-models convention): labels 1..3
    src = TFRecordSource(out, num_classes=3)
    fox = [i for i in range(len(src)) if parse(src.read(i))["image/class/label"].int64_list.value[0] == 3]
    assert len(fox) == 6
    with pytest.raises(CorruptSampleError, match=r"label 3 \(stored 3, label_offset=0\) outside \[0, 3\)") as e:
        src.load(fox[0])
    assert e.value.where == src.describe(fox[0])
    with pytest.raises(CorruptSampleError, match="label 3"):
        src.label(fox[1])
    assert TFRecordSource(out, num_classes=3, label_offset=-1).label(fox[0]) == 2


def _copy_shards(out, tmp_path):
    """A copy of the shards without their index files: damage is then found by scanning."""
    dst = str(tmp_path / "copy")
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("index"))
    return dst, f"{dst}/train-00001-of-00003"


def test_tfrecord_flipped_byte_names_the_record(shards, tmp_path):
    dst, shard = _copy_shards(shards[0], tmp_path)
    offsets, lengths, _ = tfrecord.scan_tfrecord(shard)
    k = 2
    with open(shard, "r+b") as f:  # flip a byte in the middle of the JPEG bytes of record k
        f.seek(int(offsets[k] + lengths[k] // 2))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    src = TFRecordSource(dst)
    i = next(i for i in range(len(src)) if src.describe(i) == f"{shard}:{k}")
    with pytest.raises(CorruptSampleError, match="data CRC mismatch") as e:
        src.read(i)
    assert e.value.where == f"{shard}:{k}"
    for j in (i - 1, i + 1):  # neighbours in the same shard are intact
        assert src.describe(j).startswith(shard) and src.load(j).ndim == 3


def test_tfrecord_truncated_tail(shards, tmp_path):
    dst, shard = _copy_shards(shards[0], tmp_path)
    offsets, lengths, _ = tfrecord.scan_tfrecord(shard)
    last = int(offsets[-1]) - 12
    os.truncate(shard, int(offsets[-1] + lengths[-1] // 2))
    with pytest.raises(DataSourceError, match=f"{shard}: truncated record at byte {last}.*on_truncated='skip'"):
        TFRecordSource(dst)
    src = TFRecordSource(dst, on_truncated="skip")
    assert len(src) == 15 and len(src.problems) == 1 and shard in src.problems[0]
    assert all(src.load(i).shape[2] == 3 for i in range(len(src)))
    with open(shard, "r+b") as f:  # a damaged length field: framing cannot continue either
        f.seek(int(offsets[1]) - 12)
        f.write(b"\xff")
    with pytest.raises(DataSourceError, match=f"damaged record header at byte {int(offsets[1]) - 12}"):
        TFRecordSource(dst)


def test_tfrecord_location_errors(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        TFRecordSource(str(tmp_path / "missing"))
    with pytest.raises(DataSourceError, match="no TFRecord shards matching validation-\\*-of-\\*.*ba-make-tfrecords"):
        TFRecordSource(str(tmp_path), split="validation")


def test_write_shards_skips_bad_files_or_stops(bad_folder, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert make_tfrecords.main(["--src", bad_folder, "--out", out, "--num-shards", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 images written, 4 skipped" in printed and "skipped " + os.path.join(bad_folder, "a", "empty.jpg") in printed
    assert len(TFRecordSource(out, num_classes=1)) == 2
    assert make_tfrecords.main(["--src", bad_folder, "--out", str(tmp_path / "o2"), "--strict"]) == 1
    assert "error: " in capsys.readouterr().err
    assert not os.listdir(tmp_path / "o2")  # the partial shard is removed


# ---------------------------------------------------------------- tfds

class BaDistTinyImages(tfds.core.GeneratorBasedBuilder):
    """Image k is filled with 10*k, has shape (10+k, 20-k, 3) and label k % 3."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                 "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
        for k in range(n):
            yield k, {"image": np.full((10 + k, 20 - k, 3), 10 * k, np.uint8), "label": k % 3}


def _check_tiny(src):
    assert len(src) == 6 and src.num_classes == 3
    seen = set()
    for i in range(len(src)):
        image = src.decode(src.read(i), i)
        k = int(image[0, 0, 0]) // 10
        assert image.shape == (10 + k, 20 - k, 3) and src.label(i) == k % 3
        seen.add(k)
    assert seen == set(range(6))


def test_tfds_cifar10_mocked_in_memory():
    with tfds.testing.mock_data(num_examples=10):
        src = get_source("tfds", split="train", name="cifar10")  # as configs pass it
    assert isinstance(src.source, ArraySource) and src.in_memory and len(src) == 10
    assert all(0 <= src.label(i) < 10 for i in range(len(src))) and src.num_classes == 10
    assert src.load(3).shape == (32, 32, 3) and src.load(3).dtype == np.uint8
    np.testing.assert_array_equal(src.decode(src.read(3), 3), src.load(3))
    assert (src.default_augment, src.default_eval, src.image_shape) == ("cifar", "none", (32, 32, 3))


def test_tfds_local_array_record_via_download(tmp_path):
    # download=True runs the real download_and_prepare (offline here: nothing to fetch).
    src = TFDSSource("ba_dist_tiny_images", data_dir=str(tmp_path), download=True)
    assert not src.in_memory and type(src.source).__name__ == "_TFDSRecords"
    assert src.image_shape is None and src.describe(0) == "tfds:ba_dist_tiny_images/train[0]"
    _check_tiny(src)


def test_tfds_local_tfrecord_prepared_falls_back_to_framing(tmp_path):
    BaDistTinyImages(data_dir=str(tmp_path)).download_and_prepare(file_format="tfrecord")
    src = TFDSSource("ba_dist_tiny_images", data_dir=str(tmp_path))
    assert isinstance(src.source, TFRecordSource)
    _check_tiny(src)
    with pytest.raises(DataSourceError, match=r"has splits \['train'\], not 'validation'"):
        TFDSSource("ba_dist_tiny_images", split="validation", data_dir=str(tmp_path))


def test_tfds_not_prepared_or_unknown(tmp_path):
    with pytest.raises(DataSourceError, match=f"tfds build ba_dist_tiny_images --data_dir={tmp_path} "
                                              "--file_format=array_record"):
        TFDSSource("ba_dist_tiny_images", data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match=f"tfds build cifar10 --data_dir={tmp_path}` or pass download=True"):
        TFDSSource("cifar10", data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="no dataset 'no_such_dataset'"):
        TFDSSource("no_such_dataset")
    with pytest.raises(DataSourceError, match="needs the tfds dataset name"):
        get_source("tfds")
