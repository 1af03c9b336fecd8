"""BA for sequence models under real mpirun: every rank runs this file at once.

Launched by tests/test_seq.py as ``mpirun -np 2 python -m pytest tests/seq_ranks.py``
(named so that the single-process run does not collect it). One group of
``m_ranks = 2`` ranks with ``m_local = 2`` copies each: M = 4, every rank holds
the same unique sequences. Expected values are derived from rank and size.
Outputs go to $BA_SEQ_TEST_WORKDIR (shared by the ranks, read afterwards by
tests/test_seq.py).
"""
import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ba_dist import dist, fit
from ba_dist.config import load_config_file
from ba_dist.seq import batching, data, dropout
from ba_dist.seq import evaluate as seq_eval
from ba_dist.seq import train as seq_train
from ba_dist.seq.lstm_lm import LSTMLanguageModel
from ba_dist.seq.transformer import Transformer

M_RANKS, M_LOCAL = 2, 2
REPO = Path(__file__).resolve().parents[1]
WORKDIR = Path(os.environ.get("BA_SEQ_TEST_WORKDIR", "/tmp/ba_seq_ranks"))


@pytest.fixture(scope="module")
def ctx():
    c = dist.init(m_ranks=M_RANKS, m_local=M_LOCAL)
    if c.size % M_RANKS:
        pytest.skip(f"needs a world size divisible by {M_RANKS}")
    return c


def _gather(ctx, obj):
    return ctx.world_comm.allgather(obj)


def _copies_differ(out, m_local):
    blocks = np.split(np.asarray(out), m_local)
    return all(not np.allclose(blocks[i], blocks[j]) for i in range(m_local) for j in range(i + 1, m_local))


def test_group_sees_identical_tokens_and_every_copy_its_own_dropout(ctx):
    """The BA property: all M copies of a sequence, on any rank of the group, same tokens, different masks."""
    t, hvd = ctx.topology, ctx.hvd
    tf.keras.utils.set_random_seed(0)  # same seed everywhere: the masks must still differ across ranks
    ids = np.random.default_rng(0).integers(3, 50, 2000).astype(np.int32)
    lm_batcher = batching.LMBatcher(ids, batch_size=4 * t.num_groups, bptt=6, num_groups=t.num_groups,
                                    group_id=t.group_id, m_local=M_LOCAL)
    x, _ = lm_batcher.batch(step=3)
    src = data.Ragged.from_lists([list(range(3, 3 + n)) + [1] for n in np.arange(40) % 7 + 2])
    mt_batcher = batching.TranslationBatcher(src, src, 24, t.num_groups, t.group_id, M_LOCAL, bos=60, seed=1)
    (s, ti), _ = mt_batcher.batch(epoch=0, step=0)

    lm = LSTMLanguageModel(60, embed_dim=8, hidden=16, num_layers=2)
    mt = Transformer(61, d_model=16, num_heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1,
                     dropout=0.3, attention_dropout=0.1, relu_dropout=0.1)
    lm(x)
    mt((s, ti))
    hvd.broadcast_variables(lm.variables + mt.variables, root_rank=0)
    seed = dropout.step_seed(7, step=3, rank=t.rank)
    lm_train = lm(x, training=True, seed=seed, copies=M_LOCAL)[0].numpy()
    mt_train = mt((s, ti), training=True, seed=seed, copies=M_LOCAL).numpy()
    lm_eval = lm(x, training=False)[0].numpy()
    mt_eval = mt((s, ti), training=False).numpy()

    # identical tokens: the m_local copies on this rank, and every rank of the group
    for arr in (x, s, ti):
        blocks = np.split(arr, M_LOCAL)
        assert all(np.array_equal(blocks[0], b) for b in blocks)
    everyone = _gather(ctx, (t.group_id, x, s, ti, lm_train, mt_train))
    mates = [e for e in everyone if e[0] == t.group_id]
    assert len(mates) == M_RANKS
    for _, x2, s2, ti2, _, _ in mates:
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(s2, s)
        np.testing.assert_array_equal(ti2, ti)
    # different masks: every copy of every rank computes something else in training...
    lm_all = np.concatenate([m[4] for m in mates])
    mt_all = np.concatenate([m[5] for m in mates])
    assert _copies_differ(lm_all, M_RANKS * M_LOCAL)
    assert _copies_differ(mt_all, M_RANKS * M_LOCAL)
    # ...and exactly the same thing without dropout
    assert not _copies_differ(lm_eval, M_LOCAL) and not _copies_differ(mt_eval, M_LOCAL)
    np.testing.assert_allclose(np.split(lm_eval, M_LOCAL)[0], np.split(lm_eval, M_LOCAL)[1], rtol=1e-6)
    # a rank's masks are a pure function of (seed, step, rank, copy): recomputing gives the same
    np.testing.assert_array_equal(lm(x, training=True, seed=seed, copies=M_LOCAL)[0].numpy(), lm_train)


def test_every_rank_runs_the_same_number_of_steps(ctx):
    t = ctx.topology
    lens = np.random.default_rng(3).integers(2, 30, 500)
    src = data.Ragged.from_lists([[5] * n for n in lens])
    b = batching.TranslationBatcher(src, src, 64, t.num_groups, t.group_id, M_LOCAL, bos=9, seed=2)
    steps = _gather(ctx, b.steps_per_epoch)
    assert len(set(steps)) == 1
    firsts = _gather(ctx, (t.group_id, b.batch_ids(1, 0).tolist()))
    for g, ids in firsts:
        if g == t.group_id:
            assert ids == b.batch_ids(1, 0).tolist()


