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
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from absl import flags

from ba_dist import cli
from ba_dist import paper_tables as paper

__all__ = ["FLAGS", "variant_command", "collect", "format_table", "main", "run"]

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
FLAG_NAMES = ("config", "workdir", "ranks", "variants", "epochs", "launcher", "table-only")


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
    parent = Path(args.workdir)
    code = 0
    for name in [] if args.table_only else variants:
        wd = parent / name
        if (wd / "result.json").is_file():
            print(f"[ba-experiment] {name}: done already ({wd / 'result.json'})", flush=True)
            continue
        ranks = args.ranks or paper.world_size(row, name)
        cmd = variant_command(args.config, name, wd, ranks, args.launcher, args.epochs or None, tuple(extra))
        print(f"[ba-experiment] {name} on {ranks} rank(s): {shlex.join(cmd)}", flush=True)
        code = subprocess.call(cmd)
        if code:
            what = "stopped early: re-run this command to resume" if code == REQUEUE_EXIT_CODE else "failed"
            print(f"[ba-experiment] {name} {what} (exit {code}); not starting the remaining variants", flush=True)
            break
    table = collect(parent, row, variants)
    parent.mkdir(parents=True, exist_ok=True)
    (parent / "comparison.json").write_text(json.dumps(table, indent=1, default=float))
    print(format_table(table), flush=True)
    return code


def run():
    """Console-script entry point (``ba-experiment``)."""
    cli.run(lambda argv: main(argv[1:]), usage=__doc__, flag_names=FLAG_NAMES, flag_values=FLAGS)


if __name__ == "__main__":
    run()
