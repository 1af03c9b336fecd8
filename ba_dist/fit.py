"""The one fit loop of ``ba-train`` (images) and ``ba-train-seq`` (sequences).

A trainer is a :class:`Task` (its data, model, evaluation, extra callbacks,
metrics fields and best-metric) and a CLI; :func:`run` does the rest, in
named phases, the same for both::

    1. config & layout   pure checks, no TensorFlow: a bad config or an impossible
                         topology fails on every rank within about a second
    2. distribution      Horovod/MPI up; rank 0 writes config.json
    3. data              task.prepare (the task prints what it loaded)
    4. model & optimizer task.build
    5. restore           rank 0 reads the newest checkpoint, everybody gets it by broadcast
    6. fit               one model.fit per stretch: the interrupted epoch first
                         (resume mid-epoch), then whole epochs
    7. the end           stopped early: barrier, exit 75 ("requeue me");
                         else precise BN (train.precise_bn_batches > 0), final evaluation,
                         checkpoint, result.json, summary line

Exit codes: 0 done, 75 stopped early and checkpointed (the CLIs add 1 error,
2 bad config/data). Stop signals (SIGTERM, SIGUSR1) are recorded from process
start (:func:`catch_stop_signals_early`) and honoured at the first step.

This module imports no TensorFlow at import time (the CLIs import it before
the config check); phases 2-7 import it.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any, Optional

from ba_dist import dist
from ba_dist.config import to_json

__all__ = ["REQUEUE_EXIT_CODE", "STOP_SIGNALS", "Plan", "Parts", "Task", "FitLoop", "run", "console",
           "catch_stop_signals_early", "take_early_signal"]

# Exit code of a run that stopped early on SIGTERM/SIGUSR1 (or stop_after_epoch)
# after writing a checkpoint: "requeue me". 75 is EX_TEMPFAIL in sysexits.h.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# Stop signals received before StopControl took over (imports, data indexing, restore): the one list.
_EARLY_SIGNALS: list[int] = []


def _record_early(signum, frame) -> None:
    _EARLY_SIGNALS.append(signum)


def catch_stop_signals_early() -> None:
    """From now on SIGTERM/SIGUSR1 are recorded and honoured at the first training step.

    Call it first thing in a console script: importing TensorFlow alone takes
    seconds (minutes from a busy parallel file system), and a signal in that
    time would otherwise kill the rank instead of stopping it cleanly.
    """
    for s in STOP_SIGNALS:
        signal.signal(s, _record_early)


def take_early_signal() -> Optional[int]:
    """The last stop signal recorded since :func:`catch_stop_signals_early` (None if none); clears the record."""
    last = _EARLY_SIGNALS[-1] if _EARLY_SIGNALS else None
    _EARLY_SIGNALS.clear()
    return last


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long the task trains, known once its data is (phase 3)."""

    steps_per_epoch: int
    epochs: int
    max_steps: int = -1              # > 0: stop (and evaluate) after this many global steps


@dataclasses.dataclass(frozen=True)
class Parts:
    """What :meth:`Task.build` returns (phase 4)."""

    model: Any                       # compiled Keras model with the BA train step (ba_dist.train_step)
    net: Any                         # the network inside it: what is evaluated and checkpointed
    optimizer: Any                   # the compiled optimizer (maybe a LossScaleOptimizer)
    schedule: Any                    # learning rate as a function of the step
    inner_optimizer: Any = None      # the optimizer whose iterations drive ``schedule`` (default: optimizer)

    @property
    def base_optimizer(self):
        return self.inner_optimizer if self.inner_optimizer is not None else self.optimizer


