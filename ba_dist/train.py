"""``ba-train``: train an image classifier with Batch Augmentation under Horovod.

Each step every unique sample of the global batch appears M times, each copy
with its own augmentation; groups of ``ba.m_ranks`` ranks share their samples
(one reader per group decodes and broadcasts). The fit loop (phases, resume,
requeue, outputs) is :mod:`ba_dist.fit`; this module is the image task and the CLI.

Example::

    mpirun -np 2 ba-train --config configs/digits_smoke.py --workdir /tmp/run \\
        --config.ba.multiplicity=4 --config.train.epochs=20

Outputs in the workdir: config.json, metrics.jsonl / metrics.csv / tensorboard/,
checkpoints/, result.json (docs/usage.md). Exit codes: 0 done, 1 error,
2 bad config or data, 75 stopped early and checkpointed ("requeue me").
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ba_dist import config as config_lib
from ba_dist import dist, fit

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/digits_smoke.py", "Experiment config file (get_config()); "
                                "override any key with --config.<key>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events (required).")
flags.DEFINE_bool("preflight_only", False, "Run the start-up checks (ba_dist/preflight.py) on every rank and exit: "
                  "0 if all pass, 2 if any fails (also spelt --preflight-only).")

log = logging.getLogger("ba_dist")

# metrics.jsonl / metrics.csv columns, in this order (a contract: docs/usage.md)
METRICS_FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                  "images_per_sec", "unique_images_per_sec", "unique_images_seen", "grad_norm",
                  "skipped_samples", "epoch_time_sec")


class ImageTask(fit.Task):
    """Image classification with BA: the group loader's batches, a zoo network, top-1/top-5."""

    name = "ba-train"
    metrics_fields = METRICS_FIELDS
    throughput_unit = "images"

    def check(self, world_size: int):
        config_lib.validate(self.cfg)
        return config_lib.layout(self.cfg, world_size)

    def preflight(self) -> None:
        from ba_dist import preflight   # versions, GPUs, driver, MPI threads, memory, open files: exit 2 if bad
        preflight.run(self.cfg, self.lay)

    def prepare(self) -> fit.Plan:
        cfg = self.cfg
        import tensorflow as tf
        from ba_dist.data import build as data_build
        if cfg.train.mixed_precision:
            tf.keras.mixed_precision.set_global_policy("mixed_float16")
        self.data = data_build.build(cfg, self.lay, self.ctx)   # sources, sampler, pipeline settings
        self.net = build_net(cfg, self.data.num_classes, self.data.input_shape)
        self.say(f"data: {self.data.describe(cfg.train.epochs)}")
        return fit.Plan(self.data.steps_per_epoch, cfg.train.epochs, cfg.train.max_steps)

    def build(self) -> fit.Parts:
        cfg, lay = self.cfg, self.lay
        import tensorflow as tf
        from ba_dist import optim, train_step
        spe = self.data.steps_per_epoch
        scaling_batch = lay.unique_batch if cfg.optim.lr_scaling_batch == "unique" else lay.global_batch
        base_lr = optim.scale_lr(cfg.optim.base_lr, scaling_batch, cfg.optim.lr_scaling, cfg.optim.reference_batch)
        schedule = optim.make_schedule(cfg.optim.regime, base_lr, spe, **_schedule_kwargs(cfg))
        inner = opt = optim.make_optimizer(schedule, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
        if cfg.train.mixed_precision:
            opt = tf.keras.mixed_precision.LossScaleOptimizer(inner)
        model = train_step.BATrainModel(self.net, cfg.optim.weight_decay, cfg.optim.decay_biases,
                                        cfg.optim.label_smoothing, cfg.optim.grad_compression,
                                        auxiliary_weight=cfg.model.auxiliary_weight,
                                        grad_clip_norm=cfg.optim.grad_clip_norm,
                                        copy_maker=self.data.copy_maker())
        model.compile(optimizer=opt)
        if cfg.train.xla:
            model.enable_xla()
        self.say(f"model {cfg.model.name}: {self.net.count_params():,} parameters, bn '{cfg.model.bn}', "
                 f"lr {base_lr:g} ({cfg.optim.regime}, scaling {cfg.optim.lr_scaling})")
        return fit.Parts(model, self.net, opt, schedule, inner)

    def dataset(self, first_epoch: int, offset: int, num_steps: int):
        ds, self.loader = self.data.train_dataset(first_epoch, offset, num_steps)
        return ds

    def end_dataset(self, failed: bool) -> None:
        if failed:
            self.loader.stop(timeout=5)  # the error may be on this rank only: do not wait long
        elif not self.loader.stop():   # every rank left fit at the same step: end the broadcasts together
            log.warning("input loader thread did not stop within 60 s")

    def callbacks(self, parts: fit.Parts) -> list:
        """DARTS's drop-path ramp 0 -> ``model.drop_path_rate`` (epoch e of E: rate x e / E), if set."""
        rate = self.cfg.model.drop_path_rate
        if rate is None:
            return []
        from ba_dist.models.drop_path import DropPathSchedule, drop_path_layers
        if rate > 0 and not drop_path_layers(self.net):
            raise config_lib.ConfigError(f"model.drop_path_rate={rate}: {self.cfg.model.name!r} has no drop-path "
                                         f"layers; leave it unset")
        return [DropPathSchedule(rate, self.cfg.train.epochs)]

    def chief_callbacks(self) -> list:
        if self.cfg.train.grad_stats_every <= 0:
            return []
        from ba_dist.analysis.gradstats import GradStatsLogger
        return [GradStatsLogger(self.workdir, every=self.cfg.train.grad_stats_every,
                                world_size=self.ctx.topology.world_size)]

    def skipped_total(self) -> int:
        """Corrupt samples replaced so far, counted once per group (by its reader), summed over groups."""
        return int(dist.allreduce_sum(self.data.skipped(), name="ba_skipped"))

    def epoch_fields(self, state, logs: dict) -> dict:
        return {"unique_images_seen": state.global_step * state.unique_batch, "skipped_samples": self.skipped_total()}

    def evaluate(self, state) -> dict:
        from ba_dist import train_step
        return train_step.evaluate_sharded(self.net, self.data.eval_dataset(),
                                           self.data.eval_source.num_classes)

    def best_metric(self, logs: dict):
        return logs.get("val_top1")

    def final_evaluation(self, state):
        if not state.last_eval or state.stop_reason == "max_steps":
            state.last_eval = self.evaluate(state)
        return dict(state.last_eval, skipped_samples=self.skipped_total()), state.last_eval

    def summary(self, result: dict, state) -> str:
        return (f"done: validation top-1 {result['val_top1']:.2%}, top-5 {result['val_top5']:.2%}, "
                f"loss {result['val_loss']:.4f} on {result['val_count']} samples after {state.global_step} steps "
                f"({result['wall_time_sec']:.0f}s)")


def main(cfg, workdir: str, preflight_only: bool = False) -> int:
    """Train ``cfg`` into ``workdir`` on every rank: 0 done, 75 stopped early (requeue).

    ``preflight_only``: run only the start-up checks (exit 2 from inside if one fails).
    """
    task = ImageTask(cfg)
    if preflight_only:
        task.lay = task.check(dist.world_rank_and_size()[1])
        task.preflight()
        return 0
    return fit.run(task, workdir)


def build_net(cfg, num_classes: int, in_shape: tuple):
    """The network for the config; ``in_shape`` is what the augmentation outputs."""
    from ba_dist import models
    return models.build_model(cfg.model.name, num_classes, in_shape, bn=cfg.model.bn,
                              ghost_batch_size=cfg.model.ghost_batch_size, dropout=cfg.model.dropout,
                              auxiliary_head=cfg.model.auxiliary_weight > 0)


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
    """Console-script entry point ``ba-train``."""
    sys.argv = ["--preflight_only" if a == "--preflight-only" else a for a in sys.argv]  # absl spells it with _
    fit.console("ba-train", _main, usage=__doc__, flag_names=["config", "workdir", "preflight_only"])


if __name__ == "__main__":
    run()
