"""Config of the sequence tasks: defaults, validation and the batch arithmetic (pure, no TF).

``configs/seq_*.py`` build on :func:`base_config`. Batch arithmetic with N
ranks, ``M = m_ranks x m_local``, ``groups = N / m_ranks``::

    lm           B = input.batch_size streams (unique); b = B / groups per group
                 per rank m_local x b rows of bptt tokens
                 N x m_local x b = B x M rows per step  (paper: 20 x 10 = 200)
    translation  T = input.max_tokens unique padded tokens per step; T / groups per group
                 per rank <= m_local x T / groups tokens
                 N x m_local x T / groups = T x M tokens per step (paper: 4096 x 4)
"""
from __future__ import annotations

import ml_collections

from ba_dist.config import ConfigError, Layout, check_values, num_groups

__all__ = ["TASKS", "base_config", "validate", "layout", "describe"]

TASKS = {"lm": ("ptb", "python_docs"), "translation": ("wmt16_en_de", "synthetic")}
MODELS = {"lm": "lstm_lm", "translation": "transformer"}


def base_config() -> ml_collections.ConfigDict:
    """Defaults (the paper's LSTM-PTB row); configs override."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "lm"                        # lm | translation

    c.input = ml_collections.ConfigDict()
    c.input.dataset = "python_docs"      # lm: ptb | python_docs; translation: wmt16_en_de | synthetic
    c.input.data_dir = ""                # ptb: directory of ptb.*.txt; wmt16: tensorflow_datasets data_dir
    c.input.download = False             # wmt16: let tensorflow_datasets download (needs a network)
    c.input.corpus_kwargs = ml_collections.ConfigDict()  # e.g. synthetic sizes, wmt16 max_examples
    c.input.batch_size = 20              # lm: B unique streams per global step
    c.input.bptt = 70                    # lm: tokens per stream per step
    c.input.eval_streams = 10            # lm: evaluation streams (AWD-LSTM: 10)
    c.input.test_streams = 1             # lm: test streams (AWD-LSTM: 1)
    c.input.max_tokens = 4096            # translation: unique padded tokens per global step
    c.input.max_len = 256                # translation: longest training pair kept (subwords + EOS)
    c.input.vocab_size = 10000           # lm: word cap (PTB has exactly 10k); translation: subword target
    c.input.vocab_sentences = 200_000    # translation: training pairs the subword vocabulary is learnt from
    c.input.eval_batch_size = 64         # translation: sentences per rank per evaluation batch
    c.input.eval_split = "valid"
    c.input.prefetch = 4

    c.ba = ml_collections.ConfigDict()
    c.ba.multiplicity = 1                # M
    c.ba.m_ranks = 1                     # ranks per group

    c.model = ml_collections.ConfigDict()
    c.model.kwargs = ml_collections.ConfigDict()  # constructor arguments of the task's model

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"                 # sgd | adam
    c.optim.base_lr = 30.0               # constant LR, or the peak of inverse_sqrt
    c.optim.schedule = "constant"        # constant | inverse_sqrt
    c.optim.warmup_steps = 0
    c.optim.momentum = 0.0
    c.optim.beta_1 = 0.9
    c.optim.beta_2 = 0.999
    c.optim.epsilon = 1e-7
    c.optim.clip_norm = 0.25             # global gradient norm clip, 0 = off
    c.optim.weight_decay = 1.2e-6        # coupled L2 (gradient + wd * w)
    c.optim.label_smoothing = 0.0
    c.optim.grad_compression = "none"    # none | fp16

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 500                 # epochs of unique data (BA keeps the baseline's steps)
    c.train.total_steps = -1             # >0: train exactly this many steps (epochs derived)
    c.train.max_steps = -1               # >0: stop after this many steps (smoke tests)
    c.train.stop_after_epoch = -1
    c.train.eval_every = 1
    c.train.checkpoint_every = 1
    c.train.keep_checkpoints = 3
    c.train.deterministic = False
    c.train.verbose = 2
    c.train.resume = True
    c.train.resume_fallback = True       # newest checkpoint unloadable: resume from the previous one (False: stop)

    c.eval = ml_collections.ConfigDict()
    c.eval.beam_size = 4                 # paper appendix C.3
    c.eval.alpha = 0.6                   # length penalty (Vaswani et al.)
    c.eval.extra_len = 50                # outputs up to source length + 50
    c.eval.bleu_every = 0                # epochs between BLEU evaluations; 0 = at the end only
    c.eval.max_sentences = -1            # BLEU on the first N sentences only (-1: all)
    c.eval.final_splits = "valid,test"   # evaluated (and written to result.json) at the end
    return c


_CHOICES = {
    "task": tuple(TASKS),
    "optim.name": ("sgd", "adam"),
    "optim.schedule": ("constant", "inverse_sqrt"),
    "optim.grad_compression": ("none", "fp16"),
    "input.eval_split": ("valid", "test"),
}


def validate(c: ml_collections.ConfigDict) -> None:
    """Check every value that can be checked without data or ranks. Raises ConfigError."""
    check_values(c, _CHOICES,
                 positive=["input.batch_size", "input.bptt", "input.eval_streams", "input.test_streams",
                           "input.max_tokens", "input.max_len", "input.vocab_size", "input.eval_batch_size",
                           "ba.multiplicity", "ba.m_ranks", "train.epochs", "train.eval_every",
                           "train.checkpoint_every", "train.keep_checkpoints", "eval.beam_size", "input.prefetch"],
                 non_negative=["optim.base_lr", "optim.weight_decay", "optim.clip_norm", "optim.label_smoothing",
                               "optim.momentum", "eval.alpha", "optim.warmup_steps"])
    if c.input.dataset not in TASKS[c.task]:
        raise ConfigError(f"input.dataset={c.input.dataset!r} is not a {c.task} dataset; "
                          f"use one of {', '.join(TASKS[c.task])}")
    if c.optim.label_smoothing >= 1:
        raise ConfigError(f"optim.label_smoothing={c.optim.label_smoothing}: must be < 1")
    if c.optim.schedule == "inverse_sqrt" and c.optim.warmup_steps < 1:
        raise ConfigError("optim.schedule='inverse_sqrt' needs optim.warmup_steps >= 1")
    if c.task == "translation" and c.input.max_len > c.input.max_tokens:
        raise ConfigError(f"input.max_len={c.input.max_len} exceeds input.max_tokens={c.input.max_tokens}: "
                          f"a pair could not fit any batch")
    for split in filter(None, c.eval.final_splits.split(",")):
        if split not in ("valid", "test"):
            raise ConfigError(f"eval.final_splits={c.eval.final_splits!r}: splits are 'valid' and 'test'")


def layout(c: ml_collections.ConfigDict, world_size: int) -> Layout:
    """Batch arithmetic for ``world_size`` ranks; ``unique_batch`` is streams (lm) or tokens (translation)."""
    m_ranks, M = c.ba.m_ranks, c.ba.multiplicity
    groups = num_groups(c, world_size)
    if c.task == "lm":
        B = c.input.batch_size
        if B % groups:
            raise ConfigError(f"input.batch_size={B} streams cannot be split over {groups} groups "
                              f"({world_size} ranks / m_ranks {m_ranks}); use a multiple of {groups}")
    else:
        B = c.input.max_tokens
        if B // groups < c.input.max_len:
            raise ConfigError(f"input.max_tokens={B} over {groups} groups leaves {B // groups} tokens per group, "
                              f"less than input.max_len={c.input.max_len}: raise max_tokens or use fewer groups")
    return Layout(world_size, B, M, m_ranks, M // m_ranks, groups, B // groups)


def describe(c: ml_collections.ConfigDict, lay: Layout) -> str:
    """The batch arithmetic line ba-train-seq prints first."""
    if c.task == "lm":
        return (f"{lay.world_size} ranks x {lay.per_rank_batch} streams per rank ({lay.m_local} copies x "
                f"{lay.per_rank_unique} unique) = B {lay.unique_batch} unique x M {lay.multiplicity} = "
                f"{lay.global_batch} streams x {c.input.bptt} tokens per step; {lay.num_groups} group(s) of "
                f"{lay.m_ranks} rank(s)")
    return (f"{lay.world_size} ranks x <= {lay.per_rank_batch} tokens per rank ({lay.m_local} copies x <= "
            f"{lay.per_rank_unique} unique) = <= {lay.unique_batch} unique tokens x M {lay.multiplicity} = "
            f"{lay.global_batch} per step; {lay.num_groups} group(s) of {lay.m_ranks} rank(s)")

