"""``ba-train``: train a model with Batch Augmentation under Horovod.

    mpirun -np 2 ba-train --config configs/digits_smoke.py --workdir /tmp/run \\
        [--config.ba.multiplicity=4 --config.train.epochs=20 ...]

Phases of :func:`main`: config & layout (no TensorFlow yet, so a bad config or
an impossible topology fails on every rank in about a second) -> distribution
-> input pipeline -> model & optimizer -> restore -> fit -> final evaluation.
Exit codes: 0 done, 1 error, 75 stopped early and checkpointed ("requeue me").
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ba_dist import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/digits_smoke.py", "Experiment config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
flags.DEFINE_bool("preflight_only", False, "Run the start-up checks (ba_dist/preflight.py) on every rank and exit: "
                  "0 if all pass, 2 if any fails.")

log = logging.getLogger("ba_dist")
# Stop signals that arrived before callbacks.catch_stop_signals_early took over (see run()).
_EARLY_SIGNALS: list[int] = []


def _say(topo_rank: int, msg: str) -> None:
    if topo_rank == 0:
        print(f"[ba-train] {msg}", flush=True)


def main(cfg, workdir: str, preflight_only: bool = False) -> int:
    from ba_dist import callbacks as cb
    cb.catch_stop_signals_early()
    cb.EARLY_SIGNALS.extend(_EARLY_SIGNALS)
    # ---- 1. config and layout: pure checks, identical verdict on every rank
    config_lib.validate(cfg)
    from ba_dist import dist
    rank, world = dist.world_rank_and_size()
    lay = config_lib.layout(cfg, world)
    from ba_dist import preflight   # versions, GPUs, driver, MPI threads, memory, open files: exit 2 if bad
    preflight.run(cfg, lay)
    if preflight_only:
        return 0

    # ---- 2. distribution
    ctx = dist.init_for_layout(lay, deterministic=cfg.train.deterministic, seed=cfg.seed)
    topo, hvd = ctx.topology, ctx.hvd
    import tensorflow as tf
    if cfg.train.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    from ba_dist import audit, optim, trainer
    from ba_dist.checkpoint import CheckpointManager, restore_for_all_ranks
    from ba_dist.data import build as data_build

    wd = Path(workdir)
    if topo.is_chief:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "config.json").write_text(config_lib.to_json(cfg))
    _say(rank, lay.describe())

    # ---- 3. input pipeline
    data = data_build.build(cfg, lay, ctx)
    spe = data.steps_per_epoch
    net = build_net(cfg, data.num_classes, data.input_shape)
    _say(rank, f"data: {data.describe(cfg.train.epochs)}")

    # ---- 4. model and optimizer
    scaling_batch = lay.unique_batch if cfg.optim.lr_scaling_batch == "unique" else lay.global_batch
    base_lr = optim.scale_lr(cfg.optim.base_lr, scaling_batch, cfg.optim.lr_scaling, cfg.optim.reference_batch)
    schedule = optim.make_schedule(cfg.optim.regime, base_lr, spe, **_schedule_kwargs(cfg))
    opt = optim.make_optimizer(schedule, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    if cfg.train.mixed_precision:
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    compression = hvd.Compression.fp16 if cfg.optim.grad_compression == "fp16" else hvd.Compression.none
    model = trainer.BATrainModel(net, hvd, cfg.optim.weight_decay, cfg.optim.decay_biases,
                                 cfg.optim.label_smoothing, compression)
    model.compile(optimizer=opt)
    if cfg.train.xla:
        model.enable_xla()
    _say(rank, f"model {cfg.model.name}: {net.count_params():,} parameters, bn '{cfg.model.bn}', "
               f"lr {base_lr:g} ({cfg.optim.regime}, scaling {cfg.optim.lr_scaling})")

    # ---- 5. restore (rank 0 reads, everybody gets the state by broadcast)
    inner_opt = opt.inner_optimizer if cfg.train.mixed_precision else opt
    inner_opt._create_all_weights(net.trainable_variables)
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

    def save(logs, metric):
        if state.global_step == last_saved["step"]:
            return
        last_saved["step"] = state.global_step
        if topo.is_chief:
            info = dict(state.position(), seed=cfg.seed, layout=lay.__dict__,
                        metrics=cb.numeric_logs(logs))
            path = manager.save(ckpt, info, metric)
            _say(rank, f"checkpoint {path.name} (epoch {state.epoch}, step {state.step_in_epoch})")

    def evaluate():
        return trainer.evaluate_sharded(net, data.eval_dataset(), hvd, data.eval_source.num_classes)

    def skipped_total() -> int:
        # corrupt samples replaced so far, counted once per group (by its reader), summed over groups
        return int(hvd.allreduce(tf.constant(data.skipped(), tf.float64), op=hvd.Sum, name="ba_skipped").numpy())

    def run_fit(first_epoch: int, last_epoch: int, offset: int):
        steps = (last_epoch - first_epoch) * spe - offset
        ds, loader = data.train_dataset(first_epoch, offset, steps)
        state.epoch_offset = offset
        cbs = [cb._StateTracker(state),
               cb.metric_average(),
               cb.EvalCallback(state, evaluate, cfg.train.eval_every, cfg.train.epochs),
               cb.ThroughputCallback(state, skipped_total)]
        if topo.is_chief:
            cbs.append(cb.MetricsLogger(wd, state, lambda: schedule(inner_opt.iterations)))
            if cfg.train.grad_stats_every > 0:
                from ba_dist.analysis.gradstats import GradStatsLogger
                cbs.append(GradStatsLogger(wd, every=cfg.train.grad_stats_every, world_size=topo.world_size))
        cbs += [cb.CheckpointCallback(state, save, cfg.train.checkpoint_every, cfg.train.epochs),
                cb.StopControl(state, save, cfg.train.max_steps, cfg.train.stop_after_epoch)]
        cbs += audit.callbacks(topo, state, net)   # BA_AUDIT_DIR only (slurm/rehearse.sh)
        # offset > 0 only for the single interrupted epoch, which has spe - offset steps left
        try:
            model.fit(ds, epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=spe - offset,
                      callbacks=cbs, verbose=cfg.train.verbose if topo.is_chief else 0)
        except BaseException:
            loader.stop(timeout=5)  # the error may be on this rank only: do not wait long
            raise
        # every rank leaves fit at the same step; end the group's broadcasts together
        if not loader.stop():
            log.warning("input loader thread did not stop within 60 s")

    t0 = time.time()
    if start_step and start_epoch < cfg.train.epochs:   # finish the interrupted epoch first
        run_fit(start_epoch, start_epoch + 1, start_step)
    if not state.stopped and state.epoch < cfg.train.epochs:
        run_fit(state.epoch, cfg.train.epochs, 0)

    # ---- 7. the end
    if state.stopped and state.stop_reason != "max_steps":
        # Nobody leaves before rank 0's checkpoint is on disk: mpirun kills the
        # whole job as soon as one rank exits non-zero.
        ctx.world_comm.Barrier()
        _say(rank, f"stopped early ({state.stop_reason}) at epoch {state.epoch} step {state.step_in_epoch}; "
                   f"checkpoint written, exit {cb.REQUEUE_EXIT_CODE} = requeue me")
        return cb.REQUEUE_EXIT_CODE
    if not state.last_eval or state.stop_reason == "max_steps":
        state.last_eval = evaluate()
    save(dict(state.last_eval), state.last_eval.get("val_top1"))
    result = dict(state.last_eval, epochs=state.epoch, global_step=state.global_step,
                  skipped_samples=skipped_total(), wall_time_sec=time.time() - t0)
    if topo.is_chief:
        (wd / "result.json").write_text(json.dumps(result, indent=1, default=float))
    _say(rank, f"done: validation top-1 {result['val_top1']:.2%}, top-5 {result['val_top5']:.2%}, "
               f"loss {result['val_loss']:.4f} on {result['val_count']} samples after {state.global_step} steps "
               f"({result['wall_time_sec']:.0f}s)")
    return 0


def build_net(cfg, num_classes: int, in_shape: tuple):
    """The network for the config; ``in_shape`` is what the augmentation outputs."""
    from ba_dist import models
    return models.build_model(cfg.model.name, num_classes, in_shape, bn=cfg.model.bn,
                              ghost_batch_size=cfg.model.ghost_batch_size, dropout=cfg.model.dropout)


def _schedule_kwargs(cfg) -> dict:
    kw = {}
    if cfg.optim.warmup_epochs:
        kw["warmup_epochs"] = cfg.optim.warmup_epochs
        kw["reference_lr"] = cfg.optim.base_lr   # Goyal et al.: warm up from the unscaled LR
    if cfg.optim.regime == "cosine":
        kw["total_epochs"] = cfg.train.epochs
    if cfg.optim.regime_scale != 1:
        kw["epoch_scale"] = cfg.optim.regime_scale
    return kw


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir and not FLAGS.preflight_only:
        raise app.UsageError("--workdir is required")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ba_dist.data.sources import DataSourceError
    try:
        code = main(FLAGS.config, FLAGS.workdir, preflight_only=FLAGS.preflight_only)
    except config_lib.ConfigError as e:
        print(f"[ba-train] config error: {e}", file=sys.stderr, flush=True)
        code = 2
    except DataSourceError as e:  # missing/empty/unprepared dataset: same verdict on every rank
        print(f"[ba-train] data error: {e}", file=sys.stderr, flush=True)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run():
    """Console-script entry point."""
    # Importing TensorFlow (in main) alone takes seconds, minutes from a busy parallel file
    # system: from here on SIGTERM/SIGUSR1 are recorded and honoured at the first step.
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, lambda signum, frame: _EARLY_SIGNALS.append(signum))
    sys.argv = ["--preflight_only" if a == "--preflight-only" else a for a in sys.argv]  # absl spells it with _
    try:
        app.run(_main)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if FLAGS.is_parsed():
            raise
        # ml_collections rejects an override of a key the config does not have
        # (or of the wrong type) while absl parses the command line.
        print(f"[ba-train] config error: bad --config override: {e} "
              f"(keys must exist in the config; see configs/ and ba_dist/config.py)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
