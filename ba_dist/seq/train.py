"""``ba-train-seq``: sequence models with Batch Augmentation (dropout masks) under Horovod.

    mpirun -np 2 ba-train-seq --config configs/seq_lstm_demo.py --workdir /tmp/lm \\
        [--config.ba.multiplicity=4 --config.train.epochs=3 ...]

Phases of :func:`main`, as ``ba-train``'s: config & layout (no TensorFlow,
a bad config fails on every rank in a second) -> distribution -> data (rank 0
builds the vocabulary and encoded arrays into ``<workdir>/data``, everyone
memory-maps them) -> model & optimizer -> restore -> fit -> final evaluation.
Outputs, checkpoints and exit codes are ``ba-train``'s (docs/usage.md);
``metrics.jsonl`` has token fields instead of image ones (docs/sequence.md).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from absl import app, flags

from ba_dist.config import ConfigError, to_json
from ba_dist.seq import config as seq_config

FLAGS = flags.FLAGS


def _say(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[ba-train-seq] {msg}", flush=True)


def prepare_data(cfg, workdir: Path, ctx):
    """``(vocab, splits)`` from ``<workdir>/data``, built there by rank 0 if missing."""
    from ba_dist.seq import data
    kw = dict(cache=Path(workdir) / "data", is_chief=ctx.topology.is_chief, barrier=ctx.world_comm.Barrier)
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
    from ba_dist.seq import data, evaluation
    topo, hvd = ctx.topology, ctx.hvd
    if cfg.task == "lm":
        streams = cfg.input.eval_streams if split == "valid" else cfg.input.test_streams
        return evaluation.lm_perplexity(net, splits[split], streams, cfg.input.bptt, hvd, topo.rank,
                                        topo.world_size)
    src, tgt = splits[split]
    out = evaluation.translation_loss(net, src, tgt, vocab.bos, hvd, topo.rank, topo.world_size,
                                      cfg.input.eval_batch_size)
    if bleu:
        refs = data.references(Path(workdir) / "data", split)
        res, hyps = evaluation.translation_bleu(
            net, src, tgt, vocab, refs, ctx.world_comm, topo.rank, topo.world_size, cfg.input.eval_batch_size,
            cfg.eval.beam_size, cfg.eval.alpha, cfg.eval.extra_len, cfg.eval.max_sentences)
        out.update(res)
        if hypotheses is not None:
            hypotheses.extend(hyps)
    return out


def main(cfg, workdir: str) -> int:
    from ba_dist import callbacks as cb
    cb.catch_stop_signals_early()  # a stop signal during start-up is honoured after the first step
    # ---- 1. config and layout: pure checks, identical verdict on every rank
    seq_config.validate(cfg)
    from ba_dist import dist
    rank, world = dist.world_rank_and_size()
    lay = seq_config.layout(cfg, world)

    # ---- 2. distribution
    ctx = dist.init_for_layout(lay, deterministic=cfg.train.deterministic, seed=cfg.seed)
    topo, hvd = ctx.topology, ctx.hvd
    import tensorflow as tf
    from ba_dist import callbacks as cb
    from ba_dist.checkpoint import CheckpointManager, restore_for_all_ranks
    from ba_dist.seq import batching, schedules
    from ba_dist.seq import callbacks as seq_cb
    from ba_dist.seq.trainer import SeqTrainModel

    wd = Path(workdir)
    if topo.is_chief:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "config.json").write_text(to_json(cfg))
    _say(rank, seq_config.describe(cfg, lay))

    # ---- 3. data: the same batches on every rank of a group, the same step count everywhere
    vocab, splits = prepare_data(cfg, wd, ctx)
    if cfg.task == "lm":
        batcher = batching.LMBatcher(splits["train"], lay.unique_batch, cfg.input.bptt, topo.num_groups,
                                     topo.group_id, lay.m_local)
        signature = (tf.TensorSpec([lay.per_rank_batch, cfg.input.bptt], tf.int32),) * 2
        what = f"{len(splits['train']):,} training tokens in {lay.unique_batch} streams"
    else:
        batcher = batching.TranslationBatcher(*splits["train"], lay.per_rank_unique, topo.num_groups, topo.group_id,
                                              lay.m_local, vocab.bos, cfg.seed)
        ids = tf.TensorSpec([None, None], tf.int32)
        signature = ((ids, ids), ids)
        what = f"{len(splits['train'][0]):,} training pairs in {len(batcher.batches):,} token batches"
    spe = batcher.steps_per_epoch
    epochs = cfg.train.epochs
    max_steps = cfg.train.max_steps
    if cfg.train.total_steps > 0:   # a budget in steps (the Transformer's 100k iterations)
        epochs = -(-cfg.train.total_steps // spe)
        max_steps = cfg.train.total_steps if max_steps <= 0 else min(max_steps, cfg.train.total_steps)
    _say(rank, f"data: {cfg.input.dataset}, vocabulary {vocab.size:,}, {what}; {spe} steps per epoch x "
               f"{epochs} epochs" + (f", stop at step {max_steps}" if max_steps > 0 else ""))

    # ---- 4. model and optimizer
    net = build_net(cfg, vocab.size)
    schedule = schedules.make_schedule(cfg.optim.schedule, cfg.optim.base_lr, cfg.optim.warmup_steps)
    opt = schedules.make_optimizer(cfg.optim.name, schedule, cfg.optim.momentum, cfg.optim.beta_1,
                                   cfg.optim.beta_2, cfg.optim.epsilon)
    compression = hvd.Compression.fp16 if cfg.optim.grad_compression == "fp16" else hvd.Compression.none
    model = SeqTrainModel(net, hvd, seed=cfg.seed, rank=topo.rank, m_local=lay.m_local,
                          label_smoothing=cfg.optim.label_smoothing, clip_norm=cfg.optim.clip_norm,
                          weight_decay=cfg.optim.weight_decay, compression=compression,
                          recurrent_rows=lay.per_rank_batch if cfg.task == "lm" else None)
    model.compile(optimizer=opt)
    _say(rank, f"model {type(net).__name__}: {net.count_params():,} parameters, {cfg.optim.name} "
               f"lr {cfg.optim.base_lr:g} ({cfg.optim.schedule})")

    # ---- 5. restore (rank 0 reads, everybody gets the state by broadcast)
    opt._create_all_weights(net.trainable_variables)
    ckpt = tf.train.Checkpoint(net=net, optimizer=opt)
    manager = CheckpointManager(wd / "checkpoints", keep=cfg.train.keep_checkpoints, is_writer=topo.is_chief)
    meta = restore_for_all_ranks(manager, ckpt, ctx, net.variables + opt.variables(),
                                 resume=cfg.train.resume, fallback=cfg.train.resume_fallback)
    start_epoch, start_step = (meta["epoch"], meta["step_in_epoch"]) if meta else (0, 0)
    if meta:
        _say(rank, f"resumed from {meta['path']} at epoch {start_epoch} step {start_step}")

    # ---- 6. fit, one call per stretch of whole Keras epochs
    state = cb.TrainState(spe, lay.unique_batch, lay.global_batch)
    state.epoch, state.step_in_epoch = start_epoch, start_step
    last_saved = {"step": -1}

    def save(logs, _metric=None):
        if state.global_step == last_saved["step"]:
            return
        last_saved["step"] = state.global_step
        if topo.is_chief:
            logs = logs or {}
            # best = lowest validation perplexity (measured at every evaluation, BLEU is not)
            metric = -logs["val_ppl"] if "val_ppl" in logs else None
            info = dict(state.position(), seed=cfg.seed, layout=lay.__dict__,
                        metrics=cb.numeric_logs(logs))
            path = manager.save(ckpt, info, metric)
            _say(rank, f"checkpoint {path.name} (epoch {state.epoch}, step {state.step_in_epoch})")

    def evaluate():
        every = cfg.eval.bleu_every
        bleu = cfg.task == "translation" and every > 0 and state.epoch % every == 0
        return evaluate_split(cfg, net, vocab, splits, cfg.input.eval_split, ctx, wd, bleu)

    def run_fit(first_epoch: int, last_epoch: int, offset: int):
        steps = (last_epoch - first_epoch) * spe - offset
        gen = lambda: batcher.iterate(first_epoch, offset, steps)  # noqa: E731
        ds = tf.data.Dataset.from_generator(gen, output_signature=signature).prefetch(cfg.input.prefetch)
        state.epoch_offset = offset
        cbs = [cb._StateTracker(state), cb.metric_average(), seq_cb.ResetStreams(model),
               cb.EvalCallback(state, evaluate, cfg.train.eval_every, epochs),
               seq_cb.TokenThroughput(state, lay.multiplicity)]
        if topo.is_chief:
            cbs.append(seq_cb.SeqMetricsLogger(wd, state, lambda: schedule(opt.iterations)))
        cbs += [cb.CheckpointCallback(state, save, cfg.train.checkpoint_every, epochs),
                cb.StopControl(state, save, max_steps, cfg.train.stop_after_epoch)]
        # offset > 0 only for the single interrupted epoch, which has spe - offset steps left
        model.fit(ds, epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=spe - offset,
                  callbacks=cbs, verbose=cfg.train.verbose if topo.is_chief else 0)

    t0 = time.time()
    if start_step and start_epoch < epochs:   # finish the interrupted epoch first
        run_fit(start_epoch, start_epoch + 1, start_step)
    if not state.stopped and state.epoch < epochs:
        run_fit(state.epoch, epochs, 0)

    # ---- 7. the end: final evaluation of every requested split
    if state.stopped and state.stop_reason != "max_steps":
        _say(rank, f"stopped early ({state.stop_reason}) at epoch {state.epoch} step {state.step_in_epoch}; "
                   f"checkpoint written, exit {cb.REQUEUE_EXIT_CODE} = requeue me")
        return cb.REQUEUE_EXIT_CODE
    result = {}
    for split in filter(None, cfg.eval.final_splits.split(",")):
        res = evaluate_split(cfg, net, vocab, splits, split, ctx, wd, bleu=cfg.task == "translation")
        result.update({k.replace("val_", f"{split}_"): v for k, v in res.items()})
        if split == cfg.input.eval_split:
            state.last_eval = res
    save(dict(state.last_eval or {}))
    result.update(epochs=state.epoch, global_step=state.global_step, wall_time_sec=time.time() - t0)
    if topo.is_chief:
        (wd / "result.json").write_text(json.dumps(result, indent=1, default=float))
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k.endswith(("_ppl", "_bleu", "_loss")))
    _say(rank, f"done after {state.global_step} steps ({result['wall_time_sec']:.0f}s): {summary}")
    return 0


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


def cli(name: str, main_fn) -> None:
    """Run ``main_fn(config, workdir)`` as a console script; exit 2 on a bad config or command line."""
    def _main(argv):
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

    try:
        app.run(_main)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if FLAGS.is_parsed():
            raise
        # ml_collections refuses an override of a key the config lacks (or of the wrong type)
        print(f"[{name}] config error: bad --config override: {e} (keys must exist in the config; "
              f"see configs/seq_*.py and ba_dist/seq/config.py)", file=sys.stderr, flush=True)
        sys.exit(2)


def run():
    """Console-script entry point ``ba-train-seq``."""
    define_flags()
    cli("ba-train-seq", main)


if __name__ == "__main__":
    run()
