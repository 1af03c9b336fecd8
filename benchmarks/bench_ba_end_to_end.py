"""ba-train end to end on a JPEG folder: augmented images/s at M = 4 against M = 1 (issue 15).

Same unique batch (b per rank), same small model and Inception-crop augmentation, one
rank; only the number of copies differs. M = 1 decodes every image for one training
example; M = 4 decodes it once for four (copies batched, ``input.copies_on`` at its
default: the host here). Runs alternate (M=1, M=4, M=1, ...) so load on a shared
machine hits both alike; reported: augmented images/s over epochs 2..E of each run,
medians, and the median of per-round ratios.

    .venv/bin/python benchmarks/bench_ba_end_to_end.py [--n 384] [--b 16] [--size 64] [--rounds 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
PY = str(REPO / ".venv/bin/python")
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "TF_CPP_MIN_LOG_LEVEL"]


def make_folder(root: Path, n: int, classes: int = 4) -> None:
    from bench_pipeline import make_jpegs
    for split, count in (("train", n), ("validation", 32)):
        for k, jpeg in enumerate(make_jpegs(count, seed=1 if split == "train" else 2)):
            d = root / split / f"c{k % classes}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{k:05d}.jpg").write_bytes(jpeg)


CONFIG = """from ba_dist.config import base_config


def get_config():
    c = base_config()
    c.input.dataset = "folder"
    c.input.source_kwargs.data_dir = {data!r}
    c.optim.regime = "constant"
    c.optim.weight_decay = 0.0
    return c
"""


def run(args, data: Path, m: int) -> float:
    with tempfile.TemporaryDirectory() as wd:
        config = Path(wd, "folder_config.py")
        config.write_text(CONFIG.format(data=str(data)))
        subprocess.run(MPI + ["-np", "1", PY, "-m", "ba_dist.train", "--config", str(config),
                              "--workdir", str(Path(wd, "run")),
                              f"--config.input.augment=imagenet(size={args.size})",
                              f"--config.input.eval_transform=imagenet_eval(size={args.size})",
                              f"--config.input.batch_size={args.b}", f"--config.ba.multiplicity={m}",
                              "--config.ba.m_ranks=1", f"--config.model.name={args.model}",
                              f"--config.train.epochs={args.epochs}", f"--config.train.eval_every={args.epochs}",
                              f"--config.train.checkpoint_every={args.epochs}", "--config.train.verbose=0"],
                       capture_output=True, text=True, check=True, cwd=REPO)
        rows = [json.loads(l) for l in Path(wd, "run", "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["images_per_sec"] for r in rows[1:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp")
    p.add_argument("--n", type=int, default=384)
    p.add_argument("--b", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_folder(data, args.n)
        one, four = [], []
        for r in range(args.rounds):
            one.append(run(args, data, 1))
            four.append(run(args, data, 4))
            print(f"round {r}: M=1 {one[-1]:.1f} img/s, M=4 {four[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(y / x for x, y in zip(one, four))
    print(f"\n| model | input | unique per step | M=1 (augmented img/s) | M=4 (augmented img/s) | M=4 / M=1 |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.model} | 375x500 JPEG -> {args.size} | {args.b} | {statistics.median(one):.1f} | "
          f"{statistics.median(four):.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
