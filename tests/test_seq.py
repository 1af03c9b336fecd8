"""BA for sequence models (ba_dist/seq): unit tests in one process, then one real mpirun launch.

The mpirun launch runs tests/seq_ranks.py on 2 ranks (one group, M = 2 ranks x
2 copies): identical tokens / different dropout masks across all 4 copies,
lockstep batching, both models training with BA (loss down), and evaluation
(perplexity; BLEU with beam 4) from their checkpoints.
"""
import itertools
import json
import math
import sys

import numpy as np
import pytest
import tensorflow as tf

from launcher import PYTHON, REPO, mpirun, rank_env, run

from ba_dist.config import ConfigError, load_config_file
from ba_dist.seq import batching, beam, data, dropout, schedules
from ba_dist.seq import config as seq_config
from ba_dist.seq.lstm_lm import LSTMLanguageModel
from ba_dist.seq.train_step import token_losses
from ba_dist.seq.transformer import Transformer


# ----------------------------------------------------------------------------- dropout masks
def test_copies_get_different_masks_each_from_its_own_seed():
    seed = dropout.step_seed(3, step=10, rank=1)
    mask = dropout.dropout_mask([3 * 5, 40], 0.5, seed, copies=3).numpy()
    blocks = np.split(mask, 3)
    for i, j in itertools.combinations(range(3), 2):
        assert not np.array_equal(blocks[i], blocks[j])
    for c in range(3):  # copy c's rows are drawn from its own seed fold(seed, c), nothing else
        keep = tf.random.stateless_uniform([5, 40], seed=dropout.fold(seed, c)).numpy() >= 0.5
        np.testing.assert_array_equal(blocks[c], keep * 2.0)
    np.testing.assert_array_equal(blocks[0], dropout.dropout_mask([5, 40], 0.5, seed).numpy())  # copy 0 = M=1
    assert set(np.unique(mask)) <= {0.0, 2.0}
    assert 0.4 < (mask == 0).mean() < 0.6
    np.testing.assert_array_equal(mask, dropout.dropout_mask([15, 40], 0.5, seed, copies=3).numpy())  # pure


def test_seeds_differ_by_step_and_rank():
    masks = [dropout.dropout_mask([4, 64], 0.5, dropout.step_seed(0, s, r)).numpy() for s in (0, 1) for r in (0, 1)]
    for a, b in itertools.combinations(masks, 2):
        assert not np.array_equal(a, b)


def test_locked_dropout_shares_the_mask_over_time_and_works_in_tf_data():
    x = tf.ones([4, 7, 6])
    seed = tf.constant([1, 2], tf.int64)
    eager = dropout.ba_dropout(x, 0.5, seed, copies=2, shared_axes=(1,)).numpy()
    assert all(np.array_equal(eager[:, 0], eager[:, t]) for t in range(7))
    assert not np.array_equal(eager[0], eager[2])  # same row of the two copies
    ds = tf.data.Dataset.from_tensors(x).map(lambda t: dropout.ba_dropout(t, 0.5, seed, 2, (1,)))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


def test_seeded_dropout_needs_a_seed_in_training_and_is_identity_in_inference():
    layer = dropout.SeededDropout(0.3, key=1)
    x = tf.ones([2, 3])
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    with pytest.raises(ValueError, match="needs the step's dropout seed"):
        layer(x, training=True)
    with pytest.raises(ValueError, match="rate"):
        dropout.SeededDropout(1.0, key=0)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_models_copies_differ_in_training_only(kind):
    tokens = np.tile(np.arange(3, 11, dtype=np.int32).reshape(2, 4), (2, 1))  # 2 sequences x 2 copies
    seed = dropout.step_seed(0, 0, 0)
    if kind == "lstm":
        net = LSTMLanguageModel(20, embed_dim=8, hidden=12, num_layers=3)
        f = lambda **kw: net(tokens, **kw)[0].numpy()  # noqa: E731
    else:
        net = Transformer(20, d_model=8, num_heads=2, ffn_dim=16, encoder_layers=1, decoder_layers=1)
        f = lambda **kw: net((tokens, tokens), **kw).numpy()  # noqa: E731
    train, infer = f(training=True, seed=seed, copies=2), f(training=False)
    assert not np.allclose(train[:2], train[2:])
    np.testing.assert_allclose(infer[:2], infer[2:], rtol=1e-6)


