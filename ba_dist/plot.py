"""``ba-plot``: curves of several runs on one figure (the paper's Figures 1-3).

    ba-plot WORKDIR... [--metric val_error|train_loss|grad_norm|...] [--x epoch|step] --out FILE.png

Example (Figure 1: validation error of a baseline and a BA run):

    ba-plot workdirs/m1 workdirs/m4 --metric val_error --out figures/val_error.png

* ``val_error`` (Figures 1 and 3): validation error (solid) and training error
  (dashed, same colour) in percent, per epoch, from ``metrics.jsonl``.
* ``train_loss`` / ``val_loss``: the two losses, training dashed, validation solid.
* ``grad_norm`` (Figure 2): the gradient L2 norm. Per step from
  ``grad_norm.jsonl`` when the run logged it (``ba_dist.analysis.gradstats``),
  else the per-epoch mean from ``metrics.jsonl``; ``--smooth K`` averages K
  consecutive points. ``grad_var`` (per step only) likewise.
* any other numeric column of ``metrics.jsonl`` (``lr``, ``images_per_sec``, ...).

One colour per run, labelled from its ``config.json`` ("M=4, B=64"; the
workdir name is appended when two runs would share a label). Figures are drawn
with matplotlib's Agg backend, so no display is needed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from absl import flags  # noqa: E402

from ba_dist import cli  # noqa: E402
from ba_dist.analysis import GRAD_LOG  # noqa: E402  (no TensorFlow: ba-plot starts fast)

__all__ = ["FLAGS", "PAIRED", "PER_STEP", "load_run", "run_label", "series", "plot_runs", "main", "run"]

# Own FlagValues: main() is called in-process (tests) next to other commands' flags.
FLAGS = flags.FlagValues()
flags.DEFINE_string("metric", "val_error",
                    "val_error | train_loss | val_loss | grad_norm | grad_var | any metrics.jsonl column",
                    flag_values=FLAGS)
flags.DEFINE_enum("x", "epoch", ["epoch", "step"], "x axis", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output image (.png, .pdf, .svg); required", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "comma-separated legend labels, one per workdir (positional arguments)",
                    flag_values=FLAGS)
flags.DEFINE_integer("smooth", 1, "moving average over this many points", flag_values=FLAGS)
flags.DEFINE_bool("logy", False, "logarithmic y axis", flag_values=FLAGS)
flags.DEFINE_string("title", None, "figure title (default: which line style is which)", flag_values=FLAGS)
FLAG_NAMES = ("metric", "x", "out", "labels", "smooth", "logy", "title")

# metric -> ((column, style, is_validation), ...); error columns are derived from top-1.
PAIRED = {
    "val_error": (("train_error", "--"), ("val_error", "-")),
    "train_error": (("train_error", "--"), ("val_error", "-")),
    "train_loss": (("train_loss", "--"), ("val_loss", "-")),
    "val_loss": (("train_loss", "--"), ("val_loss", "-")),
}
PER_STEP = ("grad_norm", "grad_var", "grad_var_of_mean")
_YLABEL = {"val_error": "error (%)", "train_error": "error (%)", "train_loss": "loss", "val_loss": "loss",
           "grad_norm": "gradient L2 norm", "grad_var": "gradient spread over ranks",
           "grad_var_of_mean": "variance of the mean gradient"}


class PlotError(ValueError):
    """A workdir or metric that cannot be plotted; the message names it."""


def load_run(workdir) -> dict:
    """``{"dir", "config", "rows" (metrics.jsonl), "steps" (grad_norm.jsonl)}`` of one workdir."""
    wd = Path(workdir)
    if not wd.is_dir():
        raise PlotError(f"{wd} is not a directory")
    rows = _read_jsonl(wd / "metrics.jsonl")
    # a resumed run repeats the steps after its checkpoint: the last row of a step wins
    steps = list({int(r["step"]): r for r in _read_jsonl(wd / GRAD_LOG)}.values())
    steps.sort(key=lambda r: r["step"])
    if not rows and not steps:
        raise PlotError(f"{wd} has neither metrics.jsonl nor grad_norm.jsonl: is it a ba-train workdir?")
    config_path = wd / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    for r in rows:
        for split in ("train", "val"):
            top1 = r.get(f"{split}_top1")
            r[f"{split}_error"] = None if top1 is None else 100.0 * (1.0 - top1)
    return {"dir": wd, "config": config, "rows": rows, "steps": steps}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise PlotError(f"{path}:{n} is not a JSON line; fix or delete it") from None
    return rows


def run_label(run: dict) -> str:
    """"M=4, B=64" from the run's config (the workdir name when there is no config)."""
    c = run["config"]
    try:
        return f"M={c['ba']['multiplicity']}, B={c['input']['batch_size']}"
    except (KeyError, TypeError):
        return run["dir"].name


