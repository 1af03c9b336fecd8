"""``ba-train-seq``: sequence models with Batch Augmentation (dropout masks) under Horovod.

Language modelling (LSTM, PTB / python_docs) or translation (Transformer,
WMT16 En-De / synthetic): every sequence of the global batch appears M times,
each copy with its own dropout masks. Rank 0 builds the vocabulary and
encoded arrays into ``<workdir>/data``, everyone memory-maps them. The fit
loop (phases, resume, requeue, outputs, exit codes 0/1/2/75) is
:mod:`ba_dist.fit`, shared with ``ba-train``; this module is the sequence
task and the CLI. ``metrics.jsonl`` has token fields (docs/sequence.md).

Example::

    mpirun -np 2 ba-train-seq --config configs/seq_lstm_demo.py --workdir /tmp/lm \\
        --config.ba.multiplicity=4 --config.train.epochs=3
"""
from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

from absl import app, flags

from ba_dist import dist, fit
from ba_dist.config import ConfigError
from ba_dist.seq import config as seq_config

FLAGS = flags.FLAGS

# metrics.jsonl / metrics.csv columns, in this order (a contract: docs/sequence.md)
METRICS_FIELDS = ("epoch", "step", "lr", "train_loss", "train_nll", "train_ppl", "train_top1", "val_loss",
                  "val_ppl", "val_top1", "val_bleu", "tokens_per_sec", "unique_tokens_per_sec", "grad_norm",
                  "epoch_time_sec")


def prepare_data(cfg, workdir: Path, ctx):
    """``(vocab, splits)`` from ``<workdir>/data``, built there by rank 0 if missing."""
    from ba_dist.seq import data
    kw = dict(cache=Path(workdir) / "data", is_chief=ctx.topology.is_chief, barrier=dist.barrier)
    corpus_kw = dict(cfg.input.corpus_kwargs.to_dict(), data_dir=cfg.input.data_dir)
    if cfg.task == "lm":
        return data.prepare_lm(cfg.input.dataset, max_vocab=cfg.input.vocab_size, **kw, **corpus_kw)
    if cfg.input.dataset == "wmt16_en_de":
        corpus_kw["download"] = cfg.input.download
    if cfg.input.dataset == "synthetic":
        corpus_kw.update(seed=cfg.seed)
        corpus_kw.pop("data_dir")
    return data.prepare_translation(cfg.input.dataset, vocab_size=cfg.input.vocab_size, max_len=cfg.input.max_len,
                                    vocab_sentences=cfg.input.vocab_sentences, **kw, **corpus_kw)


def build_net(cfg, vocab_size: int):
    """The task's model, built (variables exist) on a dummy batch."""
    import tensorflow as tf
    kwargs = cfg.model.kwargs.to_dict()
    if cfg.task == "lm":
        from ba_dist.seq.lstm_lm import LSTMLanguageModel
        net = LSTMLanguageModel(vocab_size, **kwargs)
        net(tf.ones([1, 2], tf.int32))
    else:
        from ba_dist.seq.transformer import Transformer
        net = Transformer(vocab_size, **kwargs)
        net((tf.ones([1, 2], tf.int32), tf.ones([1, 2], tf.int32)))
    return net


def evaluate_split(cfg, net, vocab, splits, split: str, ctx, workdir: Path, bleu: bool,
                   hypotheses: Optional[list] = None) -> dict:
    """Perplexity (lm) or loss + optional BLEU with beam search (translation) of one split, exact over ranks.

    ``hypotheses``: a list that receives the translations (rank 0, in split order).
    """
    from ba_dist.seq import data, scoring
    topo = ctx.topology
    if cfg.task == "lm":
        streams = cfg.input.eval_streams if split == "valid" else cfg.input.test_streams
        return scoring.lm_perplexity(net, splits[split], streams, cfg.input.bptt, topo.rank,
                                        topo.world_size)
    src, tgt = splits[split]
    out = scoring.translation_loss(net, src, tgt, vocab.bos, topo.rank, topo.world_size,
                                      cfg.input.eval_batch_size)
    if bleu:
        refs = data.references(Path(workdir) / "data", split)
        res, hyps = scoring.translation_bleu(
            net, src, tgt, vocab, refs, topo.rank, topo.world_size, cfg.input.eval_batch_size,
            cfg.eval.beam_size, cfg.eval.alpha, cfg.eval.extra_len, cfg.eval.max_sentences)
        out.update(res)
        if hypotheses is not None:
            hypotheses.extend(hyps)
    return out


