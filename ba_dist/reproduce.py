"""``ba-experiment``: reproduce one row of the paper's Table 2 (three runs, one comparison table).

    ba-experiment --config configs/resnet44_cifar10.py --workdir workdirs/resnet44_cifar10 [--ranks 8]
        [--variants fixed_steps,fixed_samples,ba] [--epochs E] [--launcher 'launch/local.sh {ranks}']
        [--table-only] [-- extra ba-train arguments, e.g. --config.input.source_kwargs.data_dir=...]

Example (the digits "row" on 2 ranks, 1 epoch each: minutes on a laptop):

    ba-experiment --config configs/digits_smoke.py --workdir workdirs/digits_row --ranks 2 --epochs 1

Runs ``ba-train --config <row>.py:<variant>`` for the paper's two baselines and
BA (ba_dist/paper_tables.py), one after the other on the same data, each in
``WORKDIR/<variant>``, then prints the validation top-1 of each run's
``result.json`` beside the paper's Table 2 numbers and writes
``WORKDIR/comparison.json``.

A variant whose ``result.json`` exists is not run again; an interrupted one
resumes from its checkpoints (ba-train does that by itself), so re-running the
same command after a crash or a requeue continues where it stopped.
``--epochs E`` shortens the row's budget consistently (``:variant,epochs=E``:
the fixed #samples baseline gets M x E). Every run is launched with
``--launcher`` (default: launch/local.sh, i.e. mpirun on this machine), so
one process of ba-experiment drives the whole comparison.

Seeds (is the difference real?): ``--seeds N`` runs every variant N times,
in ``WORKDIR/seed<k>/<variant>`` with ``--config.seed=BASE+k`` (``--base-seed``),
and prints per variant the mean and sample standard deviation of the final
validation top-1 and loss over the seeds, and the paired difference
BA - fixed #steps (the two runs of one seed share their seed) with a
Student-t 95% interval (``WORKDIR/seeds.json``)::

    ba-experiment --config configs/digits_smoke.py --workdir workdirs/digits_seeds --ranks 1 \
        --variants fixed_steps,ba --epochs 40 --seeds 3 --sweep 1,2,4,8 --figure val_error_vs_M.png \
        -- --config.ba.m_ranks=1

``--sweep 1,2,4,8`` adds the paper's Figure 3: BA runs at those M with the
same B, steps and LR (``WORKDIR/sweep/M<M>``, seed BASE; M = 1 and the row's
M reuse seed BASE's fixed #steps and BA runs when they ran on as many ranks),
and ``--figure PNG`` draws their validation error vs epoch, one curve per M.
"""
from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from absl import flags

from ba_dist import cli
from ba_dist import paper_tables as paper

__all__ = ["FLAGS", "variant_command", "collect", "format_table", "seed_statistics", "paired_difference",
           "format_seed_table", "sweep_figure", "main", "run"]

REPO = Path(__file__).resolve().parents[1]
REQUEUE_EXIT_CODE = 75   # ba-train stopped early after checkpointing (ba_dist.fit)


def _default_launcher() -> str:
    local = REPO / "launch" / "local.sh"
    return f"{local} {{ranks}}" if local.is_file() else "mpirun -np {ranks}"


# Own FlagValues: tests call main() in-process, next to other commands' flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string("config", None, "a Table 2 row: configs/<row>.py (see ba_dist/paper_tables.py); required",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "parent directory; each variant runs in WORKDIR/<variant>; required",
                    flag_values=FLAGS)
flags.DEFINE_integer("ranks", 0, "ranks of every run (0: the row's reference world size per variant, "
                     "ba_dist.paper_tables.world_size)", flag_values=FLAGS)
flags.DEFINE_string("variants", ",".join(paper.VARIANTS), "comma-separated subset, run in this order",
                    flag_values=FLAGS)
flags.DEFINE_integer("epochs", 0, "shorter epoch budget E (fixed #samples gets M x E; 0: the row's)",
                     flag_values=FLAGS)
flags.DEFINE_string("launcher", _default_launcher(), "command prefix of every run; {ranks} is replaced",
                    flag_values=FLAGS)
