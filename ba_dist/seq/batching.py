"""Batches of token sequences with Batch Augmentation, the same on every rank of a group.

BA for sequences repeats every unique sequence ``M = m_ranks x m_local`` times
in the global batch; the copies differ only by their dropout masks
(:mod:`ba_dist.seq.dropout`). As for images, a group is ``m_ranks``
consecutive ranks that see the same unique sequences, and each rank repeats
them ``m_local`` times, copy-major (:func:`ba_dist.ba.repeat`)::

    rank batch = [copy 0 of the group's sequences, copy 1, ..., copy m_local-1]

Language model (truncated BPTT over contiguous streams, Merity et al.)::

    train ids -> B streams of length L (B = input.batch_size, e.g. 20)
    group g   -> streams [g*b, (g+1)*b),  b = B / groups
    step s    -> tokens [s*bptt, (s+1)*bptt) of each stream, targets shifted by one
    per step  = N ranks x (m_local x b) rows x bptt = B x M rows x bptt tokens
    steps_per_epoch = (L - 1) // bptt, the same on every rank

Translation (batches bounded by tokens, as fairseq's ``--max-tokens``)::

    T = input.max_tokens  unique tokens per global step (paper: 4096)
    per group budget  T / groups, counted with padding: n x max(source, target length)
    batches: pairs sorted by length (random tie-break from the seed), cut
             greedily; fixed for the run (fairseq does the same)
    order:   GroupSampler over the batches with one "sample" per group and
             step: a new permutation every epoch, disjoint across groups,
             remainder dropped so every rank runs the same number of steps

Both are computed from the (identical) data on every rank: no communication.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from ba_dist import ba
from ba_dist.data.sampler import GroupSampler, eval_shard
from ba_dist.seq.data import PAD, Ragged

__all__ = ["lm_streams", "LMBatcher", "lm_eval_rows", "token_batches", "pad_batch",
           "TranslationBatcher", "translation_eval_batches"]


def lm_streams(ids: np.ndarray, num_streams: int) -> np.ndarray:
    """``[num_streams, L]`` contiguous streams of ``ids`` (the tail that does not fit is dropped)."""
    length = len(ids) // num_streams
    if length < 2:
        raise ValueError(f"{len(ids)} tokens cannot make {num_streams} streams of at least 2 tokens")
    return np.asarray(ids[:num_streams * length], np.int32).reshape(num_streams, length)


class LMBatcher:
    """Truncated-BPTT batches of one rank: its group's streams, ``m_local`` times.

    Args:
      ids: the training stream.
      batch_size: ``B`` unique streams in the global batch.
      bptt: tokens per row per step.
      num_groups, group_id: the rank's place in the BA layout.
      m_local: copies per rank.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, num_groups: int, group_id: int,
                 m_local: int = 1):
        if batch_size % num_groups:
            raise ValueError(f"batch_size {batch_size} streams cannot be split over {num_groups} groups")
        b = batch_size // num_groups
        self.streams = lm_streams(ids, batch_size)[group_id * b:(group_id + 1) * b]
        self.bptt, self.m_local, self.per_rank_unique = bptt, m_local, b
        self.steps_per_epoch = (self.streams.shape[1] - 1) // bptt
        if self.steps_per_epoch < 1:
            raise ValueError(f"streams of {self.streams.shape[1]} tokens are shorter than bptt={bptt} + 1")

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)``, each ``[m_local x b, bptt]`` int32."""
        lo = step * self.bptt
        x = self.streams[:, lo:lo + self.bptt]
        y = self.streams[:, lo + 1:lo + 1 + self.bptt]
        return ba.repeat(x, self.m_local), ba.repeat(y, self.m_local)

    def iterate(self, start_epoch: int, start_step: int, num_steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``num_steps`` batches from ``(start_epoch, start_step)`` on; every epoch walks the same streams."""
        del start_epoch
        for i in range(num_steps):
            yield self.batch((start_step + i) % self.steps_per_epoch)


