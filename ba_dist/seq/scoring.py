"""Exact, sharded evaluation of the sequence models: perplexity, token loss, BLEU (beam search).

Every rank evaluates its shard (padded with weight-0 rows so all ranks run
the same number of batches) and the sums are reduced once, so the numbers are
those of the whole split, whatever the world size::

    perplexity = exp(sum of token NLL / number of tokens)
    BLEU       = sacrebleu corpus BLEU of the detokenized beam-search outputs,
                 gathered to rank 0 in the order of the split

Dropout is off (``training=False``). Nothing here writes files.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import tensorflow as tf

from ba_dist import dist
from ba_dist.seq import batching, beam
from ba_dist.seq.data import PAD
from ba_dist.seq.train_step import token_losses

__all__ = ["lm_perplexity", "translation_loss", "translation_bleu", "corpus_bleu"]


def _compiled(net, key, build):
    """One ``tf.function`` per (model, key) for the life of the model: evaluating every epoch traces once."""
    fns = _COMPILED.setdefault(net, {})
    if key not in fns:
        fns[key] = build()
    return fns[key]


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lm_perplexity(net, ids: np.ndarray, num_streams: int, bptt: int, rank: int, world_size: int) -> dict:
    """Perplexity of a language model on the stream ``ids``, split into ``num_streams`` streams.

    The recurrent state is carried through each stream from its first token,
    as in AWD-LSTM's ``evaluate()``.
    """
    rows, weights = batching.lm_eval_rows(ids, num_streams, rank, world_size)

    def build():
        ids_spec = tf.TensorSpec([None, None], tf.int32)
        state_spec = [tf.TensorSpec([None, s[1]], tf.float32) for s in net.state_shapes(1)]

        @tf.function(input_signature=[ids_spec, ids_spec, tf.TensorSpec([None], tf.float32), state_spec])
        def step(x, y, w, states):
            logits, states = net(x, states=states, training=False)
            _, nll = token_losses(y, logits)
            count = tf.cast(tf.shape(y)[1], tf.float32) * tf.reduce_sum(w)
            return tf.reduce_sum(tf.reduce_sum(nll, 1) * w), count, states
        return step

    step = _compiled(net, "lm", build)
    states = net.initial_state(rows.shape[0])
    sums = np.zeros(2)
    for lo in range(0, rows.shape[1] - 1, bptt):
        hi = min(lo + bptt, rows.shape[1] - 1)
        loss, count, states = step(rows[:, lo:hi], rows[:, lo + 1:hi + 1], weights, states)
        sums += [float(loss), float(count)]
    total = dist.allreduce_sum(sums, name="seq_eval_lm")
    nll = total[0] / max(total[1], 1.0)
    return {"val_loss": nll, "val_ppl": math.exp(min(nll, 50.0)), "val_tokens": int(total[1])}


def translation_loss(net, src, tgt, bos: int, rank: int, world_size: int, batch_size: int) -> dict:
    """Teacher-forced token NLL, perplexity and next-token accuracy on a split."""

    def build():
        ids = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[ids, ids, ids, tf.TensorSpec([None], tf.float32)])
        def step(s, ti, to, w):
            logits = net((s, ti), training=False)
            _, nll = token_losses(to, logits)
            mask = tf.cast(tf.not_equal(to, PAD), tf.float32) * w[:, None]
            correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=to.dtype), to), tf.float32)
            return tf.stack([tf.reduce_sum(nll * mask), tf.reduce_sum(correct * mask), tf.reduce_sum(mask)])
        return step

    step = _compiled(net, "mt_loss", build)
    sums = np.zeros(3)
    for _, w, s, ti, to in batching.translation_eval_batches(src, tgt, rank, world_size, batch_size, bos):
        sums += step(s, ti, to, w).numpy()
    total = dist.allreduce_sum(sums, name="seq_eval_mt")
    n = max(total[2], 1.0)
    return {"val_loss": total[0] / n, "val_ppl": math.exp(min(total[0] / n, 50.0)), "val_top1": total[1] / n,
            "val_tokens": int(total[2])}


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (13a tokenization, detokenized input)."""
    import sacrebleu
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def translation_bleu(net, src, tgt, vocab, references: list[str], rank: int, world_size: int,
                     batch_size: int, beam_size: int = 4, alpha: float = 0.6, extra_len: int = 50,
                     limit: int = -1) -> tuple[dict, list[str]]:
    """Beam-search translations of a split and their BLEU against ``references``.

    Args:
      limit: translate only the first ``limit`` sentences (-1: all).

    Returns:
      ``({"val_bleu", "bleu_sentences"}, hypotheses)`` on every rank
      (hypotheses only on rank 0, ``[]`` elsewhere).
    """

    def build():
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def decode(s):
            return beam.translate(net, s, vocab.bos, vocab.eos, beam_size, alpha, extra_len)
        return decode

    decode = _compiled(net, ("beam", vocab.bos, vocab.eos, beam_size, alpha, extra_len), build)
    mine = []
    for ids, w, s, _, _ in batching.translation_eval_batches(src, tgt, rank, world_size, batch_size, vocab.bos,
                                                             limit):
        out = decode(tf.constant(s)).numpy()
        mine += [(int(i), vocab.decode(row[1:])) for i, wi, row in zip(ids, w, out) if wi > 0]
    gathered = dist.gather_to_chief(mine)  # hypotheses of every rank, on rank 0
    result, hyps = None, []
    if rank == 0:
        pairs = sorted(p for part in gathered for p in part)
        hyps = [h for _, h in pairs]
        refs = [references[i] for i, _ in pairs]
        result = {"val_bleu": corpus_bleu(hyps, refs), "bleu_sentences": len(hyps)}
    return dist.broadcast_object(result), hyps