# ----------------------------------------------------------------------------- batching
def test_lm_batches_split_streams_over_groups_and_repeat_copy_major():
    ids = np.arange(1000, dtype=np.int32)
    per_group = [batching.LMBatcher(ids, 4, 10, num_groups=2, group_id=g, m_local=3) for g in (0, 1)]
    assert {b.steps_per_epoch for b in per_group} == {(250 - 1) // 10}
    x0, y0 = per_group[0].batch(2)
    x1, _ = per_group[1].batch(2)
    assert x0.shape == (3 * 2, 10)
    np.testing.assert_array_equal(x0[:2], x0[2:4])           # copies of the same 2 streams
    np.testing.assert_array_equal(y0, x0 + 1)                 # next-token targets
    np.testing.assert_array_equal(x0[:2, 0], [20, 270])       # streams 0 and 1 at step 2
    np.testing.assert_array_equal(x1[:2, 0], [520, 770])      # the other group: streams 2 and 3


def test_token_batches_respect_the_budget_and_cover_everything_once():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 300), rng.integers(1, 40, 300)
    batches = batching.token_batches(src, tgt, 120, seed=1)
    allids = np.concatenate(batches)
    assert sorted(allids.tolist()) == list(range(300))
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 120
    with pytest.raises(ValueError, match="does not fit"):
        batching.token_batches([200], [3], 120)


def test_translation_batches_are_a_function_of_the_group_only():
    lens = np.random.default_rng(2).integers(2, 20, 200)
    seqs = data.Ragged.from_lists([[7] * (n - 1) + [1] for n in lens])
    make = lambda g: batching.TranslationBatcher(seqs, seqs, 100, 2, g, 2, bos=9, seed=4)  # noqa: E731
    a, a2, b = make(0), make(0), make(1)
    assert a.steps_per_epoch == b.steps_per_epoch == len(a.batches) // 2
    (s, ti), to = a.batch(0, 3)
    (s2, _), _ = a2.batch(0, 3)
    np.testing.assert_array_equal(s, s2)
    assert not set(a.batch_ids(0, 3)) & set(b.batch_ids(0, 3))    # groups: disjoint pairs
    n = len(a.batch_ids(0, 3))
    np.testing.assert_array_equal(s[:n], s[n:])                   # 2 copies, copy-major
    assert (ti[:, 0] == 9).all()                                   # decoder input starts with BOS
    body = (to[:, :-1] != 0) & (to[:, :-1] != 1)                 # target tokens before EOS
    np.testing.assert_array_equal(ti[:, 1:][body], to[:, :-1][body])   # decoder input = target shifted by one
    assert ((to == 1).sum(1) == 1).all() and not (ti == 1).any()  # EOS is a target, never an input
    assert not np.array_equal(a.batch_ids(0, 0), a.batch_ids(1, 0)) or len(a.batches) < 4  # new order per epoch


# ----------------------------------------------------------------------------- data
def test_python_docs_corpus_is_real_english_and_deterministic():
    c = data.python_docs_corpus()
    n = {k: sum(map(len, v)) for k, v in c.items()}
    assert n["train"] > 30_000 and n["valid"] > 1_000 and n["test"] > 1_000
    words = [w for s in c["train"] for w in s]
    top = [w for w, _ in __import__("collections").Counter(words).most_common(5)]
    assert "the" in top
    v1, v2 = data.WordVocab.build(c["train"]), data.WordVocab.build(c["train"])
    assert v1.words == v2.words and v1.words[:3] == ["<pad>", "<eos>", "<unk>"]
    stream = v1.encode_stream([["the", "zzz-unknown"]])
    np.testing.assert_array_equal(stream, [v1.index["the"], data.WordVocab.UNK, data.WordVocab.EOS])


def test_ptb_reader_names_the_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="ptb.train.txt"):
        data.read_ptb(str(tmp_path))
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(" the cat <unk> \n a dog \n")
    assert data.read_ptb(str(tmp_path))["valid"] == [["the", "cat", "<unk>"], ["a", "dog"]]


def test_synthetic_pair_is_a_reversed_word_for_word_translation():
    src, tgt = data.synthetic_translation("train", 200, seed=3)
    mapping = {}
    for s, t in zip(src, tgt):
        for a, b in zip(s.split(), reversed(t.split())):
            assert mapping.setdefault(a, b) == b
    assert data.synthetic_translation("valid", 5, seed=3)[0] != src[:5]


def test_subword_vocab_round_trips_and_appends_eos():
    src, tgt = data.synthetic_translation("train", 150, seed=0)
    v = data.SubwordVocab.build(src + tgt, target_size=300)
    ids = v.encode(tgt[0])
    assert ids[-1] == v.eos and v.decode(ids) == tgt[0] and v.decode([v.bos] + ids + [5, 6]) == tgt[0]
    assert data.SubwordVocab.from_subwords(v.encoder.subwords).encode(src[1]) == v.encode(src[1])