flags.DEFINE_bool("table-only", False, "run nothing, print the table of existing results", flag_values=FLAGS)
flags.DEFINE_integer("seeds", 0, "run every variant with N seeds (WORKDIR/seed<k>/<variant>) and print "
                     "mean +- std over seeds and the paired BA - fixed #steps difference; 0: one run, no seed",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("base-seed", 0, "seed of the first of --seeds runs (seed k is BASE + k)", flag_values=FLAGS)
flags.DEFINE_list("sweep", [], "M values of BA runs at the same B, steps and LR (the paper's Figure 3), "
                  "e.g. 1,2,4,8", flag_values=FLAGS)
flags.DEFINE_string("figure", None, "PNG of the --sweep runs' validation error vs epoch, one curve per M",
                    flag_values=FLAGS)
FLAG_NAMES = ("config", "workdir", "ranks", "variants", "epochs", "launcher", "table-only", "seeds", "base-seed",
              "sweep", "figure")


def variant_command(config: str, name: str, workdir: Path, ranks: int, launcher: str,
                    epochs: Optional[int] = None, extra: tuple = ()) -> list[str]:
    """The launch command of one variant's ba-train run."""
    spec = f"{config}:{name}" + (f",epochs={epochs}" if epochs else "")
    return (shlex.split(launcher.format(ranks=ranks)) + [sys.executable, "-m", "ba_dist.train", "--config", spec,
                                                         "--workdir", str(workdir)] + list(extra))


def collect(workdir: Path, row: paper.Row, variants=paper.VARIANTS) -> dict:
    """Per variant: the run's result.json (None when missing) and the paper's number."""
    out = {"row": row.key, "title": row.title, "variants": {}}
    for name in variants:
        path = workdir / name / "result.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        cfg_path = workdir / name / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
        out["variants"][name] = dict(
            paper_top1=row.top1(name), result=result, workdir=str(workdir / name),
            batch=None if cfg is None else f"{cfg['input']['batch_size']} x {cfg['ba']['multiplicity']}")
    return out


def format_table(table: dict) -> str:
    names = list(table["variants"])
    pct = lambda v: "-" if v is None else f"{v:.2%}"
    cells = {
        "val top-1 (this run)": [pct((v["result"] or {}).get("val_top1")) for v in table["variants"].values()],
        "paper (Table 2)": [pct(v["paper_top1"]) for v in table["variants"].values()],
        "steps": [str((v["result"] or {}).get("global_step", "-")) for v in table["variants"].values()],
        "B unique x M": [v["batch"] or "-" for v in table["variants"].values()],
        "wall time": [("-" if not v["result"] else f"{v['result']['wall_time_sec'] / 60:.1f} min")
                      for v in table["variants"].values()],
    }
    width = max(16, *(len(paper.VARIANT_TITLES[n]) + 2 for n in names))
    first = max(24, len(table["title"]) + 2)
    lines = [f"{table['title']:{first}s}" + "".join(f"{paper.VARIANT_TITLES[n]:>{width}s}" for n in names)]
    lines += [f"{k:{first}s}" + "".join(f"{c:>{width}s}" for c in v) for k, v in cells.items()]
    return "\n".join(lines)


def _mean_std(values: list) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def paired_difference(a: list, b: list, level: float = 0.95) -> dict:
    """Mean of ``a[k] - b[k]`` with its Student-t interval (pairs share a seed).

    The pairs' differences are treated as a sample of n; the interval is
    ``mean +- t(1 - (1 - level) / 2, n - 1) * std / sqrt(n)``. With n = 1 the
    interval is unknown (None).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long non-empty lists, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean, std = _mean_std(diffs)
    n = len(diffs)
    if n < 2:
        return dict(n=n, mean=mean, std=std, low=None, high=None)
    from scipy import stats     # only here: ba-experiment starts without scipy
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * std / math.sqrt(n)
    return dict(n=n, mean=mean, std=std, low=mean - half, high=mean + half)


def seed_statistics(parent: Path, row: paper.Row, variants, seeds: list) -> dict:
    """Per variant, mean and std over ``seeds`` of the final val top-1 and loss; BA - fixed #steps paired.

    ``parent/seed<k>/<variant>/result.json`` of every seed ``k`` that finished
    counts; the paired difference uses the seeds where both variants finished.
    """
    results = {v: {} for v in variants}
    for k in seeds:
        for v, entry in collect(parent / f"seed{k}", row, variants)["variants"].items():
            if entry["result"] is not None:
                results[v][k] = entry["result"]
    out = {"row": row.key, "title": row.title, "seeds": list(seeds), "variants": {}, "ba_minus_fixed_steps": {}}
    for v, by_seed in results.items():
        out["variants"][v] = {"n": len(by_seed), "seeds": sorted(by_seed)}
        for key in ("val_top1", "val_loss"):
            values = [by_seed[k][key] for k in sorted(by_seed)]
            mean, std = _mean_std(values) if values else (None, None)
            out["variants"][v][key] = dict(values=values, mean=mean, std=std)
    if "ba" in results and "fixed_steps" in results:
        both = sorted(set(results["ba"]) & set(results["fixed_steps"]))
        for key in ("val_top1", "val_loss") if both else ():
            out["ba_minus_fixed_steps"][key] = dict(seeds=both, **paired_difference(
                [results["ba"][k][key] for k in both], [results["fixed_steps"][k][key] for k in both]))
    return out


def format_seed_table(stats: dict) -> str:
    """The seed table: one line per variant, then the paired difference."""
    lines = [f"{stats['title']}: final validation metrics over seeds {stats['seeds']} (mean +- sample std)",
             f"{'variant':16s}{'n':>3s}{'top-1 (%)':>18s}{'loss':>20s}"]
    for v, e in stats["variants"].items():
        t, l = e["val_top1"], e["val_loss"]
        top1 = "-" if t["mean"] is None else f"{100 * t['mean']:.2f} +- {100 * t['std']:.2f}"
        loss = "-" if l["mean"] is None else f"{l['mean']:.4f} +- {l['std']:.4f}"
        lines.append(f"{paper.VARIANT_TITLES[v]:16s}{e['n']:3d}{top1:>18s}{loss:>20s}")
    for key, d in stats["ba_minus_fixed_steps"].items():
        scale, unit, fmt = (100, " points", "+.2f") if key == "val_top1" else (1, "", "+.4f")
        ci = ("n/a (n = 1)" if d["low"] is None
              else f"[{scale * d['low']:{fmt}}, {scale * d['high']:{fmt}}]")
        lines.append(f"BA - Fixed #Steps, {key}: {scale * d['mean']:{fmt}}{unit}, 95% t-interval {ci} "
                     f"(paired by seed, n = {d['n']})")
    return "\n".join(lines)


def sweep_figure(workdirs: dict, out: Path, title: str):
    """Figure 3 of the paper: validation (solid) and training (dashed) error vs epoch, one colour per M.

    Log y axis: the final errors (a few samples out of hundreds) stay readable
    next to the first epochs' tens of percent.
    """
    from ba_dist import plot     # matplotlib only when a figure is asked for
    fig = plot.plot_runs([workdirs[m] for m in sorted(workdirs)], metric="val_error",
                         labels=[f"M={m}" for m in sorted(workdirs)], logy=True, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def parse_args(argv: Optional[list] = None) -> tuple[SimpleNamespace, list]:
    """The flags' values (``table_only`` for ``--table-only``) and the ba-train arguments after ``--``.

    Raises:
      absl.flags.Error: an unknown flag, a bad value, a missing --config/--workdir or a stray argument.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    rest = cli.parse(FLAGS, ["ba-experiment"] + argv)
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments {rest[1:]}: ba-train arguments go after '--'")
    missing = [f"--{n}" for n in ("config", "workdir") if not FLAGS[n].value]
    if missing:
        raise flags.Error(f"{' and '.join(missing)} required")
    return SimpleNamespace(**{n.replace("-", "_"): FLAGS[n].value for n in FLAG_NAMES}), extra


def main(argv: Optional[list] = None) -> int:
    """Run the variants of one row (``argv`` without the program name); returns the exit code."""
    try:
        args, extra = parse_args(argv)
    except flags.Error as e:
        print(f"[ba-experiment] error: {e} (see ba-experiment --help)", file=sys.stderr)
        return 2
    row = paper.row_for_config(args.config)
    if row is None:
        print(f"[ba-experiment] {args.config} is not a Table 2 row; rows: "
              f"{', '.join(r.config for r in paper.TABLE2.values())}", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in paper.VARIANTS]
    if bad or not variants:
        print(f"[ba-experiment] --variants {args.variants!r}: use some of {', '.join(paper.VARIANTS)}", file=sys.stderr)
        return 2
    try:
        sweep = sorted({int(m) for m in args.sweep})
        if any(m < 1 for m in sweep):
            raise ValueError
    except ValueError:
        print(f"[ba-experiment] --sweep {','.join(args.sweep)!r}: positive integers M, e.g. 1,2,4,8", file=sys.stderr)
        return 2
    if args.figure and not sweep:
        print("[ba-experiment] --figure draws the --sweep runs: give --sweep too (e.g. 1,2,4,8)", file=sys.stderr)
        return 2
    parent = Path(args.workdir)
    seeds = [args.base_seed + k for k in range(args.seeds)]
    # (name, variant, workdir, ranks, extra ba-train arguments), in run order
    jobs = [(name, name, parent / name, args.ranks or paper.world_size(row, name), tuple(extra))
            for name in ([] if seeds else variants)]
    jobs += [(f"seed {k} {name}", name, parent / f"seed{k}" / name, args.ranks or paper.world_size(row, name),
              tuple(extra) + (f"--config.seed={k}",)) for k in seeds for name in variants]
    sweep_dirs = {}
    for m in sweep:
        ranks = args.ranks or paper.world_size(row, "ba")
        reuse = {1: "fixed_steps", row.multiplicity: "ba"}.get(m)
        if seeds and reuse in variants and (args.ranks or paper.world_size(row, reuse)) == ranks:
            sweep_dirs[m] = parent / f"seed{seeds[0]}" / reuse
            continue
        sweep_dirs[m] = parent / "sweep" / f"M{m}"
        seed = (f"--config.seed={seeds[0] if seeds else args.base_seed}",)
        jobs.append((f"sweep M={m}", "ba", sweep_dirs[m], ranks, tuple(extra) + seed + (
            f"--config.ba.multiplicity={m}", f"--config.ba.m_ranks={math.gcd(m, ranks)}")))
    code = 0
    for title, name, wd, ranks, job_extra in [] if args.table_only else jobs:
        if (wd / "result.json").is_file():
            print(f"[ba-experiment] {title}: done already ({wd / 'result.json'})", flush=True)
            continue
        cmd = variant_command(args.config, name, wd, ranks, args.launcher, args.epochs or None, job_extra)
        print(f"[ba-experiment] {title} on {ranks} rank(s): {shlex.join(cmd)}", flush=True)
        code = subprocess.call(cmd)
        if code:
            what = "stopped early: re-run this command to resume" if code == REQUEUE_EXIT_CODE else "failed"
            print(f"[ba-experiment] {title} {what} (exit {code}); not starting the remaining runs", flush=True)
            break
    parent.mkdir(parents=True, exist_ok=True)
    if seeds:
        stats = seed_statistics(parent, row, variants, seeds)
        (parent / "seeds.json").write_text(json.dumps(stats, indent=1, default=float))
        print(format_seed_table(stats), flush=True)
    else:
        table = collect(parent, row, variants)
        (parent / "comparison.json").write_text(json.dumps(table, indent=1, default=float))
        print(format_table(table), flush=True)
    if args.figure:
        done = {m: wd for m, wd in sweep_dirs.items() if (wd / "metrics.jsonl").is_file()}
        if done:
            out = sweep_figure(done, Path(args.figure), f"{row.network} / {row.dataset}: same B, steps and LR; "
                                                        "solid: validation, dashed: training")
            print(f"[ba-experiment] figure: {out} (M = {', '.join(map(str, sorted(done)))})", flush=True)
        else:
            print("[ba-experiment] no --sweep run has metrics yet: no figure", flush=True)
    return code


def run():
    """Console-script entry point (``ba-experiment``)."""
    cli.run(lambda argv: main(argv[1:]), usage=__doc__, flag_names=FLAG_NAMES, flag_values=FLAGS)


if __name__ == "__main__":
    run()
