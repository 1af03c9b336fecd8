"""``ba-eval``: evaluate a ba-train checkpoint, single-crop and with test-time augmentation.

    mpirun -np 2 ba-eval --workdir workdirs/resnet44_cifar10/ba [--checkpoint best|latest|PATH] [--tta 10]
                         [--precise_bn 50]

Rebuilds the run from its ``config.json`` (same network, data source, splits
and normalisation), restores a checkpoint (rank 0 reads, every rank receives
the weights by broadcast, as in ba-train) and evaluates the whole evaluation
split exactly, sharded over the ranks:

* single-crop: the config's evaluation transform (what ba-train reports);
* ``--tta N``: the softmax averaged over N copies of every sample under the
  *training* augmentation (paper, Table 5), seeds from (seed, sample id, copy);
* ``--precise_bn N``: first re-estimate the BN statistics with the checkpoint's
  weights on N training batches per rank, averaged over ranks (precise BN,
  :mod:`ba_dist.precise_bn`), for runs whose moving averages lag the weights.

Rank 0 prints a table and writes ``eval.json`` into the workdir. Any world
size works (evaluation has no BA groups). Exit codes: 0 done, 1 error, 2 bad
command line or workdir.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from absl import app, flags

from ba_dist import cli

FLAGS = flags.FLAGS

__all__ = ["EvalError", "evaluate", "format_table", "load_run_config", "run"]


class EvalError(RuntimeError):
    """A workdir or checkpoint that cannot be evaluated; the message names it."""


def _say(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[ba-eval] {msg}", flush=True)


def load_run_config(workdir: str | os.PathLike):
    """The ``ConfigDict`` a ba-train run saved in ``workdir/config.json``."""
    import ml_collections
    path = Path(workdir) / "config.json"
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except OSError as e:
        raise EvalError(f"{path}: cannot read the run's config ({e.strerror or e}); is {workdir} a ba-train workdir?") from None
    except ValueError as e:
        raise EvalError(f"{path}: not valid JSON ({e})") from None


def _find_checkpoint(manager, which: str) -> Path:
    if which == "latest":
        path = manager.latest()
    elif which == "best":
        path = manager.best()
    else:
        path = Path(which)
        if not path.is_absolute() and not path.exists():
            path = manager.dir / which
    if path is None or not (Path(path) / "meta.json").is_file():
        have = ", ".join(p.name for p in manager.complete()) or "none"
        raise EvalError(f"no {which!r} checkpoint in {manager.dir} (complete checkpoints: {have})")
    return Path(path)


def evaluate(workdir: str, checkpoint: str = "latest", tta: int = 0, batch_size: int = 0,
             precise_bn: int = 0) -> dict:
    """Evaluate a run's checkpoint on every rank; returns the results (identical on all ranks).

    ``precise_bn`` > 0: first re-estimate the BN statistics on that many training
    batches per rank (:mod:`ba_dist.precise_bn`); the checkpoint is not changed.
    """
    if tta < 0:
        raise EvalError(f"--tta={tta}: must be >= 0")
    if precise_bn < 0:
        raise EvalError(f"--precise_bn={precise_bn}: must be >= 0")
    cfg = load_run_config(workdir)

    # ---- distribution: evaluation needs only the world (no BA groups)
    from ba_dist import config as config_lib
    from ba_dist import dist
    ctx = dist.init(m_ranks=1, m_local=1)
    rank, world = ctx.rank, ctx.size
    import tensorflow as tf
    if cfg.train.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    from ba_dist import models, train_step
    from ba_dist.checkpoint import CheckpointError, CheckpointManager
    from ba_dist.data import build as data_build
    from ba_dist.data import sources
    from ba_dist.data.evaluation import make_eval_dataset

    # ---- data and network, exactly as ba-train built them
    src = sources.get_source(cfg.input.dataset, split=cfg.input.eval_split, **cfg.input.source_kwargs)
    # Only normalisation, transforms and seed of the spec matter here; evaluation
    # has one "group" per rank and no copies.
    eval_layout = config_lib.Layout(world, world, 1, 1, 1, world, 1)
    spec = data_build.make_spec(cfg, eval_layout, src)
    in_shape = data_build.input_shape(spec, src)
    # models directly, not train.build_net: importing ba_dist.train would define its absl flags twice
    net = models.build_model(cfg.model.name, src.num_classes, in_shape, bn=cfg.model.bn,
                             ghost_batch_size=cfg.model.ghost_batch_size, dropout=cfg.model.dropout)

    # ---- restore: rank 0 reads, everybody gets the weights by broadcast
    manager = CheckpointManager(Path(workdir) / "checkpoints", is_writer=False)
    info = None
    if rank == 0:
        try:
            path = _find_checkpoint(manager, checkpoint)
            meta = manager.restore(tf.train.Checkpoint(net=net), path, partial=True)  # no optimizer state
            info = dict(path=str(path), epoch=meta.get("epoch"), global_step=meta.get("global_step"),
                        per_rank_batch=_per_rank_batch(meta.get("layout"), cfg))
        except (EvalError, CheckpointError) as e:
            info = dict(error=str(e))
    info = dist.broadcast_object(info)
    if "error" in info:
        raise EvalError(info["error"])
    dist.broadcast_from_chief(net.variables)
    _say(rank, f"{cfg.model.name} from {info['path']} (epoch {info['epoch']}, step {info['global_step']}) "
               f"on {src.name}/{cfg.input.eval_split}: {len(src)} samples over {world} rank(s), input {in_shape}")
    if precise_bn:
        _precise_bn(cfg, ctx, net, precise_bn, info)

    # ---- evaluate: exact sums over the sharded split
    per_rank = batch_size or cfg.input.eval_batch_size
    ds, _ = make_eval_dataset(src, spec, rank, world, per_rank, src.image_shape)
    out = dict(workdir=str(workdir), checkpoint=info, world_size=world,
               single_crop=dict(train_step.evaluate_sharded(net, ds, src.num_classes), transform=spec.eval_transform))
    if tta:
        # per_rank images per forward pass: per_rank // tta samples of tta copies
        ds, _ = make_eval_dataset(src, spec, rank, world, max(1, per_rank // tta), src.image_shape, tta=tta)
        out["tta"] = dict(train_step.evaluate_sharded(net, ds, src.num_classes), copies=tta, augment=spec.augment)
        err1, errt = 1 - out["single_crop"]["val_top1"], 1 - out["tta"]["val_top1"]
        out["tta"]["error_reduction"] = (err1 - errt) / err1 if err1 > 0 else 0.0
    return out


def _per_rank_batch(layout: Optional[dict], cfg) -> int:
    """Examples per rank per training step, from the checkpoint's layout (older ones: input.batch_size)."""
    if layout and "per_rank_unique" in layout and "m_local" in layout:
        return int(layout["per_rank_unique"]) * int(layout["m_local"])
    return int(cfg.input.batch_size)