# ----------------------------------------------------------------------------- beam search
class _Table:
    """A toy decoder: next-token log-probabilities depend on the last token only."""

    def __init__(self, table):
        self.logp = tf.math.log(tf.constant(table, tf.float32))

    def __call__(self, prefix):
        return tf.gather(self.logp, prefix[:, -1])


def _exhaustive(table, max_len, bos, eos, alpha):
    vocab = len(table)
    best = (-math.inf, None)
    for n in range(1, max_len + 1):
        for body in itertools.product([t for t in range(vocab) if t not in (0, bos, eos)], repeat=n - 1):
            seq, lp, prev = list(body) + [eos], 0.0, bos
            for t in seq:
                lp, prev = lp + math.log(table[prev][t]), t
            score = lp / ((5 + n) / 6) ** alpha
            best = max(best, (score, seq))
    return best


def _table(seed):
    rng = np.random.default_rng(seed)
    t = rng.random((6, 6)) ** 3 + 1e-3   # 0 pad, 1 eos, 5 bos
    t[:, 0] = t[:, 5] = 1e-9
    return (t / t.sum(1, keepdims=True)).tolist()


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_finds_the_exhaustive_optimum(alpha, seed):
    table = _table(seed)
    seqs, scores = beam.beam_search(_Table(table), 1, 64, 4, bos=5, eos=1, alpha=alpha)
    score, best = _exhaustive(table, 4, 5, 1, alpha)
    out = seqs.numpy()[0, 0].tolist()
    assert out[0] == 5 and out[1:1 + len(best)] == best
    assert scores.numpy()[0, 0] == pytest.approx(score, rel=1e-4)


def test_beam_4_beats_greedy_on_a_garden_path():
    # from BOS, token 2 looks best (0.6) but leads to a flat distribution; token 3 (0.4) leads to EOS surely
    t = np.full((6, 6), 1e-9)
    t[5, 2], t[5, 3] = 0.6, 0.4
    t[2, 1] = t[2, 2] = t[2, 3] = t[2, 4] = 0.25
    t[3, 1] = 1.0
    t[4, 1] = t[1, 1] = 1.0
    seqs, _ = beam.beam_search(_Table(t.tolist()), 1, 4, 5, bos=5, eos=1, alpha=0.0)
    assert seqs.numpy()[0, 0, :3].tolist() == [5, 3, 1]
    greedy, _ = beam.beam_search(_Table(t.tolist()), 1, 1, 5, bos=5, eos=1, alpha=0.0)
    assert greedy.numpy()[0, 0, 1] == 2


def test_translate_runs_on_a_transformer_inside_tf_function():
    net = Transformer(30, d_model=8, num_heads=2, ffn_dim=16, encoder_layers=1, decoder_layers=1)
    src = tf.constant([[3, 4, 5, 1], [6, 1, 0, 0]], tf.int32)
    out = tf.function(lambda s: beam.translate(net, s, bos=29, eos=28, beam_size=4, extra_len=3))(src).numpy()
    assert out.shape == (2, 4 + 3 + 1) and (out[:, 0] == 29).all()
    for row in out[:, 1:].tolist():
        n = row.index(28) + 1 if 28 in row else len(row)
        assert not set(row[:n]) & {0, 29} and set(row[n:]) <= {0}   # no PAD/BOS before EOS, PAD after


# ----------------------------------------------------------------------------- losses, schedules, configs
def test_label_smoothing_matches_keras():
    logits = tf.random.stateless_normal([2, 3, 7], seed=[1, 1])
    y = tf.constant([[1, 2, 3], [4, 5, 6]])
    smoothed, nll = token_losses(y, logits, 0.1)
    keras = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction="none")
    np.testing.assert_allclose(smoothed.numpy(), keras(tf.one_hot(y, 7), logits).numpy(), rtol=1e-5)
    np.testing.assert_allclose(nll.numpy(), tf.keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True).numpy(), rtol=1e-5)


def test_inverse_sqrt_schedule_is_vaswani():
    d, w = 512, 4000
    sched = schedules.InverseSqrtWarmup((d * w) ** -0.5, w)
    for step in (0, 99, 3999, 4000, 50_000):
        s = step + 1
        assert float(sched(step)) == pytest.approx(d ** -0.5 * min(s ** -0.5, s * w ** -1.5), rel=1e-5)


