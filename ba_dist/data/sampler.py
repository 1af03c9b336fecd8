"""Group-synchronised sampling: which unique samples each BA group trains on.

The order of unique samples depends only on ``(seed, epoch)`` and the shard on
``group_id``: every rank of a group computes the same ids without talking to
the others, and groups get disjoint shards. Per epoch::

    perm            = permutation(num_examples; seed, epoch)
    steps_per_epoch = num_examples // (num_groups * per_rank_unique)
    step s, group g = perm[(s * num_groups + g) * b : ... + b]

Each global step therefore consumes one contiguous chunk of ``G*b`` ids of the
permutation. The remainder (fewer than ``G*b`` samples, different ones every
epoch because the permutation changes) is dropped so that every rank runs the
same number of steps and no rank waits alone in an allreduce at epoch end.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["GroupSampler", "eval_shard"]


@dataclasses.dataclass(frozen=True)
class GroupSampler:
    """Sample ids per (epoch, step, group).

    Attributes:
      num_examples: size of the training split.
      num_groups: number of BA groups (world size / m_ranks).
      per_rank_unique: unique samples per rank per step (``b``).
      seed: base seed shared by the whole job.
    """

    num_examples: int
    num_groups: int
    per_rank_unique: int
    seed: int = 0

    def __post_init__(self):
        if self.per_rank_unique < 1:
            raise ValueError(f"per_rank_unique must be >= 1, got {self.per_rank_unique}")
        if self.num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.num_groups}")
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset of {self.num_examples} samples is smaller than one global unique batch "
                f"({self.num_groups} groups x {self.per_rank_unique} = {self.unique_batch}); "
                f"use fewer ranks or a smaller per-rank batch")

    @property
    def unique_batch(self) -> int:
        """Global batch of unique samples ``B``."""
        return self.num_groups * self.per_rank_unique

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.unique_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def epoch_ids(self, epoch: int, group_id: int) -> np.ndarray:
        """``int64 [steps_per_epoch, per_rank_unique]`` ids of one group for one epoch."""
        if not 0 <= group_id < self.num_groups:
            raise ValueError(f"group_id {group_id} outside [0, {self.num_groups})")
        used = self.steps_per_epoch * self.unique_batch
        chunks = self.permutation(epoch)[:used].reshape(self.steps_per_epoch, self.num_groups,
                                                        self.per_rank_unique)
        return chunks[:, group_id].astype(np.int64)


def eval_shard(num_examples: int, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation ids of one rank, padded so every rank has the same count.

    Returns ``(ids, weights)``: ranks take ``rank::world_size``; padding
    repeats id 0 with weight 0 so exact reductions (sum of correct / sum of
    weights) count every sample exactly once across the world.
    """
    per_rank = -(-num_examples // world_size)
    ids = np.arange(rank, num_examples, world_size, dtype=np.int64)
    weights = np.ones(per_rank, np.float32)
    weights[len(ids):] = 0.0
    return np.concatenate([ids, np.zeros(per_rank - len(ids), np.int64)]), weights