def _cfg(name, **overrides):
    cfg = load_config_file(str(REPO / "configs" / name))
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def _rows(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_lstm_lm_trains_with_ba_and_evaluates_from_checkpoint(ctx):
    cfg = _cfg("seq_lstm_demo.py", **{
        "input.batch_size": 32, "input.bptt": 35, "train.epochs": 2, "model.kwargs.embed_dim": 32,
        "model.kwargs.hidden": 64, "model.kwargs.num_layers": 2, "train.verbose": 0, "eval.final_splits": "valid"})
    wd = WORKDIR / "lm"
    assert seq_train.main(cfg, str(wd)) == 0
    ctx.world_comm.Barrier()
    result = json.loads((wd / "result.json").read_text())
    rows = _rows(wd)
    assert [r["epoch"] for r in rows] == [1, 2]           # one row per epoch: only rank 0 writes
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    assert result["valid_ppl"] < 1000 < 2540              # uniform over the vocabulary is 2540
    # the latest checkpoint reproduces the final validation perplexity exactly (restore + sharded eval)
    res = seq_eval.evaluate_checkpoint(cfg, str(wd), split="valid", which="latest")
    assert res["valid_ppl"] == pytest.approx(result["valid_ppl"], rel=1e-5)
    assert res["valid_tokens"] == result["valid_tokens"]


def test_transformer_trains_with_ba_and_bleu_with_beam_4(ctx):
    cfg = _cfg("seq_transformer_demo.py", **{
        "input.corpus_kwargs.num_examples": {"train": 1200, "valid": 40, "test": 40},
        "input.max_tokens": 256, "input.eval_batch_size": 20, "train.epochs": 2, "train.verbose": 0,
        "model.kwargs.d_model": 32, "model.kwargs.ffn_dim": 64, "model.kwargs.encoder_layers": 1,
        "model.kwargs.decoder_layers": 1, "optim.warmup_steps": 60,
        "eval.final_splits": ""})   # BLEU once, from the checkpoint below (a beam-search trace costs)
    assert cfg.eval.beam_size == 4 and cfg.eval.alpha == 0.6
    wd = WORKDIR / "mt"
    assert seq_train.main(cfg, str(wd)) == 0
    ctx.world_comm.Barrier()
    rows = _rows(wd)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert rows[-1]["val_ppl"] < rows[0]["val_ppl"]
    res = seq_eval.evaluate_checkpoint(cfg, str(wd), split="valid", which="latest")
    assert 0.0 <= res["valid_bleu"] <= 100.0 and res["bleu_sentences"] == 40
    assert res["valid_ppl"] == pytest.approx(rows[-1]["val_ppl"], rel=1e-5)   # the restored weights are the trained ones
    assert _gather(ctx, res["valid_bleu"]) == [res["valid_bleu"]] * ctx.size   # one BLEU, on every rank
    if ctx.topology.is_chief:
        hyps = (wd / "valid.hyp.txt").read_text().splitlines()
        assert len(hyps) == 40 and math.isfinite(res["valid_loss"])


def _final_weights(workdir):
    last = sorted((workdir / "checkpoints").glob("ckpt-*"))[-1]
    reader = tf.train.load_checkpoint(str(last / "state"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "net/" in k or "optimizer/" in k}


def test_sigusr1_to_one_rank_stops_with_checkpoint_and_resumes_bitwise(ctx):
    """The fit loop's stop/requeue/resume for sequences: last, since it turns on op determinism."""
    cfg = _cfg("seq_transformer_demo.py", **{
        "input.corpus_kwargs.num_examples": {"train": 200, "valid": 20, "test": 20},
        "input.max_tokens": 256, "train.epochs": 2, "train.verbose": 0, "train.deterministic": True,
        "train.keep_checkpoints": 10, "train.eval_every": 2, "model.kwargs.d_model": 16,
        "model.kwargs.ffn_dim": 32, "model.kwargs.encoder_layers": 1, "model.kwargs.decoder_layers": 1,
        "optim.warmup_steps": 20, "eval.final_splits": ""})
    straight, stopped = WORKDIR / "mt_straight", WORKDIR / "mt_stopped"
    assert seq_train.main(cfg, str(straight)) == 0
    if ctx.topology.is_chief:   # the same vocabulary and encoded data: not built twice
        shutil.copytree(straight / "data", stopped / "data")
    ctx.world_comm.Barrier()
    # SIGUSR1 to the last rank only, during start-up: recorded, honoured after the first step on EVERY rank
    fit.catch_stop_signals_early()
    if ctx.rank == ctx.size - 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    assert seq_train.main(cfg, str(stopped)) == fit.REQUEUE_EXIT_CODE
    ckpts = sorted((stopped / "checkpoints").glob("ckpt-*"))
    assert [c.name for c in ckpts] == ["ckpt-000000001"]   # on disk on every rank's return (the barrier)
    meta = json.loads((ckpts[0] / "meta.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 1)
    ctx.world_comm.Barrier()   # every rank has seen the checkpoint before rank 0 may write more
    assert seq_train.main(cfg, str(stopped)) == 0   # resumes mid-epoch 0, then epoch 1
    ctx.world_comm.Barrier()
    a, b = _final_weights(straight), _final_weights(stopped)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [r["epoch"] for r in _rows(stopped)][-2:] == [1, 2]