class Task:
    """What a trainer supplies to the fit loop; :func:`run` calls the methods in phase order.

    Subclasses set ``name`` (the message prefix), ``metrics_fields`` (the
    ``metrics.csv`` columns), ``throughput_unit`` / ``throughput_key`` (see
    :class:`ba_dist.fit_callbacks.Throughput`) and implement the methods.
    ``self.cfg`` is the config, ``self.ctx`` / ``self.lay`` / ``self.workdir``
    are set by the loop before :meth:`prepare`.
    """

    name = "ba-task"
    metrics_fields: tuple = ()
    throughput_unit = "images"
    throughput_key: Optional[str] = None

    def __init__(self, cfg):
        self.cfg = cfg
        self.ctx = self.lay = self.workdir = None

    # -- phase 1 (pure: no TensorFlow, no collectives) ------------------------------
    def check(self, world_size: int):
        """Validate the config and return its :class:`ba_dist.config.Layout` for ``world_size``."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Start-up checks of the machine for this layout, before any collective (exit 2 if one fails)."""

    def describe(self) -> str:
        """The batch arithmetic line printed first."""
        return self.lay.describe()

    # -- phases 3-4 ---------------------------------------------------------------
    def prepare(self) -> Plan:
        """Load/index the data (every rank); print what was loaded."""
        raise NotImplementedError

    def build(self) -> Parts:
        """The compiled train model, its network and optimizer."""
        raise NotImplementedError

    # -- phase 6 ------------------------------------------------------------------
    def dataset(self, first_epoch: int, offset: int, num_steps: int):
        """Training batches for ``num_steps`` steps from ``offset`` steps into ``first_epoch``."""
        raise NotImplementedError

    def end_dataset(self, failed: bool) -> None:
        """Release what :meth:`dataset` started (called after every stretch; ``failed``: fit raised)."""

    def callbacks(self, parts: Parts) -> list:
        """Extra callbacks on every rank, run before the evaluation."""
        return []

    def chief_callbacks(self) -> list:
        """Extra callbacks on rank 0 only, run after the metrics logger."""
        return []

    def epoch_fields(self, state, logs: dict) -> dict:
        """Extra per-epoch fields for the logs (called on every rank: may be collective)."""
        return {}

    def evaluate(self, state) -> dict:
        """Exact sharded evaluation during training (``val_*`` keys), identical on every rank."""
        raise NotImplementedError

    def best_metric(self, logs: dict) -> Optional[float]:
        """Higher is better; None: this checkpoint does not compete for best.json."""
        return None

    # -- phase 7 ------------------------------------------------------------------
    def final_evaluation(self, state) -> tuple[dict, dict]:
        """``(result.json fields, the evaluation to record with the final checkpoint)``."""
        raise NotImplementedError

    def summary(self, result: dict, state) -> str:
        """The last line."""
        raise NotImplementedError

    def say(self, msg: str) -> None:
        """Print on rank 0 with the task's prefix."""
        if self.ctx is None or self.ctx.topology.is_chief:
            print(f"[{self.name}] {msg}", flush=True)