def _precise_bn(cfg, ctx, net, num_batches: int, info: dict) -> None:
    """Precise BN on training batches of the run's per-rank size (one copy per sample: no BA groups here)."""
    from ba_dist import config as config_lib
    from ba_dist.data import build as data_build
    from ba_dist.precise_bn import update_bn_statistics
    b, world = info["per_rank_batch"], ctx.size
    data = data_build.build(cfg, config_lib.Layout(world, b * world, 1, 1, 1, world, b), ctx)
    ds, loader = data.train_dataset(int(info["epoch"] or 0), 0, num_batches)
    maker = data.copy_maker()   # input.copies_on='device': the dataset yields unique batches
    try:
        used = update_bn_statistics(net, ds, num_batches, prepare=maker and (lambda batch: maker.on_device(*batch)))
    finally:
        loader.stop()
    info["precise_bn_batches"] = used
    _say(ctx.rank, f"precise BN: statistics re-estimated on {used} training batches of {b} per rank")


def format_table(out: dict) -> str:
    rows = [("single-crop", out["single_crop"])]
    if "tta" in out:
        rows.append((f"TTA x{out['tta']['copies']}", out["tta"]))
    lines = [f"{'':14s} {'top-1':>8s} {'top-5':>8s} {'loss':>8s} {'samples':>8s}"]
    for name, r in rows:
        lines.append(f"{name:14s} {r['val_top1']:8.2%} {r['val_top5']:8.2%} {r['val_loss']:8.4f} {r['val_count']:8d}")
    if "tta" in out:
        change = out["tta"]["error_reduction"]
        verb = "reduces" if change >= 0 else "increases"   # never "reduces ... by -40%"
        lines.append(f"TTA {verb} the top-1 error by {abs(change):.2%} (relative; the paper's "
                     f"Table 5 'Improvement': e.g. ResNet44/Cifar10 13.96% baseline, 19.52% BA)")
    return "\n".join(lines)


def _define_flags() -> None:
    # defined when the command runs, not on import: ba_dist.train has a --workdir too
    if "tta" in FLAGS:
        return
    flags.DEFINE_string("workdir", None, "workdir of a ba-train run (config.json, checkpoints/)")
    flags.DEFINE_string("checkpoint", "latest", "'latest' (the final weights: what Table 2 reports), 'best' (best "
                        "val_top1) or a checkpoint directory (absolute, or relative to WORKDIR/checkpoints)")
    flags.DEFINE_integer("tta", 0, "test-time augmentation copies per sample (0: single-crop only; the paper used 10)")
    flags.DEFINE_integer("batch_size", 0, "images per rank per forward pass (0: the run's input.eval_batch_size)")
    flags.DEFINE_integer("precise_bn", 0, "re-estimate the BN statistics on this many training batches per rank "
                         "before evaluating (precise BN; 0: the checkpoint's statistics)")


FLAG_NAMES = ["workdir", "checkpoint", "tta", "batch_size", "precise_bn"]


def main(argv) -> int:
    """absl main: evaluate ``--workdir``'s checkpoint; rank 0 writes ``eval.json``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required", exitcode=2)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    from ba_dist.config import ConfigError
    from ba_dist.data.sources import DataSourceError
    try:
        out = evaluate(FLAGS.workdir, FLAGS.checkpoint, FLAGS.tta, FLAGS.batch_size, FLAGS.precise_bn)
    except (EvalError, ConfigError, DataSourceError) as e:
        _say(rank, f"error: {e}")
        sys.stdout.flush()
        os._exit(2)  # every rank raised the same error: no collective is pending
    _say(rank, "\n" + format_table(out))
    if rank == 0:
        path = Path(FLAGS.workdir) / "eval.json"
        path.write_text(json.dumps(out, indent=1, default=float))
        _say(rank, f"wrote {path}")
    return 0


def run(argv: Optional[list] = None):
    """Console-script entry point (``ba-eval``); ``argv`` without the program name, for tests."""
    _define_flags()
    cli.run(main, usage=__doc__, flag_names=FLAG_NAMES, argv=None if argv is None else ["ba-eval", *argv])


if __name__ == "__main__":
    run()
