"""``ba-analyze``: the paper's section 3 measurements, one subcommand each.

Gradient correlations under augmentation (Table 1) and the throughput
benchmarks (Table 3); ``ba-bench`` is the same without grad-corr.

    ba-analyze grad-corr --workdir DIR          # Table 1: checkpoint state and initialization
    ba-analyze grad-corr --config FILE          # Table 1: initialization only
        [--n 100] [--seed S] [--augment NAME ...] [--checkpoint latest|best|PATH] [--out FILE]
    ba-analyze throughput --model NAME ...      # as ba-bench throughput
    ba-analyze scaling --model NAME ...         # as ba-bench scaling
    ba-analyze copies ...                       # as ba-bench copies

Example (Table 1 of a trained run, 100 samples as the paper):

    ba-analyze grad-corr --workdir workdirs/digits --n 100

(``python -m ba_dist.analysis.cli <subcommand> ...`` is the same.) grad-corr
and throughput also run under ``mpirun``: grad-corr splits its samples over
the ranks (same numbers as one process), throughput times the data-parallel
step on all ranks. Only rank 0 prints and writes. Each flag belongs to one or
more subcommands (named in its help). Exit codes: 0 done, 2 bad arguments,
config or workdir.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

from absl import flags

from ba_dist import cli

__all__ = ["BENCH_USAGE", "FLAGS", "run", "bench", "main"]

BENCH_USAGE = """``ba-bench``: images/s of the training step, one model (the paper's Table 3),
and where (and how fast) the BA copies are made.

    ba-bench throughput --model NAME [--image-size 32 --channels 3 --num-classes 10]
        [--batch-sizes 1,2,...,256] [--repeats 5] [--out-dir DIR]      # Table 3
    ba-bench scaling --model NAME --max-ranks N [--batch-size 32]      # 1..N ranks under mpirun
    ba-bench copies [--transform imagenet --source-size 375x500 --unique 32 --copies 4]
                                                     # copies on the host vs on the GPU (copies_on)

Example (throughput of ResNet44 on CIFAR-shaped input, per-rank batch 1..256):

    ba-bench throughput --model resnet44 --out-dir bench/resnet44

throughput also runs under ``mpirun`` (it times the data-parallel step on all
ranks; rank 0 prints and writes); scaling launches ``mpirun -np 1..N`` itself.
Exit codes: 0 done, 2 bad arguments.
"""

# Own FlagValues: grad-corr imports ba_dist.train, whose --config/--workdir are global flags,
# and tests call main() several times in one process.
FLAGS = flags.FlagValues()
_GRAD_CORR = "grad-corr: "
_BENCH = "throughput, scaling: "
flags.DEFINE_string("workdir", None, _GRAD_CORR + "ba-train workdir: its checkpoint and, with the same config, "
                    "a fresh init (exactly one of --workdir, --config)", flag_values=FLAGS)
flags.DEFINE_string("config", None, _GRAD_CORR + "config file: a fresh model at initialization only",
                    flag_values=FLAGS)
flags.DEFINE_integer("n", 100, _GRAD_CORR + "samples per measure (100 as the paper)", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "grad-corr: sampling and augmentation seed; throughput, scaling: model seed",
                     flag_values=FLAGS)
flags.DEFINE_multi_string("augment", None, _GRAD_CORR + "augmentation set for rho(x, T(x)); repeat for several "
                          "(default: the source's training augmentation, and the same plus cutout)",
                          flag_values=FLAGS)
flags.DEFINE_string("checkpoint", "latest", _GRAD_CORR + "latest | best | path to a ckpt-* directory",
                    flag_values=FLAGS)
flags.DEFINE_integer("eval-samples", 1000, _GRAD_CORR + "validation samples for the accuracy row", flag_values=FLAGS)
flags.DEFINE_string("out", None, _GRAD_CORR + "JSON output (default: <workdir>/grad_corr.json; none for --config)",
                    flag_values=FLAGS)
flags.DEFINE_string("model", None, _BENCH + "a model of the zoo (ba_dist.models.MODEL_NAMES); required",
                    flag_values=FLAGS)
flags.DEFINE_integer("image-size", 32, _BENCH + "input height and width", flag_values=FLAGS)
flags.DEFINE_integer("channels", 3, _BENCH + "input channels", flag_values=FLAGS)
flags.DEFINE_integer("num-classes", 10, _BENCH + "classes of the model's output", flag_values=FLAGS)
flags.DEFINE_enum("bn", "batch", ["batch", "none"], _BENCH + "batch normalization or none", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, _BENCH + "timed runs per batch size (median, std)", flag_values=FLAGS)
flags.DEFINE_integer("steps", 5, _BENCH + "steps per timed run (at least --min-images images)", flag_values=FLAGS)
flags.DEFINE_integer("min-images", 64, _BENCH + "images per rank per timed run, at least", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, _BENCH + "untimed steps per batch size (tracing included)", flag_values=FLAGS)
flags.DEFINE_string("out-dir", None, _BENCH + "write <name>.json, .md and .png here", flag_values=FLAGS)
flags.DEFINE_string("batch-sizes", ",".join(str(b) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)),
                    "throughput: comma-separated per-rank batch sizes", flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads per rank (throughput: 0 = TF default; "
                     "scaling: 0 = cores / --max-ranks)", flag_values=FLAGS)
flags.DEFINE_string("json", None, "throughput: raw result file (what `scaling` reads)", flag_values=FLAGS)
flags.DEFINE_bool("quiet", False, "throughput: print nothing (used by `scaling`)", flag_values=FLAGS)
flags.DEFINE_integer("max-ranks", None, "scaling: largest world size (runs 1..N ranks); required",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch-size", 32, "scaling: per-rank batch size", flag_values=FLAGS)
flags.DEFINE_string("mpirun", "mpirun", "scaling: the mpirun command", flag_values=FLAGS)
flags.DEFINE_float("timeout", 1800, "scaling: seconds per launch", flag_values=FLAGS)
flags.DEFINE_string("transform", "imagenet", "copies: the training augmentation", flag_values=FLAGS)
flags.DEFINE_string("source-size", "375x500", "copies: largest decoded image, HxW (sizes vary down to 80%)",
                    flag_values=FLAGS)
flags.DEFINE_integer("unique", 32, "copies: unique images per step (b)", flag_values=FLAGS)
flags.DEFINE_integer("copies", 4, "copies: copies of each image per rank (m_local)", flag_values=FLAGS)

_BENCH_FLAGS = ("model", "image-size", "channels", "num-classes", "bn", "repeats", "steps", "min-images",
                "warmup", "seed", "out-dir")
# subcommand -> its flags (the first listed in --help, in this order)
SUBCOMMAND_FLAGS = {
    "grad-corr": ("workdir", "config", "n", "seed", "augment", "checkpoint", "eval-samples", "out"),
    "throughput": _BENCH_FLAGS + ("batch-sizes", "threads", "json", "quiet"),
    "scaling": _BENCH_FLAGS + ("max-ranks", "batch-size", "threads", "mpirun", "timeout"),
    "copies": ("transform", "source-size", "unique", "copies", "repeats"),
}


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


# ----------------------------------------------------------------------------
# grad-corr
# ----------------------------------------------------------------------------
def _load_config(args):
    import ml_collections
    from ba_dist import config as config_lib
    if args.workdir:
        path = Path(args.workdir) / "config.json"
        if not path.is_file():
            raise UsageError(f"{path} does not exist: --workdir must be a ba-train workdir "
                             f"(or use --config FILE for a fresh model)")
        cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    else:
        cfg = config_lib.load_config_file(args.config)
    config_lib.validate(cfg)
    return cfg


def default_augment_sets(train_augment: str, image_size: int) -> list[str]:
    """The training augmentation ("crop+flip") and the same plus cutout of half the image side."""
    if train_augment in ("cifar", "cifar_cutout"):
        return ["cifar", "cifar_cutout"]
    if "cutout" in train_augment:
        return [train_augment]
    return [train_augment, f"{train_augment}|cutout(size={max(1, image_size // 2)})"]


def _checkpoint_path(workdir: Path, which: str) -> Path:
    from ba_dist.checkpoint import CheckpointManager
    manager = CheckpointManager(workdir / "checkpoints", is_writer=False)
    path = {"latest": manager.latest, "best": manager.best}.get(which, lambda: Path(which))()
    if path is None or not (path / "meta.json").is_file():
        raise UsageError(f"no complete checkpoint '{which}' in {workdir / 'checkpoints'} "
                         f"(train first, or pass --checkpoint PATH to a ckpt-* directory)")
    return path


def _grad_corr(args, say) -> int:
    cfg = _load_config(args)
    from ba_dist import dist
    ctx = dist.init()
    import tensorflow as tf
    from ba_dist import train
    from ba_dist.analysis import grad_corr as gc
    from ba_dist.data import augment as aug
    from ba_dist.data import build as data_build
    from ba_dist.data import sources

    train_src = sources.get_source(cfg.input.dataset, split=cfg.input.train_split, **cfg.input.source_kwargs)
    eval_src = sources.get_source(cfg.input.dataset, split=cfg.input.eval_split, **cfg.input.source_kwargs)
    # make_spec reads only the per-rank sizes from the layout; any valid pair will do here.
    spec = data_build.make_spec(cfg, SimpleNamespace(per_rank_unique=1, m_local=1), train_src)
    in_shape = None
    names = args.augment or None
    eval_fn = aug.get_augment(spec.eval_transform)

    def preprocess(x):
        return x / 255.0 if spec.mean is None else aug.normalize(x, spec.mean, spec.std)

    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    ckpt = _checkpoint_path(Path(args.workdir), args.checkpoint) if args.workdir else None
    states = []
    wanted = ["init"] + (["trained"] if ckpt else [])
    rank, size = ctx.rank, ctx.size
    for state in wanted:
        meta = {"epoch": 0, "global_step": 0}
        if state == "init":
            tf.keras.utils.set_random_seed(cfg.seed)   # the init of a train.deterministic run
        in_shape = data_build.input_shape(spec, train_src)
        net = train.build_net(cfg, train_src.num_classes, in_shape)
        if state == "trained":
            tf.train.Checkpoint(net=net).read(str(ckpt / "state")).expect_partial() \
                .assert_existing_objects_matched()
            meta = json.loads((ckpt / "meta.json").read_text())
            meta["checkpoint"] = str(ckpt)
        if names is None:
            names = default_augment_sets(spec.augment, in_shape[0])
        fns = {k: aug.get_augment(k) for k in names}
        per = gc.per_sample_correlations(net, train_src, fns, args.n, args.seed, samples=range(rank, args.n, size),
                                         eval_fn=eval_fn, preprocess=preprocess)
        gathered = dist.gather_to_chief(per)
        acc = gc.accuracy(net, eval_src, args.eval_samples, eval_fn=eval_fn, preprocess=preprocess) \
            if rank == 0 else (None, 0)
        if rank == 0:
            merged = {k: {} for k in per}
            for part in gathered:
                for k, v in part.items():
                    merged[k].update(v)
            rho = {k: gc.summarize([v[i] for i in sorted(v)]) for k, v in merged.items()}
            states.append({"name": state, "epoch": meta.get("epoch"), "global_step": meta.get("global_step"),
                           "checkpoint": meta.get("checkpoint"), "val_top1": acc[0], "val_count": acc[1],
                           "rho": rho})
            say(f"{state}: done ({args.n} samples on {size} rank(s))")
    if rank != 0:
        return 0
    table = gc.markdown_table(states, names)
    result = {"model": cfg.model.name, "dataset": cfg.input.dataset, "n": args.n, "seed": args.seed,
              "bn_mode": "inference (training=False)", "loss": "cross-entropy of one example, no weight decay",
              "augment_sets": names, "eval_transform": spec.eval_transform, "input_shape": list(in_shape),
              "states": states, "table": table}
    print(table, flush=True)
    out = Path(args.out) if args.out else (Path(args.workdir) / "grad_corr.json" if args.workdir else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        say(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------
# throughput / scaling
# ----------------------------------------------------------------------------
def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def _bench_spec(args):
    from ba_dist import models
    from ba_dist.analysis.throughput import BenchSpec
    if args.model not in models.MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; known: {', '.join(models.MODEL_NAMES)}")
    return BenchSpec(model=args.model, image_size=args.image_size, channels=args.channels,
                     num_classes=args.num_classes, bn=args.bn, repeats=args.repeats, steps=args.steps,
                     min_images=args.min_images, warmup=args.warmup, seed=args.seed)


def _throughput(args, say) -> int:
    spec = _bench_spec(args)
    sizes = _batch_sizes(args.batch_sizes)
    if args.threads:
        import tensorflow as tf   # before any op runs, or TF refuses the change
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from ba_dist import dist
    from ba_dist.analysis import throughput as tp
    ctx = dist.init()
    rows = tp.sweep(spec, sizes, log=say if not args.quiet else (lambda s: None))
    if ctx.rank != 0:
        return 0
    table = tp.markdown_throughput(rows, spec, args.threads or None)
    result = {"spec": spec.__dict__, "threads": args.threads or None, "rows": rows, "table": table}
    if not args.quiet:
        print(table, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(result, indent=1))
        (out / "throughput.md").write_text(table + "\n")
        tp.plot_throughput(rows, out / "throughput.png", spec.describe())
        say(f"wrote {out}/throughput.{{json,md,png}}")
    return 0


def _scaling(args, say) -> int:
    from ba_dist.analysis import throughput as tp
    spec = _bench_spec(args)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.max_ranks)
    rows = tp.run_scaling(spec, args.max_ranks, args.batch_size, threads, mpirun=args.mpirun,
                          timeout=args.timeout, log=say)
    table = tp.markdown_scaling(rows, spec, args.batch_size, threads)
    print(table, flush=True)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result = {"spec": spec.__dict__, "batch_size": args.batch_size, "threads_per_rank": threads,
                  "rows": rows, "table": table}
        (out / "scaling.json").write_text(json.dumps(result, indent=1))
        (out / "scaling.md").write_text(table + "\n")
        tp.plot_scaling(rows, out / "scaling.png", f"{spec.describe()}, batch {args.batch_size}/rank")
        say(f"wrote {out}/scaling.{{json,md,png}}")
    return 0


def _copies(args, say) -> int:
    from ba_dist.data import augment as aug
    try:
        height, width = (int(v) for v in args.source_size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--source-size must be HxW, e.g. 375x500, got {args.source_size!r}") from None
    if min(height, width, args.unique, args.copies, args.repeats) < 1:
        raise UsageError("--source-size, --unique, --copies and --repeats must be positive")
    try:
        aug.get_augment(args.transform)
    except ValueError as e:
        raise UsageError(f"--transform: {e}") from None
    from ba_dist.analysis import copies
    rows = copies.measure(args.transform, height, width, args.unique, args.copies, args.repeats)
    print(copies.markdown(rows, args.transform, height, width, args.unique, args.copies), flush=True)
    return 0


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
_RUN = {"grad-corr": _grad_corr, "throughput": _throughput, "scaling": _scaling, "copies": _copies}


def _flag_names(commands: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(n for c in commands for n in SUBCOMMAND_FLAGS[c]))


def _parse(argv: Sequence[str], prog: str, commands: Sequence[str]):
    """The subcommand and its flags (as attributes with ``_`` for ``-``) of ``argv``."""
    try:
        rest = cli.parse(FLAGS, [prog] + list(argv))
    except flags.Error as e:
        raise UsageError(f"{e} (see {prog} --help)") from None
    if len(rest) != 2 or rest[1] not in commands:
        raise UsageError(f"expected one subcommand of {', '.join(commands)}, got {rest[1:] or 'none'} "
                         f"(see {prog} --help)")
    command = rest[1]
    names = SUBCOMMAND_FLAGS[command]
    stray = [f"--{n}" for n in _flag_names(commands) if FLAGS[n].present and n not in names]
    if stray:
        raise UsageError(f"{command} does not take {', '.join(stray)}")
    args = SimpleNamespace(**{n.replace("-", "_"): FLAGS[n].value for n in names})
    required = {"grad-corr": (), "throughput": ("model",), "scaling": ("model", "max-ranks"), "copies": ()}[command]
    missing = [f"--{n}" for n in required if FLAGS[n].value is None]
    if missing:
        raise UsageError(f"{command} needs {', '.join(missing)}")
    if command == "grad-corr" and (args.workdir is None) == (args.config is None):
        raise UsageError("grad-corr needs exactly one of --workdir DIR (a ba-train run) and --config FILE")
    return command, args


def main(argv: Optional[Sequence[str]] = None, prog: str = "ba-analyze",
         commands: Sequence[str] = ("grad-corr", "throughput", "scaling", "copies")) -> int:
    """Parse ``argv`` (without the program name) and run one subcommand; returns the exit code."""
    commands = [c for c in _RUN if c in commands or (c != "grad-corr" and "bench" in commands)]
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))

    def say(msg: str) -> None:
        if rank == 0:
            print(f"[{prog}] {msg}", file=sys.stderr, flush=True)

    try:
        command, args = _parse(sys.argv[1:] if argv is None else argv, prog, commands)
    except UsageError as e:
        print(f"[{prog}] error: {e}", file=sys.stderr, flush=True)
        return 2
    from ba_dist.config import ConfigError
    from ba_dist.data.sources import DataSourceError
    try:
        return _RUN[command](args, say)
    except (UsageError, ConfigError, DataSourceError) as e:
        print(f"[{prog}] error: {e}", file=sys.stderr, flush=True)
        return 2


def run() -> None:
    """Console script ``ba-analyze``."""
    cli.run(lambda argv: main(argv[1:], prog="ba-analyze"), usage=__doc__,
            flag_names=_flag_names(SUBCOMMAND_FLAGS), flag_values=FLAGS)


def bench() -> None:
    """Console script ``ba-bench``."""
    cli.run(lambda argv: main(argv[1:], prog="ba-bench", commands=("bench",)), usage=BENCH_USAGE,
            flag_names=_flag_names(("throughput", "scaling", "copies")), flag_values=FLAGS)


if __name__ == "__main__":
    run()
