"""Start-up of TFRecord data: label base, index files, open-file bound, tfds imagenet2012 switch.

Shards are real files: written by the project's tools (``ba-make-tfrecords``)
and by hand in the TF-models converter format (``image/encoded``,
``image/class/label`` 1..1000, ``image/class/synset``, ``train-00000-of-00004``).
The multi-rank part (non-reader ranks open no training shard) runs in
tests/mpi/test_pipeline.py.
"""
import io
import os
import subprocess
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ba_dist.data import build as data_build
from ba_dist.data import make_tfrecords, tfrecord, tfrecord_index
from ba_dist.data.sources import DataSourceError, get_source
from ba_dist.data.tfrecord import TFRecordSource
from launcher import PYTHON, REPO, rank_env

WNIDS = tfrecord._imagenet_wnids()
WNID_LIST = sorted(WNIDS, key=WNIDS.get)


def _jpeg(seed, h=20, w=24):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_tf_models_shards(out, split, classes, num_shards, synset=True):
    """Shards as the TF-models ``build_imagenet_data.py`` writes them: 1-based labels, ``split-0000k-of-0000n``.

    ``classes`` are 0-based ImageNet classes, dealt round-robin to the shards.
    """
    os.makedirs(out, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(out, f"{split}-{k:05d}-of-{num_shards:05d}"))
               for k in range(num_shards)]
    for n, c in enumerate(classes):
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_jpeg(n)])),
                   "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
                   "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[c + 1]))}
        if synset:
            feature["image/class/synset"] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[WNID_LIST[c].encode()]))
        ex = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[n % num_shards].write(ex.SerializeToString())
    for w in writers:
        w.close()
    return out


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    """ImageNet-format shards of classes 5..28 (never 0 or 999: only the synsets reveal the base)."""
    root = str(tmp_path_factory.mktemp("tfmodels"))
    write_tf_models_shards(root, "train", list(range(5, 29)), 4)
    write_tf_models_shards(root, "validation", list(range(5, 13)), 2)
    return root


# ---------------------------------------------------------------- label base

def test_tf_models_shards_read_with_offset_0_fail_naming_key_and_fix(tf_models):
    src = TFRecordSource(tf_models, "train")  # label_offset=0, num_classes=1000
    assert src.label(0) == 6  # wrong by one, and in range: training would mislabel silently
    start = time.time()
    with pytest.raises(DataSourceError, match=r"input\.source_kwargs\.label_offset=0.*synset.*"
                                              r"label_offset=-1 \(1-based labels") as e:
        src.check()
    assert time.time() - start < 5 and tf_models in str(e.value)
    TFRecordSource(tf_models, "train", label_offset=-1).check()
    TFRecordSource(tf_models, "validation", label_offset=-1).check()


def test_label_base_without_synsets_is_caught_by_range(tmp_path):
    # 4 classes stored 1..4; class 3 (stored 4) is the first record of shard 1, which the check samples
    root = write_tf_models_shards(str(tmp_path), "train", [0, 3, 1, 2, 0, 1], 2, synset=False)
    with pytest.raises(DataSourceError, match=r"stored label 4 \+ label_offset 0 is outside \[0, 4\).*"
                                              r"label_offset=-1"):
        TFRecordSource(root, num_classes=4).check()
    TFRecordSource(root, num_classes=4, label_offset=-1).check()
    # one damaged record among good ones (stored 9 of 4 classes, no base explains it) is a corrupt
    # sample for on_corrupt, not a start-up error
    root = write_tf_models_shards(str(tmp_path / "one_bad"), "train", [0, 8, 1, 2, 0, 1], 2, synset=False)
    TFRecordSource(root, num_classes=4, label_offset=-1).check()


def _wnid_folder(root):
    for c in range(3):
        d = os.path.join(root, "train", WNID_LIST[c])
        os.makedirs(d)
        for k in range(3):
            with open(os.path.join(d, f"{k}.JPEG"), "wb") as f:
                f.write(_jpeg(10 * c + k))
    return root


def test_project_shards_zero_based_read_with_minus_one_fail(tmp_path):
    folder = _wnid_folder(str(tmp_path / "imagenet"))
    out = str(tmp_path / "tfr")
    make_tfrecords.write_shards(folder, out, "train", num_shards=2, log=None)  # 0-based, synset = folder name
    with pytest.raises(DataSourceError, match=r"label_offset=-1.*set --config\.input\.source_kwargs\."
                                              r"label_offset=0 \(0-based"):
        TFRecordSource(out, label_offset=-1).check()
    TFRecordSource(out).check()
    make_tfrecords.write_shards(folder, str(tmp_path / "tfr1"), "train", num_shards=2, label_offset=1, log=None)
    TFRecordSource(str(tmp_path / "tfr1"), label_offset=-1).check()