def lm_eval_rows(ids: np.ndarray, num_streams: int, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation streams of one rank and their weights (exact over the world).

    The split becomes ``num_streams`` contiguous streams (the standard
    batchify; AWD-LSTM evaluates with 10, and 1 for the test set). Rank ``r``
    takes streams ``r, r + N, ...``; every rank gets the same count, padded
    with weight-0 copies of stream 0, so sums of ``weight x loss`` count each
    token exactly once.
    """
    streams = lm_streams(ids, num_streams)
    rows, weights = eval_shard(num_streams, rank, world_size)
    return streams[rows], weights


def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int = 0,
                  max_sentences: Optional[int] = None) -> list[np.ndarray]:
    """Pairs grouped into batches of at most ``max_tokens`` padded tokens.

    A batch of ``n`` pairs costs ``n x max(longest source, longest target)``.
    Sorting by (target length, source length) keeps the padding small; ties
    are broken by a permutation of ``seed`` so equal-length pairs mix.

    Returns:
      Index arrays, one per batch, in length order.
    """
    src_lens, tgt_lens = np.asarray(src_lens), np.asarray(tgt_lens)
    longest = int(max(src_lens.max(initial=0), tgt_lens.max(initial=0)))
    if longest > max_tokens:
        raise ValueError(f"a pair of {longest} tokens does not fit a batch of {max_tokens} tokens: "
                         f"raise the token budget or lower input.max_len")
    tie = np.random.default_rng([seed, 7]).permutation(len(src_lens))
    order = np.lexsort((tie, src_lens, tgt_lens))
    batches, start, width = [], 0, 0
    for i, idx in enumerate(order):
        w = max(width, int(src_lens[idx]), int(tgt_lens[idx]))
        n = i - start + 1
        if n * w > max_tokens or (max_sentences and n > max_sentences):
            batches.append(order[start:i])
            start, w = i, max(int(src_lens[idx]), int(tgt_lens[idx]))
        width = w
    if start < len(order):
        batches.append(order[start:])
    return batches


def pad_batch(seqs: list[np.ndarray], prefix: Optional[int] = None) -> np.ndarray:
    """``[n, max_len]`` int32 with PAD; ``prefix`` (e.g. BOS) is put in front of every row."""
    rows = [np.concatenate([[prefix], s]) if prefix is not None else s for s in seqs]
    out = np.full((len(rows), max(len(r) for r in rows)), PAD, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _pairs(src: Ragged, tgt: Ragged, ids, bos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = [tgt[i] for i in ids]
    # decoder input = BOS + target without its EOS; output = target (ends in EOS)
    return pad_batch([src[i] for i in ids]), pad_batch([s[:-1] for s in t], prefix=bos), pad_batch(t)


class TranslationBatcher:
    """Token-bounded BA batches of one rank (see module docstring).

    Args:
      src, tgt: encoded training pairs.
      tokens_per_group: padded-token budget of one group's unique batch
        (``input.max_tokens / groups``).
      num_groups, group_id, m_local: the rank's place in the BA layout.
      bos: decoder start id.
      seed: job seed (batch composition and per-epoch order).
    """

    def __init__(self, src: Ragged, tgt: Ragged, tokens_per_group: int, num_groups: int, group_id: int,
                 m_local: int, bos: int, seed: int = 0):
        self.src, self.tgt, self.bos, self.m_local, self.group_id = src, tgt, bos, m_local, group_id
        self.batches = token_batches(src.lengths, tgt.lengths, tokens_per_group, seed)
        try:
            self.sampler = GroupSampler(len(self.batches), num_groups, 1, seed=seed)
        except ValueError as e:
            raise ValueError(f"{len(src)} training pairs make {len(self.batches)} batches of "
                             f"{tokens_per_group} tokens: fewer than the {num_groups} groups") from e
        self._epoch, self._ids = None, None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def batch_ids(self, epoch: int, step: int) -> np.ndarray:
        """Pair ids of this group's unique batch at ``(epoch, step)``."""
        if self._epoch != epoch:
            self._epoch, self._ids = epoch, self.sampler.epoch_ids(epoch, self.group_id)[:, 0]
        return self.batches[self._ids[step]]

    def batch(self, epoch: int, step: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """``((source, decoder input), decoder target)``, each ``m_local x n`` rows, copy-major."""
        s, ti, to = _pairs(self.src, self.tgt, self.batch_ids(epoch, step), self.bos)
        r = self.m_local
        return (ba.repeat(s, r), ba.repeat(ti, r)), ba.repeat(to, r)

    def iterate(self, start_epoch: int, start_step: int, num_steps: int):
        epoch, step = start_epoch, start_step
        for _ in range(num_steps):
            yield self.batch(epoch, step)
            step += 1
            if step == self.steps_per_epoch:
                epoch, step = epoch + 1, 0


def translation_eval_batches(src: Ragged, tgt: Ragged, rank: int, world_size: int, batch_size: int, bos: int,
                             limit: int = -1):
    """One rank's evaluation batches ``(ids, weights, source, decoder input, target)``.

    Sharded with :func:`ba_dist.data.sampler.eval_shard` (padding has weight 0),
    so every rank runs the same number of batches and sums are exact.
    ``limit > 0`` evaluates only the first ``limit`` pairs.
    """
    n = len(src) if limit <= 0 else min(limit, len(src))
    ids, weights = eval_shard(n, rank, world_size)
    for lo in range(0, len(ids), batch_size):
        i, w = ids[lo:lo + batch_size], weights[lo:lo + batch_size]
        yield (i, w) + _pairs(src, tgt, i, bos)