class FitLoop:
    """Phases 5-7 for one task whose data and model exist: restore, fit stretches, the end."""

    def __init__(self, task: Task, plan: Plan, parts: Parts):
        import tensorflow as tf
        from ba_dist import fit_callbacks as cb
        from ba_dist.checkpoint import CheckpointManager
        self.task, self.plan, self.parts = task, plan, parts
        self.cfg, self.ctx, self.lay, self.workdir = task.cfg, task.ctx, task.lay, Path(task.workdir)
        parts.base_optimizer._create_all_weights(parts.net.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(net=parts.net, optimizer=parts.optimizer)
        self.manager = CheckpointManager(self.workdir / "checkpoints", keep=self.cfg.train.keep_checkpoints,
                                         is_writer=self.ctx.topology.is_chief)
        self.state = cb.TrainState(plan.steps_per_epoch, self.lay.unique_batch, self.lay.global_batch)
        self._last_saved = -1
        self._bn_averaged = -1
        self.bn_statistics = [v for v in parts.net.non_trainable_variables
                              if v.name.split("/")[-1].startswith(("moving_mean", "moving_variance"))]

    # -- phase 5 -------------------------------------------------------------------
    def restore(self) -> None:
        """Rank 0 restores the newest checkpoint; every rank starts from rank 0's variables."""
        from ba_dist.checkpoint import restore_for_all_ranks
        variables = self.parts.net.variables + self.parts.optimizer.variables()
        meta = restore_for_all_ranks(self.manager, self.checkpoint, variables, resume=self.cfg.train.resume,
                                     fallback=self.cfg.train.resume_fallback)
        if meta:
            self.state.epoch, self.state.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
            self.task.say(f"resumed from {meta['path']} at epoch {self.state.epoch} step {self.state.step_in_epoch}")

    # -- phase 6 -------------------------------------------------------------------
    def fit(self) -> None:
        """The interrupted epoch first (resume mid-epoch), then the remaining whole epochs."""
        state, epochs = self.state, self.plan.epochs
        if state.step_in_epoch and state.epoch < epochs:
            self.fit_stretch(state.epoch, state.epoch + 1, state.step_in_epoch)
        if not state.stopped and state.epoch < epochs:
            self.fit_stretch(state.epoch, epochs, 0)

    def fit_stretch(self, first_epoch: int, last_epoch: int, offset: int) -> None:
        """One ``model.fit`` over Keras epochs ``first_epoch..last_epoch-1``, the first one ``offset`` steps in."""
        spe = self.plan.steps_per_epoch
        ds = self.task.dataset(first_epoch, offset, (last_epoch - first_epoch) * spe - offset)
        self.state.start_stretch(offset)
        verbose = self.cfg.train.verbose if self.ctx.topology.is_chief else 0
        try:
            # offset > 0 only for the single interrupted epoch, which has spe - offset steps left
            self.parts.model.fit(ds, epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=spe - offset,
                                 callbacks=self.callbacks(), verbose=verbose)
        except BaseException:
            self.task.end_dataset(failed=True)
            raise
        self.task.end_dataset(failed=False)

    def callbacks(self) -> list:
        """In the order they must run at the end of an epoch (see ba_dist.fit_callbacks)."""
        from ba_dist import audit
        from ba_dist import fit_callbacks as cb
        state, task, train = self.state, self.task, self.cfg.train
        cbs = [cb.StateTracker(state), cb.metric_average(), *task.callbacks(self.parts),
               cb.EvalCallback(state, self.evaluate, train.eval_every, self.plan.epochs),
               cb.Throughput(state, task.throughput_unit, self.lay.multiplicity, task.throughput_key),
               cb.EpochFields(self.epoch_fields)]
        if self.ctx.topology.is_chief:
            cbs.append(cb.MetricsLogger(self.workdir, state, self.learning_rate, task.metrics_fields))
            cbs += task.chief_callbacks()
        cbs += [cb.CheckpointCallback(state, self.save, train.checkpoint_every, self.plan.epochs),
                cb.StopControl(state, self.save, self.plan.max_steps, train.stop_after_epoch)]
        cbs += audit.callbacks(self.ctx.topology, state, self.parts.net)   # BA_AUDIT_DIR only (slurm/rehearse.sh)
        return cbs

    def evaluate(self) -> dict:
        self.average_bn_statistics()
        return self.task.evaluate(self.state)

    def average_bn_statistics(self) -> None:
        """Every rank's BN moving statistics (ghost BN's too) become their mean over ranks (collective).

        Each rank's moving averages follow its own batches. Averaged before
        every evaluation and checkpoint (as timm's ``distribute_bn``), every
        rank evaluates its shard with the same statistics, and those are the
        ones the checkpoint holds: ``result.json`` is the saved model's accuracy
        (what ``ba-eval`` of the checkpoint reports). Once per step: averaging
        averaged values again could move them by rounding.
        """
        if not self.bn_statistics or self._bn_averaged == self.state.global_step:
            return
        self._bn_averaged = self.state.global_step
        for v, mean in zip(self.bn_statistics, dist.allreduce_mean(self.bn_statistics, name="ba_bn_statistics")):
            v.assign(mean)

    def precise_bn(self, num_batches: int) -> None:
        """Re-estimate the BN statistics with the current weights on ``num_batches`` training batches (0: no-op).

        Precise BN (:mod:`ba_dist.precise_bn`): the moving averages lag the
        weights under a constant or fast learning rate. The batches are those
        of the next epoch (``state.epoch``), read as training reads them; the
        statistics end averaged over ranks, identical everywhere, so the
        final checkpoint holds them and ``ba-eval`` of it reports ``result.json``.
        """
        if num_batches <= 0 or not self.bn_statistics:
            return
        from ba_dist.precise_bn import update_bn_statistics
        ds = self.task.dataset(self.state.epoch, 0, num_batches)
        try:
            used = update_bn_statistics(self.parts.net, ds, num_batches,
                                        prepare=getattr(self.parts.model, "prepare_batch", None))
        except BaseException:
            self.task.end_dataset(failed=True)
            raise
        self.task.end_dataset(failed=False)
        self._bn_averaged = self.state.global_step   # already averaged over ranks
        # new statistics: evaluate again and rewrite this step's checkpoint with them
        self.state.last_eval, self._last_saved = {}, -1
        self.task.say(f"precise BN: statistics re-estimated on {used} training batches per rank")

    def epoch_fields(self, logs: dict) -> dict:
        return self.task.epoch_fields(self.state, logs)

    def learning_rate(self) -> float:
        return float(self.parts.schedule(self.parts.base_optimizer.iterations))

    def save(self, logs: dict) -> None:
        """Checkpoint the current position (once per step; rank 0 writes, the others return)."""
        from ba_dist import fit_callbacks as cb
        state = self.state
        if state.global_step == self._last_saved:
            return
        self._last_saved = state.global_step
        self.average_bn_statistics()
        if self.ctx.topology.is_chief:
            meta = dict(state.position(), seed=self.cfg.seed, layout=self.lay.__dict__,
                        metrics=cb.numeric_logs(logs))
            path = self.manager.save(self.checkpoint, meta, self.task.best_metric(logs))
            self.task.say(f"checkpoint {path.name} (epoch {state.epoch}, step {state.step_in_epoch})")

    # -- phase 7 -------------------------------------------------------------------
    def finish(self, t0: float) -> int:
        """Requeue (75) after a barrier, or evaluate, checkpoint and write result.json (0)."""
        state = self.state
        if state.requeue:
            # Nobody leaves before rank 0's checkpoint is on disk: mpirun kills the
            # whole job as soon as one rank exits non-zero.
            dist.barrier()
            self.task.say(f"stopped early ({state.stop_reason}) at epoch {state.epoch} step "
                          f"{state.step_in_epoch}; checkpoint written, exit {REQUEUE_EXIT_CODE} = requeue me")
            return REQUEUE_EXIT_CODE
        self.precise_bn(self.cfg.train.get("precise_bn_batches", 0))
        self.average_bn_statistics()
        result, last_eval = self.task.final_evaluation(state)
        self.save(dict(last_eval))
        result.update(epochs=state.epoch, global_step=state.global_step, wall_time_sec=time.time() - t0)
        if self.ctx.topology.is_chief:
            (self.workdir / "result.json").write_text(json.dumps(result, indent=1, default=float))
        self.task.say(self.task.summary(result, state))
        return 0


def run(task: Task, workdir: str) -> int:
    """Train ``task`` into ``workdir`` (every rank calls this); 0 done or 75 requeue."""
    catch_stop_signals_early()   # no-op for the CLIs, which did it at process start
    # ---- 1. config and layout: pure checks, identical verdict on every rank
    task.lay = task.check(dist.world_rank_and_size()[1])
    task.preflight()

    # ---- 2. distribution
    task.ctx = dist.init_for_layout(task.lay, deterministic=task.cfg.train.deterministic, seed=task.cfg.seed)
    task.workdir = Path(workdir)
    if task.ctx.topology.is_chief:
        task.workdir.mkdir(parents=True, exist_ok=True)
        (task.workdir / "config.json").write_text(to_json(task.cfg))
    task.say(task.describe())

    # ---- 3. data, 4. model and optimizer
    plan = task.prepare()
    loop = FitLoop(task, plan, task.build())

    # ---- 5. restore (rank 0 reads, everybody gets the state by broadcast)
    loop.restore()

    # ---- 6. fit, one model.fit per stretch of whole Keras epochs
    t0 = time.time()
    loop.fit()

    # ---- 7. the end
    return loop.finish(t0)


def console(name: str, main, *, usage: str, flag_names, catch_signals: bool = True) -> None:
    """Run ``main(argv)`` as the console script ``name``: ``--help`` prints ``usage``; bad overrides exit 2.

    ``catch_signals``: record stop signals from here on (trainers; see :func:`catch_stop_signals_early`).
    """
    import sys
    from absl import flags
    from ba_dist import cli
    if catch_signals:
        catch_stop_signals_early()
    try:
        cli.run(main, usage=usage, flag_names=flag_names)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if flags.FLAGS.is_parsed():
            raise
        # ml_collections rejects an override of a key the config does not have
        # (or of the wrong type) while absl parses the command line.
        print(f"[{name}] config error: bad --config override: {e} "
              f"(keys must exist in the config; see configs/ and the config module)", file=sys.stderr, flush=True)
        sys.exit(2)