class SeqTask(fit.Task):
    """Language modelling or translation with BA: every copy of a sequence gets its own dropout masks."""

    name = "ba-train-seq"
    metrics_fields = METRICS_FIELDS
    throughput_unit, throughput_key = "tokens", "tokens"

    def check(self, world_size: int):
        seq_config.validate(self.cfg)
        return seq_config.layout(self.cfg, world_size)

    def describe(self) -> str:
        return seq_config.describe(self.cfg, self.lay)

    def prepare(self) -> fit.Plan:
        """The same batches on every rank of a group, the same step count everywhere."""
        import tensorflow as tf
        from ba_dist.seq import batching
        cfg, lay, topo = self.cfg, self.lay, self.ctx.topology
        self.vocab, self.splits = prepare_data(cfg, self.workdir, self.ctx)
        if cfg.task == "lm":
            self.batcher = batching.LMBatcher(self.splits["train"], lay.unique_batch, cfg.input.bptt,
                                              topo.num_groups, topo.group_id, lay.m_local)
            self.signature = (tf.TensorSpec([lay.per_rank_batch, cfg.input.bptt], tf.int32),) * 2
            what = f"{len(self.splits['train']):,} training tokens in {lay.unique_batch} streams"
        else:
            self.batcher = batching.TranslationBatcher(*self.splits["train"], lay.per_rank_unique, topo.num_groups,
                                                       topo.group_id, lay.m_local, self.vocab.bos, cfg.seed)
            ids = tf.TensorSpec([None, None], tf.int32)
            self.signature = ((ids, ids), ids)
            what = f"{len(self.splits['train'][0]):,} training pairs in {len(self.batcher.batches):,} token batches"
        spe = self.batcher.steps_per_epoch
        epochs, max_steps = cfg.train.epochs, cfg.train.max_steps
        if cfg.train.total_steps > 0:   # a budget in steps (the Transformer's 100k iterations)
            epochs = -(-cfg.train.total_steps // spe)
            max_steps = cfg.train.total_steps if max_steps <= 0 else min(max_steps, cfg.train.total_steps)
        self.say(f"data: {cfg.input.dataset}, vocabulary {self.vocab.size:,}, {what}; {spe} steps per epoch x "
                 f"{epochs} epochs" + (f", stop at step {max_steps}" if max_steps > 0 else ""))
        return fit.Plan(spe, epochs, max_steps)

    def build(self) -> fit.Parts:
        from ba_dist.seq import schedules
        from ba_dist.seq.train_step import SeqTrainModel
        cfg, lay, topo = self.cfg, self.lay, self.ctx.topology
        net = build_net(cfg, self.vocab.size)
        schedule = schedules.make_schedule(cfg.optim.schedule, cfg.optim.base_lr, cfg.optim.warmup_steps)
        opt = schedules.make_optimizer(cfg.optim.name, schedule, cfg.optim.momentum, cfg.optim.beta_1,
                                       cfg.optim.beta_2, cfg.optim.epsilon)
        self.model = SeqTrainModel(net, seed=cfg.seed, rank=topo.rank, m_local=lay.m_local,
                                   label_smoothing=cfg.optim.label_smoothing, clip_norm=cfg.optim.clip_norm,
                                   weight_decay=cfg.optim.weight_decay, grad_compression=cfg.optim.grad_compression,
                                   recurrent_rows=lay.per_rank_batch if cfg.task == "lm" else None)
        self.model.compile(optimizer=opt)
        self.net = net
        self.say(f"model {type(net).__name__}: {net.count_params():,} parameters, {cfg.optim.name} "
                 f"lr {cfg.optim.base_lr:g} ({cfg.optim.schedule})")
        return fit.Parts(self.model, net, opt, schedule)

    def dataset(self, first_epoch: int, offset: int, num_steps: int):
        import tensorflow as tf
        batches = functools.partial(self.batcher.iterate, first_epoch, offset, num_steps)
        return tf.data.Dataset.from_generator(batches, output_signature=self.signature).prefetch(
            self.cfg.input.prefetch)

    def callbacks(self, parts: fit.Parts) -> list:
        from ba_dist.fit_callbacks import ResetStreams
        return [ResetStreams(parts.model)]

    def epoch_fields(self, state, logs: dict) -> dict:
        if "nll" not in logs:
            return {}
        return {"train_nll": float(logs["nll"]), "train_ppl": math.exp(min(float(logs["nll"]), 50.0))}

    def evaluate(self, state) -> dict:
        every = self.cfg.eval.bleu_every
        bleu = self.cfg.task == "translation" and every > 0 and state.epoch % every == 0
        return evaluate_split(self.cfg, self.net, self.vocab, self.splits, self.cfg.input.eval_split, self.ctx,
                              self.workdir, bleu)

    def best_metric(self, logs: dict):
        # best = lowest validation perplexity (measured at every evaluation, BLEU is not)
        return -logs["val_ppl"] if "val_ppl" in logs else None

    def final_evaluation(self, state):
        """Every split of ``eval.final_splits``, ``val_*`` renamed ``<split>_*``."""
        cfg, result = self.cfg, {}
        for split in filter(None, cfg.eval.final_splits.split(",")):
            res = evaluate_split(cfg, self.net, self.vocab, self.splits, split, self.ctx, self.workdir,
                                 bleu=cfg.task == "translation")
            result.update({k.replace("val_", f"{split}_"): v for k, v in res.items()})
            if split == cfg.input.eval_split:
                state.last_eval = res
        return result, state.last_eval or {}

    def summary(self, result: dict, state) -> str:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k.endswith(("_ppl", "_bleu", "_loss")))
        return f"done after {state.global_step} steps ({result['wall_time_sec']:.0f}s): {scores}"


