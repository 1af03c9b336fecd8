"""ba-train's machinery against a plain Horovod Keras script at M = 1 (issue 4).

Same model, data (synthetic 32x32x3), augmentation ("cifar"), per-rank batch
and ranks; the runs alternate (plain, ba-train, plain, ...) so that load on a
shared machine hits both alike. Reports augmented images/s of each after the
first (warm-up) epoch and the overhead of ba-train.

    .venv/bin/python benchmarks/bench_train_overhead.py [--model resnet20] [--ranks 2] [--rounds 3]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv/bin/python")
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "TF_CPP_MIN_LOG_LEVEL"]


def plain(args) -> float:
    out = subprocess.run(MPI + ["-np", str(args.ranks), PY, str(REPO / "benchmarks/plain_horovod_train.py"),
                                args.model, str(args.n), str(args.per_rank), str(args.epochs)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    return statistics.mean(float(v) for v in re.findall(r"IMAGES_PER_SEC ([0-9.]+)", out))


def ba_train(args) -> float:
    with tempfile.TemporaryDirectory() as wd:
        subprocess.run(MPI + ["-np", str(args.ranks), PY, "-m", "ba_dist.train",
                              "--config", str(REPO / "configs/synthetic.py"), "--workdir", wd,
                              f"--config.input.source_kwargs.num_examples={args.n}",
                              f"--config.input.batch_size={args.per_rank * args.ranks}",
                              f"--config.model.name={args.model}", f"--config.train.epochs={args.epochs}",
                              f"--config.train.eval_every={args.epochs}", f"--config.train.checkpoint_every={args.epochs}",
                              "--config.train.verbose=0"],
                       capture_output=True, text=True, check=True, cwd=REPO)
        rows = [json.loads(l) for l in Path(wd, "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["images_per_sec"] for r in rows[1:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--per-rank", type=int, default=64)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    a, b = [], []
    for r in range(args.rounds):
        a.append(plain(args))
        b.append(ba_train(args))
        print(f"round {r}: plain {a[-1]:.1f} img/s, ba-train {b[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(y / x for x, y in zip(a, b))
    print(f"\n| model | ranks | per-rank batch | plain Horovod Keras (img/s) | ba-train M=1 (img/s) | ba-train / plain |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.ranks} | {args.per_rank} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
          f"{ratio:.3f} (overhead {1 - ratio:+.1%}) |")


if __name__ == "__main__":
    sys.exit(main())