IMAGENET_TRAIN = [PYTHON, "-m", "ba_dist.train", "--config", "configs/resnet50_imagenet.py:ba",
                  "--config.ba.m_ranks=1", "--config.input.batch_size=8", "--config.model.ghost_batch_size=8",
                  "--config.model.name=digits_cnn"]


def test_ba_train_exits_2_at_start_up_on_a_label_base_mismatch(tf_models, tmp_path):
    res = subprocess.run(IMAGENET_TRAIN + [f"--workdir={tmp_path / 'wd'}",
                                           f"--config.input.source_kwargs.data_dir={tf_models}",
                                           "--config.input.source_kwargs.label_offset=0"],
                         capture_output=True, text=True, env=rank_env(), cwd=str(REPO), timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "data error: label base does not match input.source_kwargs.label_offset=0" in res.stderr
    assert "label_offset=-1" in res.stderr


# ---------------------------------------------------------------- index files

def test_index_tool_matches_scan_and_start_up_reads_no_header(tf_models, tmp_path, caplog):
    tfrecord._SAID.clear()  # said once per process: earlier tests may have said it
    scanned = TFRecordSource(tf_models, "train", label_offset=-1)
    assert scanned.scanned == 4
    assert "ba-tfrecord-index" in caplog.text and "4 of 4 TFRecord shards" in caplog.text
    assert tfrecord_index.main([tf_models]) == 0
    assert sorted(os.listdir(os.path.join(tf_models, "index"))) == \
        [f"train-{k:05d}-of-00004.idx" for k in range(4)] + [f"validation-{k:05d}-of-00002.idx" for k in range(2)]
    indexed = TFRecordSource(tf_models, "train", label_offset=-1)
    assert indexed.scanned == 0 and len(indexed) == len(scanned) == 24
    np.testing.assert_array_equal(indexed._offset, scanned._offset)
    np.testing.assert_array_equal(indexed._length, scanned._length)
    assert [indexed.label(i) for i in range(24)] == [scanned.label(i) for i in range(24)]
    # the glob of a split never picks up the index folder
    assert all("index" not in s for s in indexed.shards)


def _indexed_copy(src_root, tmp_path):
    import shutil
    dst = str(tmp_path / "copy")
    shutil.copytree(src_root, dst, ignore=shutil.ignore_patterns("index"))
    tfrecord_index.index_shards(dst, log=None)
    return dst, f"{dst}/train-00001-of-00004"


def test_stale_or_damaged_index_is_an_error_naming_the_fix(tf_models, tmp_path):
    dst, shard = _indexed_copy(tf_models, tmp_path)
    with open(shard, "ab") as f:  # the shard grew after indexing (rewritten with more records)
        f.write(b"\0" * 32)
    with pytest.raises(DataSourceError, match=f"stale index.*{shard} now has.*ba-tfrecord-index {dst}"):
        TFRecordSource(dst, label_offset=-1)
    # ... whose tail is now damaged: the tool removes its index, and the scan says what is wrong
    assert tfrecord_index.index_shards(dst, log=None) == [f"{shard}: damaged record header at byte 6789 "
                                                          "(length CRC mismatch)"]
    assert not os.path.exists(tfrecord.index_path(shard))
    with pytest.raises(DataSourceError, match="damaged record header at byte 6789"):
        TFRecordSource(dst, label_offset=-1)
    dst2, shard2 = _indexed_copy(tf_models, tmp_path / "b")
    idx = tfrecord.index_path(shard2)
    raw = bytearray(open(idx, "rb").read())
    raw[-9] ^= 0x01  # one record length off by a bit
    open(idx, "wb").write(bytes(raw))
    with pytest.raises(DataSourceError, match="damaged index.*do not tile"):
        TFRecordSource(dst2, label_offset=-1)
    open(idx, "wb").write(b"garbage")
    with pytest.raises(DataSourceError, match="not a ba_dist TFRecord index"):
        TFRecordSource(dst2, label_offset=-1)


def test_index_tool_cli(tmp_path):
    env = rank_env()
    res = subprocess.run([PYTHON, "-m", "ba_dist.data.tfrecord_index", "--help"], capture_output=True, text=True,
                         env=env, cwd=str(REPO), timeout=300)
    assert res.returncode == 0 and "ba-tfrecord-index" in res.stdout and "--workers" in res.stdout
    res = subprocess.run([PYTHON, "-m", "ba_dist.data.tfrecord_index", str(tmp_path)], capture_output=True,
                         text=True, env=env, cwd=str(REPO), timeout=300)
    assert res.returncode == 2 and "no TFRecord shards" in res.stderr


# ---------------------------------------------------------------- open files

def _fd_target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def test_open_shards_are_bounded(tf_models):
    src = TFRecordSource(tf_models, "train", label_offset=-1, max_open_files=2)
    assert src.open_files == 0  # nothing is opened before the first read (the index was read and closed)
    used = set()
    for i in np.random.default_rng(0).permutation(len(src)):
        assert src.load(int(i)).shape == (20, 24, 3)
        assert src.open_files <= 2  # the kernel agrees: each cached descriptor is that shard
        assert all(_fd_target(fd) == src.shards[k] for k, fd in src._fds.items())
        used |= set(src._fds)
    assert used == set(range(4)) and src.open_files == 2
    fds = list(src._fds.values())
    src.close()
    assert src.open_files == 0 and not any(_fd_target(fd) in src.shards for fd in fds)


EMFILE_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    from ba_dist.data.tfrecord import TFRecordSource
    from ba_dist.data.sources import DataSourceError
    src = TFRecordSource(sys.argv[1], "train", label_offset=-1, max_open_files=int(sys.argv[2]))
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        for i in range(len(src)):
            src.load(i)
    except DataSourceError as e:
        print("DataSourceError:", e)
        sys.exit(2)
    print("read", len(src), "open", src.open_files)
""")


def test_emfile_is_reported_as_too_many_open_files(tf_models):
    def run(max_open):
        return subprocess.run([PYTHON, "-c", EMFILE_SCRIPT, tf_models, str(max_open)], capture_output=True,
                              text=True, env=rank_env(), cwd=str(REPO), timeout=300)
    res = run(8)  # 4 shards wanted, one descriptor left under the limit
    assert res.returncode == 2, res.stdout + res.stderr
    assert "too many open files in this process (ulimit -n =" in res.stdout
    assert "max_open_files" in res.stdout and "CorruptSample" not in res.stdout + res.stderr
    res = run(1)  # a cache of one fits
    assert res.returncode == 0 and "read 24 open 1" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------- tfds imagenet2012: one switch

def _imagenet_cfg(**overrides):
    """configs/resnet50_imagenet.py:ba with ``--config.KEY=VALUE`` overrides, set as ba-train sets them."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("resnet50_imagenet", REPO / "configs" / "resnet50_imagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("ba")
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[last] = value  # a locked ConfigDict refuses keys it does not have, as the flag parser does
    return cfg


def test_imagenet_config_switched_to_tfds_imagenet2012_mock(tmp_path):
    from ba_dist import config as config_lib
    from ba_dist import dist
    # the one documented switch; the config's label_offset (TFRecord-only) is ignored by tfds
    cfg = _imagenet_cfg(**{"input.dataset": "tfds", "ba.m_ranks": 1, "input.batch_size": 8,
                           "model.ghost_batch_size": 8, "input.source_kwargs.data_dir": str(tmp_path)})
    assert cfg.input.source_kwargs.name == "imagenet2012"
    config_lib.validate(cfg)
    lay = config_lib.layout(cfg, 1)
    ctx = dist.Context(dist.make_topology(0, 1), None, None, None)
    with tfds.testing.mock_data(num_examples=300):
        data = data_build.build(cfg, lay, ctx)
        assert data.num_classes == 1000 and len(data.train_source) == 300
        assert data.train_source.name == "tfds:imagenet2012" and data.input_shape == (224, 224, 3)
        assert data.spec.augment == "imagenet"
        ds, loader = data.train_dataset(0, 0, 1)
        images, labels = next(iter(ds))[:2]
        loader.stop()
        assert images.shape[1:] == (224, 224, 3) and labels.shape[0] == images.shape[0] == 8 * 4  # B x M
    # a num_classes that tfds contradicts is an error, not a silent model of the wrong width
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(DataSourceError, match="has 1000 classes, but input.source_kwargs.num_classes=10"):
            get_source("tfds", name="imagenet2012", num_classes=10, data_dir=str(tmp_path))