def main(cfg, workdir: str) -> int:
    """Train ``cfg`` into ``workdir`` on every rank: 0 done, 75 stopped early (requeue)."""
    return fit.run(SeqTask(cfg), workdir)


def define_flags() -> None:
    """``--config`` and ``--workdir`` (defined on demand, so importing this module defines no flags)."""
    from ml_collections import config_flags
    if "config" not in FLAGS:
        config_flags.DEFINE_config_file("config", None, "Sequence config file (get_config()); "
                                        "path[:variant] for configs with variants.", lock_config=True)
    if "workdir" not in FLAGS:
        flags.DEFINE_string("workdir", None, "Directory for data cache, checkpoints, metrics and TensorBoard.")


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)  # skip interpreter teardown: other ranks may be gone


def run_main(name: str, main_fn, argv) -> int:
    """``main_fn(config, workdir)`` of a ``ba-*-seq`` script; exit 2 on a bad config, 1 on a data error."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    from ba_dist.seq.data import DataError
    try:
        code = main_fn(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        print(f"[{name}] config error: {e}", file=sys.stderr, flush=True)
        code = 2
    except DataError as e:
        # raised on the rank that reads (rank 0) while the others wait in a barrier
        print(f"[{name}] data error: {e}", file=sys.stderr, flush=True)
        from ba_dist import dist
        if dist.world_rank_and_size()[1] > 1:
            dist.abort(1)
        code = 1
    _exit(code)
    return code


def run():
    """Console-script entry point ``ba-train-seq``."""
    define_flags()
    fit.console("ba-train-seq", functools.partial(run_main, "ba-train-seq", main), usage=__doc__,
                flag_names=["config", "workdir"])


if __name__ == "__main__":
    run()