def _steps_per_epoch(rows) -> Optional[float]:
    for r in rows:
        if r.get("step") and r.get("epoch"):
            return r["step"] / r["epoch"]
    return None


def _smooth(ys: list, k: int) -> list:
    if k <= 1:
        return ys
    out = []
    for i in range(len(ys)):
        window = [y for y in ys[max(0, i - k + 1):i + 1] if y is not None]
        out.append(sum(window) / len(window) if window else None)
    return out


def series(run: dict, metric: str, x: str = "epoch", smooth: int = 1) -> list[tuple[str, list, list, str]]:
    """The curves of one run: ``[(column, xs, ys, linestyle), ...]`` (columns with no data left out)."""
    if x not in ("epoch", "step"):
        raise PlotError(f"--x must be epoch or step, got {x!r}")
    if metric in PER_STEP and run["steps"]:
        pts = [(r["step"], r.get(metric)) for r in run["steps"] if r.get(metric) is not None]
        if x == "epoch":
            spe = _steps_per_epoch(run["rows"])
            if spe is None:
                raise PlotError(f"{run['dir']}: --x epoch needs metrics.jsonl to convert steps to epochs")
            pts = [(s / spe, v) for s, v in pts]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return [(metric, xs, _smooth(ys, smooth), "-")] if xs else []
    if metric in ("grad_var", "grad_var_of_mean"):
        return []   # only logged per step
    out = []
    for column, style in PAIRED.get(metric, ((metric, "-"),)):
        pts = [(r.get(x), r.get(column)) for r in run["rows"]]
        pts = [(a, b) for a, b in pts if a is not None and isinstance(b, (int, float))]
        if pts:
            out.append((column, [p[0] for p in pts], _smooth([p[1] for p in pts], smooth), style))
    return out


def plot_runs(workdirs: Sequence, metric: str = "val_error", x: str = "epoch",
              labels: Optional[Sequence[str]] = None, smooth: int = 1, logy: bool = False,
              title: Optional[str] = None):
    """One figure, one colour per run. Returns the matplotlib Figure (not saved).

    Raises:
      PlotError: a workdir without logs, or a metric none of the runs has.
    """
    runs = [load_run(w) for w in workdirs]
    if labels is not None and len(labels) != len(runs):
        raise PlotError(f"{len(labels)} labels for {len(runs)} workdirs")
    names = list(labels) if labels else [run_label(r) for r in runs]
    if not labels:
        dup = {n for n in names if names.count(n) > 1}
        names = [f"{n} ({r['dir'].name})" if n in dup else n for n, r in zip(names, runs)]
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    styles = set()
    for i, (run, name) in enumerate(zip(runs, names)):
        curves = series(run, metric, x, smooth)
        labelled = False
        for column, xs, ys, style in curves:
            # one legend entry per run: the solid (validation) curve, else the first one
            solid_exists = any(c[3] == "-" for c in curves)
            show = not labelled and (style == "-" or not solid_exists)
            ax.plot(xs, ys, style, color=colors[i % len(colors)], label=name if show else "_nolegend_")
            labelled |= show
            styles.add(style)
            drawn += 1
    if not drawn:
        raise PlotError(f"none of the runs has data for metric {metric!r}")
    ax.set_xlabel(x)
    ax.set_ylabel(_YLABEL.get(metric, metric))
    if logy:
        ax.set_yscale("log")
    note = "solid: validation, dashed: training" if len(styles) > 1 else ""
    ax.set_title(title if title is not None else note, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (workdirs and flags, without the program name), draw, save; returns the exit code."""
    try:
        workdirs = cli.parse(FLAGS, ["ba-plot"] + list(sys.argv[1:] if argv is None else argv))[1:]
        if not workdirs:
            raise PlotError("name at least one ba-train workdir (see ba-plot --help)")
        if not FLAGS.out:
            raise PlotError("--out FILE is required (see ba-plot --help)")
        fig = plot_runs(workdirs, FLAGS.metric, FLAGS.x, FLAGS.labels.split(",") if FLAGS.labels else None,
                        FLAGS.smooth, FLAGS.logy, FLAGS.title)
    except (PlotError, flags.Error) as e:
        print(f"[ba-plot] error: {e}", file=sys.stderr)
        return 2
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"[ba-plot] wrote {out}")
    return 0


def run() -> None:
    """Console script ``ba-plot``."""
    cli.run(lambda argv: main(argv[1:]), usage=__doc__, flag_names=FLAG_NAMES, flag_values=FLAGS)


if __name__ == "__main__":
    run()