@pytest.mark.parametrize("name,variants,numbers", [
    ("seq_lstm_ptb.py", ("ba", "fixed_steps", "fixed_samples"), ("58.8", "58.6")),
    ("seq_transformer_wmt16.py", ("ba", "fixed_steps", "fixed_samples"), ("26.88", "27.13", "27.49")),
])
def test_paper_configs_validate_and_keep_the_step_budget(name, variants, numbers):
    text = (REPO / "configs" / name).read_text()
    assert all(n in text for n in numbers)
    cfgs = {v: load_config_file(f"{REPO / 'configs' / name}:{v}") for v in variants}
    for c in cfgs.values():
        seq_config.validate(c)
    ba, steps, samples = cfgs["ba"], cfgs["fixed_steps"], cfgs["fixed_samples"]
    M = ba.ba.multiplicity
    assert M > 1 and steps.ba.multiplicity == samples.ba.multiplicity == 1
    if ba.task == "lm":   # B streams x M copies == the fixed-#samples batch; epochs keep the step count
        assert samples.input.batch_size == M * ba.input.batch_size == M * steps.input.batch_size
        assert samples.train.epochs == M * ba.train.epochs
    else:
        assert samples.input.max_tokens == M * ba.input.max_tokens
        assert ba.train.total_steps == steps.train.total_steps == samples.train.total_steps == 100_000


def test_layout_and_config_errors():
    c = load_config_file(str(REPO / "configs" / "seq_lstm_demo.py"))
    lay = seq_config.layout(c, 2)
    assert (lay.m_local, lay.num_groups, lay.per_rank_unique, lay.global_batch) == (2, 1, 8, 32)
    assert "B 8 unique x M 4 = 32 streams x 35 tokens per step" in seq_config.describe(c, lay)
    with pytest.raises(ConfigError, match="world size 3 is not divisible by ba.m_ranks=2"):
        seq_config.layout(c, 3)
    c.input.dataset = "wmt16_en_de"
    with pytest.raises(ConfigError, match="not a lm dataset"):
        seq_config.validate(c)


def test_cli_rejects_a_bad_config_fast(tmp_path):
    res = run([PYTHON, "-m", "ba_dist.seq.train", "--config", str(REPO / "configs/seq_lstm_demo.py"),
               "--workdir", str(tmp_path), "--config.ba.multiplicity=3"], timeout=120, env=rank_env())
    assert res.returncode == 2 and "ba.multiplicity=3 is not divisible by ba.m_ranks=2" in res.stdout


@pytest.mark.parametrize("module, example", [("ba_dist.seq.train", "ba-train-seq --config"),
                                             ("ba_dist.seq.evaluate", "ba-eval-seq --config")])
def test_cli_help_prints_usage_flags_and_an_example(module, example):
    res = run([PYTHON, "-m", module, "--help"], timeout=60, env=rank_env())
    assert res.returncode == 0 and example in res.stdout and "--workdir:" in res.stdout, res.stdout


def test_cli_names_a_missing_dataset(tmp_path):
    res = run([PYTHON, "-m", "ba_dist.seq.train", "--config", str(REPO / "configs/seq_lstm_ptb.py:ba"),
               "--workdir", str(tmp_path / "w"), f"--config.input.data_dir={tmp_path}"], timeout=300, env=rank_env())
    assert res.returncode == 1 and f"PTB file {tmp_path}/ptb.train.txt not found" in res.stdout, res.stdout[-3000:]


# ----------------------------------------------------------------------------- under mpirun
def test_both_models_train_with_ba_under_mpirun(tmp_path):
    """One launch, 2 ranks: see tests/seq_ranks.py."""
    res = mpirun(2, ["-x", "BA_SEQ_TEST_WORKDIR", PYTHON, "-m", "pytest", "tests/seq_ranks.py", "-q", "-x",
                     "-p", "no:cacheprovider", "-o", "timeout=400"], timeout=900, BA_SEQ_TEST_WORKDIR=str(tmp_path))
    sys.stdout.write(res.stdout[-6000:])
    assert res.returncode == 0, res.stdout[-8000:]
    assert res.stdout.count("5 passed") == 2, res.stdout[-4000:]   # every rank ran every test
    lm = json.loads((tmp_path / "lm" / "result.json").read_text())
    mt = json.loads((tmp_path / "mt" / "eval_valid.json").read_text())
    assert lm["valid_ppl"] > 1 and 0 <= mt["valid_bleu"] <= 100 and mt["bleu_sentences"] == 40
    assert (tmp_path / "mt" / "eval_valid.json").is_file() and (tmp_path / "lm" / "checkpoints" / "best.json").is_file()
