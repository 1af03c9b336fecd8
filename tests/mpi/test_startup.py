"""Start-up of TFRecord data under mpirun: only group readers open training shards.

Run on every rank by tests/test_multirank.py (2 ranks in one group, 4 ranks in
groups of 2). File opens are counted with Python's audit hook (``open`` events
cover ``open()`` and ``os.open``), so the assertion is about the real calls.
"""
import os
import sys

import numpy as np
import pytest

from ba_dist import config as config_lib
from ba_dist import dist
from ba_dist.data import build as data_build
from ba_dist.data.sources import DataSourceError, RemoteSource

M_RANKS = int(os.environ.get("BA_DIST_TEST_M_RANKS", "1"))
M_LOCAL = int(os.environ.get("BA_DIST_TEST_M_LOCAL", "1"))
OPENED: list = []


def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed; it only appends paths


@pytest.fixture(scope="module")
def ctx():
    return dist.init(m_ranks=M_RANKS, m_local=M_LOCAL)


@pytest.fixture(scope="module")
def shards(ctx, tmp_path_factory):
    """Rank 0 writes 2 classes x 8 JPEGs as train (4 shards) and validation (2 shards), with index files."""
    root = None
    if ctx.rank == 0:
        from PIL import Image

        from ba_dist.data.make_tfrecords import write_shards
        root = tmp_path_factory.mktemp("startup")
        rng = np.random.default_rng(0)
        for split in ("train", "validation"):
            for c in range(2):
                d = root / "folder" / split / f"class{c}"
                d.mkdir(parents=True)
                for k in range(8):
                    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / f"{k}.jpg")
        write_shards(str(root / "folder"), str(root / "tfr"), "train", num_shards=4, log=None)
        write_shards(str(root / "folder"), str(root / "tfr"), "validation", num_shards=2, log=None)
        write_shards(str(root / "folder"), str(root / "tfr1"), "train", num_shards=2, label_offset=5, log=None)
        write_shards(str(root / "folder"), str(root / "tfr1"), "validation", num_shards=1, label_offset=5, log=None)
    return ctx.world_comm.bcast(str(root) if root else None, root=0)


def _config(data_dir):
    c = config_lib.base_config()
    c.input.dataset = "tfrecord"
    c.input.source_kwargs.data_dir = data_dir
    c.input.source_kwargs.num_classes = 2
    c.input.train_split, c.input.eval_split = "train", "validation"
    c.input.augment, c.input.eval_transform = "digits", "none"
    c.input.broadcast = "decoded"
    c.input.batch_size = 4
    c.input.eval_batch_size = 4
    c.ba.multiplicity, c.ba.m_ranks = M_RANKS * M_LOCAL, M_RANKS
    c.model.ghost_batch_size = 0
    return c


def test_non_readers_open_no_training_shard(ctx, shards):
    t = ctx.topology
    cfg = _config(f"{shards}/tfr")
    lay = config_lib.layout(cfg, t.world_size)
    OPENED.clear()
    data = data_build.build(cfg, lay, ctx)
    ds, loader = data.train_dataset(0, 0, 2)
    batches = [b for b in ds]
    loader.stop()
    opened_train = {p for p in OPENED if os.path.basename(p).startswith("train-") and not p.endswith(".idx")}
    opened_index = {p for p in OPENED if p.endswith(".idx") and "/train-" in p}
    everyone = ctx.world_comm.allgather((len(data.train_source), data.steps_per_epoch, data.input_shape,
                                         len(opened_train), len(batches)))
    assert len({e[:3] for e in everyone}) == 1  # the whole world agrees on length, steps and input shape
    assert everyone[0][0] == 16 and all(e[4] == 2 for e in everyone)
    if t.is_reader or M_RANKS == 1:
        assert not isinstance(data.train_source, RemoteSource)
        assert opened_train and len(opened_index) == 4  # one index file per shard, no header scan
    else:
        assert isinstance(data.train_source, RemoteSource)
        assert opened_train == set() and opened_index == set()
    # every rank evaluates, so every rank has the validation split
    assert len(data.eval_source) == 16


def test_label_base_mismatch_exits_every_rank_alike(ctx, shards):
    cfg = _config(f"{shards}/tfr1")  # stored labels 5..6 for 2 classes
    lay = config_lib.layout(cfg, ctx.topology.world_size)
    with pytest.raises(DataSourceError, match=r"input\.source_kwargs\.label_offset=0.*outside \[0, 2\)"):
        data_build.build(cfg, lay, ctx)
    dist.barrier()  # nobody is left waiting for a reader that gave up
