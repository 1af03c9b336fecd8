"""Beam search in TensorFlow (Wu et al. 2016 length penalty; tensor2tensor's algorithm).

Every step extends the ``K`` alive hypotheses of each sentence by every token,
keeps the best ``2K`` candidates, and splits them: those ending in EOS compete
with the finished hypotheses kept so far (score = log-probability / length
penalty), the others become the next ``K`` alive ones. The search stops when
no alive hypothesis can still beat the worst of ``K`` finished ones, or at
``max_len`` tokens::

    length penalty lp(n) = ((5 + n) / 6) ** alpha      (alpha 0.6 as Vaswani et al.)

The decoder is rerun on the whole prefix at every step (no key/value cache):
simple and exact, quadratic in the output length.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from ba_dist.seq.data import PAD

__all__ = ["length_penalty", "beam_search", "translate"]

_INF = 1.0e7


def length_penalty(length, alpha: float):
    """``((5 + length) / 6) ** alpha``."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def beam_search(logits_fn: Callable[[tf.Tensor], tf.Tensor], batch_size, beam_size: int, max_len,
                bos: int, eos: int, alpha: float = 0.6) -> tuple[tf.Tensor, tf.Tensor]:
    """Best ``beam_size`` hypotheses per sentence.

    Args:
      logits_fn: ``prefix [batch x beam, i + 1]`` (BOS first) -> logits of the
        next token ``[batch x beam, vocab]``; row ``b * beam + k`` is
        hypothesis ``k`` of sentence ``b``.
      batch_size, beam_size: B and K.
      max_len: longest output in tokens (EOS included).
      bos, eos: start and end ids. Padding (id 0) and BOS are never produced.
      alpha: length-penalty exponent (0: plain log-probability).

    Returns:
      ``(sequences [B, K, max_len + 1]`` with BOS first and PAD after EOS,
      ``scores [B, K])``, best first. Sentences with no finished hypothesis
      return their alive ones, scored at ``max_len``.
    """
    B, K = batch_size, beam_size
    T = tf.cast(max_len, tf.int32)
    seq0 = tf.concat([tf.fill([B, K, 1], bos), tf.fill([B, K, T], PAD)], 2)
    alive_logp0 = tf.tile(tf.constant([[0.0] + [-_INF] * (K - 1)]), [B, 1])  # beams 1.. start dead

    def body(i, alive_seq, alive_logp, fin_seq, fin_score, fin_flag):
        logits = logits_fn(tf.reshape(alive_seq, [B * K, -1])[:, :i + 1])
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        vocab = tf.shape(logp)[-1]
        banned = tf.reduce_sum(tf.one_hot([PAD, bos], vocab), 0) * _INF
        logp = tf.reshape(logp - banned, [B, K, vocab])
        cand = tf.reshape(alive_logp[:, :, None] + logp, [B, K * vocab])
        top_logp, top_idx = tf.math.top_k(cand, 2 * K)
        beam, token = top_idx // vocab, top_idx % vocab
        seqs = tf.gather(alive_seq, beam, batch_dims=1)                       # [B, 2K, T+1]
        at = tf.one_hot(i + 1, T + 1, dtype=seqs.dtype)
        seqs = seqs * (1 - at) + token[:, :, None] * at
        ended = tf.equal(token, eos)
        # the K best candidates that did not end stay alive
        alive_logp, idx = tf.math.top_k(top_logp - tf.cast(ended, tf.float32) * _INF, K)
        alive_seq = tf.gather(seqs, idx, batch_dims=1)
        # those that ended compete with the finished ones
        new_score = top_logp / length_penalty(i + 1, alpha) - tf.cast(~ended, tf.float32) * _INF
        all_seq = tf.concat([fin_seq, seqs], 1)
        all_score = tf.concat([fin_score, new_score], 1)
        all_flag = tf.concat([fin_flag, ended], 1)
        fin_score, idx = tf.math.top_k(all_score, K)
        return (i + 1, alive_seq, alive_logp, tf.gather(all_seq, idx, batch_dims=1), fin_score,
                tf.gather(all_flag, idx, batch_dims=1))

    def cond(i, alive_seq, alive_logp, fin_seq, fin_score, fin_flag):
        # log-probabilities only fall and lp(n) only grows (alpha >= 0): no alive
        # hypothesis can score better than its current logp / lp(max_len)
        best_alive = alive_logp[:, 0] / length_penalty(T, alpha)
        worst_fin = tf.reduce_min(tf.where(fin_flag, fin_score, -_INF), 1)
        return tf.logical_and(i < T, tf.logical_not(tf.reduce_all(worst_fin > best_alive)))

    init = (tf.constant(0), seq0, alive_logp0, seq0, tf.fill([B, K], -_INF), tf.zeros([B, K], tf.bool))
    _, alive_seq, alive_logp, fin_seq, fin_score, fin_flag = tf.while_loop(
        cond, body, init, shape_invariants=(tf.TensorShape([]),) + tuple(
            tf.TensorShape([None, K] + ([None] if len(v.shape) == 3 else [])) for v in init[1:]))
    any_fin = tf.reduce_any(fin_flag, 1)
    seqs = tf.where(any_fin[:, None, None], fin_seq, alive_seq)
    scores = tf.where(any_fin[:, None], fin_score, alive_logp / length_penalty(T, alpha))
    return seqs, scores


def translate(model, src: tf.Tensor, bos: int, eos: int, beam_size: int = 4, alpha: float = 0.6,
              extra_len: int = 50) -> tf.Tensor:
    """Best beam-search translation of each source row: ``[b, max_len + 1]`` ids, BOS first.

    ``model`` has ``encode(src)`` and ``decode(prefix, memory, bias)`` (a
    :class:`ba_dist.seq.transformer.Transformer`). Outputs may be up to
    source length + ``extra_len`` tokens long (Vaswani et al.: + 50).
    """
    b = tf.shape(src)[0]
    memory, bias = model.encode(src, training=False)
    memory, bias = tf.repeat(memory, beam_size, axis=0), tf.repeat(bias, beam_size, axis=0)

    def logits_fn(prefix):
        return model.decode(prefix, memory, bias, training=False)[:, -1]

    seqs, _ = beam_search(logits_fn, b, beam_size, tf.shape(src)[1] + extra_len, bos, eos, alpha)
    return seqs[:, 0]
