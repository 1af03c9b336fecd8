"""Helpers of slurm/rehearse.sh: the rehearsal's data, and the verdict on a rehearsed job.

    python slurm/rehearse.py make-data DIR --train N --validation N [--shards K] [--size S] [--format F]
    python slurm/rehearse.py check --audit DIR --state DIR --workdir DIR --output FILE ...

``make-data`` writes ImageNet TFRecord shards in the standard format of the TF-models /
TPU converters (``build_imagenet_data.py``): files ``train-00000-of-0000K`` and
``validation-00000-of-0000K``, features ``image/encoded`` (JPEG), ``image/format``
(``JPEG``), ``image/height``, ``image/width``, ``image/colorspace``, ``image/channels``,
``image/filename``, ``image/class/synset``, ``image/class/text`` and ``image/class/label``
in **1..1000** (classes 1 and 1000 included). The pixels are real photographs: crops
and rescales of the two photos scikit-learn ships (``load_sample_images``), every one
distinct, in sizes that vary as ImageNet's do. No network needed. ``--format cifar10-tfds``
instead prepares tfds ``cifar10`` (for the CIFAR template) from 32 x 32 crops of the same photos.

``check`` reads what a rehearsed job left behind (the audit files of ``BA_AUDIT_DIR``,
see ba_dist/audit.py; the stand-ins' logs; the workdir; the job's output) and asserts
group membership, coverage, identical weights, one result and the exit codes. It
prints one line per check and exits 1 on the first failure.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

import numpy as np

CLASSES = (1, 112, 223, 334, 445, 556, 667, 778, 889, 1000)   # stored labels, 1-based as the converters write


# ------------------------------------------------------------------------------ data

def _photo_crops(count: int, size: int, seed: int):
    """``count`` distinct JPEGs cut from the sample photos: random boxes, rescaled to ~size px."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    import io
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    seen = set()
    while len(seen) < count:
        photo = photos[len(seen) % len(photos)]
        w, h = photo.size
        side = int(rng.integers(48, min(w, h)))
        aspect = float(rng.uniform(0.75, 1.33))
        bw, bh = min(w, int(side * aspect)), side
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        scale = size * float(rng.uniform(0.8, 1.5)) / max(bw, bh)
        out = photo.crop((x, y, x + bw, y + bh)).resize((max(8, round(bw * scale)), max(8, round(bh * scale))),
                                                        Image.BILINEAR)
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        if data not in seen:
            seen.add(data)
            yield data, out.size


def make_data(out: Path, counts: dict, shards: int, size: int, seed: int = 0) -> None:
    import tensorflow as tf

    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    out.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(counts.items()):
        writers = [tf.io.TFRecordWriter(str(out / f"{split}-{s:05d}-of-{shards:05d}")) for s in range(shards)]
        for i, (jpeg, (w, h)) in enumerate(_photo_crops(n, size, seed * 2 + k)):
            label = CLASSES[i % len(CLASSES)]
            synset = f"n{label:08d}".encode()
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image/height": feature(h), "image/width": feature(w), "image/colorspace": feature(b"RGB"),
                "image/channels": feature(3), "image/class/label": feature(label),
                "image/class/synset": feature(synset), "image/class/text": feature(b"rehearsal class " + synset),
                "image/format": feature(b"JPEG"), "image/filename": feature(f"{split}_{i:05d}.JPEG".encode()),
                "image/encoded": feature(jpeg)}))
            writers[i % shards].write(ex.SerializeToString())
        for w in writers:
            w.close()
    print(f"[rehearse] data: {', '.join(f'{n} {s}' for s, n in counts.items())} photo crops (~{size} px) "
          f"in {shards} shard(s) per split, labels {CLASSES[0]}..{CLASSES[-1]} in {out}")


def make_cifar10_tfds(out: Path, counts: dict, seed: int = 0) -> None:
    """A prepared tfds ``cifar10`` (what ``tfds build cifar10`` leaves in ``out``), from the photos.

    Written by tfds' own cifar10 builder (its features, file names and dataset_info.json);
    only the examples come from the photos (32 x 32 crops, labels 0..9), not the download.
    """
    import importlib.resources
    import io
    import sys as _sys
    # tfds 4.9 imports the importlib_resources backport when it builds; Python 3.11's
    # importlib.resources has the same API, and the backport is not in every environment.
    _sys.modules.setdefault("importlib_resources", importlib.resources)
    import tensorflow_datasets as tfds
    from PIL import Image

    def examples(split, n, k):
        for i, (jpeg, _) in enumerate(_photo_crops(n, 32, seed * 2 + k)):
            img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((32, 32), Image.BILINEAR))
            yield f"{split}_{i:05d}", {"id": f"{split}_{i:05d}", "image": img, "label": i % 10}

    builder = tfds.builder("cifar10", data_dir=str(out))
    builder._split_generators = lambda dl_manager: {s: examples(s, n, k) for k, (s, n) in enumerate(counts.items())}
    builder.download_and_prepare()
    print(f"[rehearse] data: tfds cifar10 prepared in {out}: {', '.join(f'{n} {s}' for s, n in counts.items())} "
          f"32x32 photo crops, labels 0..9")


# ------------------------------------------------------------------------------ verdict

class Failed(Exception):
    pass


def ok(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def _audits(audit_dir: Path, ranks: int) -> dict:
    files = sorted(audit_dir.glob("rank*.jsonl"))
    ok(len(files) == ranks, f"audit files of {len(files)} ranks in {audit_dir}, expected {ranks}")
    return {int(f.stem[4:]): [json.loads(l) for l in f.read_text().splitlines()] for f in files}


def _fits(records: list) -> list:
    """Per fit call: (begin, delivered steps, end)."""
    fits, cur = [], None
    for r in records:
        if r["kind"] == "begin":
            cur = [r, [], None]
            fits.append(cur)
        elif r["kind"] == "step":
            ok(cur is not None, "a step record before any fit began")
            cur[1].append(r)
        else:
            cur[2] = r
    return fits


def check(a) -> str:
    out = Path(a.output).read_text()
    ranks, m_ranks, groups, spe, n_train, epochs = a.ranks, a.m_ranks, a.ranks // a.m_ranks, a.spe, a.train, a.epochs
    audits = _audits(Path(a.audit), ranks)

    # -- exit codes and the requeue: srun 75 -> scontrol requeue -> rerun -> srun 0
    sb = (Path(a.state) / "sbatch.log").read_text()
    exits = re.findall(r"^exit (\d+) restart=(\d+) rc=(\d+)$", sb, re.M)
    ok([(r, c) for _, r, c in exits] == [("0", "75"), ("1", "0")],
       f"batch script exits {exits}, expected restart 0 -> 75, restart 1 -> 0")
    ok((Path(a.state) / "scontrol.log").read_text() == f"requeue {exits[0][0]}\n", "one scontrol requeue of the job")
    ok(re.findall(r"ba-train exited with code (\d+)", out) == ["75", "0"], "srun exit codes 75 then 0")
    history = (Path(a.workdir) / "slurm_jobs.log").read_text()
    ok("restart 0: exit 75, requeued" in history and "restart 1: done" in history, f"slurm_jobs.log:\n{history}")
    stop = re.search(r"stopped early \(signal\) at epoch (\d+) step (\d+)", out)
    ok(stop is not None, "ba-train stopped on the signal")
    stop_at = int(stop.group(1)) * spe + int(stop.group(2))
    ok(re.search(rf"resumed from \S+ at epoch {stop.group(1)} step {stop.group(2)}\n", out) is not None,
       "the rerun resumed where the stop checkpoint was written")
    print(f"[rehearse] ok: exit codes: srun 75 (SIGUSR1 -> checkpoint at epoch {stop.group(1)} step "
          f"{stop.group(2)}), scontrol requeue, rerun resumed there, srun 0, job 0")

    # -- group membership: consecutive ranks, reader first; the group's ids arrive on every member
    trained = {}    # rank -> [(epoch, step, ids)] of the steps it trained on, over both allocations
    weights = collections.defaultdict(dict)   # allocation -> rank -> digests
    for rank, records in audits.items():
        fits = _fits(records)
        ok(bool(fits), f"rank {rank} never started training")
        steps = []
        for begin, delivered, end in fits:
            g = rank // m_ranks
            ok((begin["rank"], begin["world"], begin["group_id"]) == (rank, ranks, g)
               and begin["group_ranks"] == list(range(g * m_ranks, (g + 1) * m_ranks))
               and begin["reader_rank"] == g * m_ranks,
               f"rank {rank}: topology {begin} is not group {g} of ranks {g * m_ranks}..{(g + 1) * m_ranks - 1}")
            ok(end is not None, f"rank {rank}: a fit call without its end record (killed?)")
            n = end["global_step"] - begin["global_step"]
            ok(len(delivered) >= n, f"rank {rank}: trained {n} steps but the loader delivered {len(delivered)}")
            ok(not steps or begin["global_step"] == steps[-1][0] * spe + steps[-1][1] + 1,
               f"rank {rank}: fit began at global step {begin['global_step']} after {len(steps)} trained steps")
            steps += [(d["epoch"], d["step"], tuple(d["ids"])) for d in delivered[:n]]
            weights[begin["restart"]][rank] = end
        trained[rank] = steps
    for g in range(groups):
        members = range(g * m_ranks, (g + 1) * m_ranks)
        ok(all(trained[r] == trained[g * m_ranks] for r in members),
           f"ranks {list(members)} of group {g} did not train on the same samples step by step")
    print(f"[rehearse] ok: group membership: {ranks} ranks = {groups} group(s) of {m_ranks} consecutive ranks, "
          f"reader first; every member of a group trained on its reader's samples, step by step")

    # -- coverage: every epoch, every training sample exactly once over all groups
    total = epochs * spe
    for rank, steps in trained.items():
        ok([(e, s) for e, s, _ in steps] == [(e, s) for e in range(epochs) for s in range(spe)],
           f"rank {rank} trained steps {[(e, s) for e, s, _ in steps]}, expected each of {epochs} x {spe} once")
    for e in range(epochs):
        ids = [i for g in range(groups) for ep, _, step_ids in trained[g * m_ranks] if ep == e for i in step_ids]
        counts = collections.Counter(ids)
        repeated = sorted(i for i, c in counts.items() if c > 1)
        lost = sorted(set(range(n_train)) - set(counts))
        ok(not repeated and not lost, f"epoch {e}: repeated {repeated[:10]} lost {lost[:10]} of {n_train}")
    print(f"[rehearse] ok: coverage: {epochs} epochs x {spe} steps, each of the {n_train} training samples "
          f"exactly once per epoch (no sample lost or repeated across the stop at global step {stop_at})")

    # -- identical weights on every rank, in each allocation
    for restart, by_rank in sorted(weights.items()):
        ok(len(by_rank) == ranks, f"allocation {restart}: end records of {len(by_rank)} ranks")
        ok(len({d["trainable"] for d in by_rank.values()}) == 1,
           f"allocation {restart}: trainable weights differ between ranks")
    all_vars = len({d["variables"] for d in weights[max(weights)].values()})
    print(f"[rehearse] ok: identical trainable weights on all {ranks} ranks at the end of both allocations "
          f"(all variables incl. batch-norm moving statistics: {'identical' if all_vars == 1 else f'{all_vars} versions'})")

    # -- the final result, written once
    result_path = Path(a.workdir) / "result.json"
    result = json.loads(result_path.read_text())
    ok(a.result_at_requeue == "absent", f"result.json was {a.result_at_requeue} when the first allocation was requeued")
    ok(out.count("[ba-train] done:") == 1 and out.index("[ba-train] done:") > out.index("requeued job"),
       "one 'done' line, in the second allocation")
    ok(result["global_step"] == total, f"result.json global_step {result['global_step']} != {total}")
    ok(result["val_count"] == a.validation, f"val_count {result['val_count']} != {a.validation} validation samples")
    ok(result["skipped_samples"] == 0, f"skipped_samples {result['skipped_samples']}: the 1-based labels were read as "
                                        "corrupt (label_offset)")
    print(f"[rehearse] ok: result.json written once, by the second allocation (absent at the requeue): global step {total}, "
          f"val_count {result['val_count']} = every validation sample, 0 skipped")
    return (f"groups of {m_ranks} x {groups} on {ranks} ranks, {n_train} samples x {epochs} epochs each seen once, "
            f"identical weights on {ranks} ranks, result.json once, exits 75 -> requeue -> 0")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("make-data")
    d.add_argument("out", type=Path)
    d.add_argument("--train", type=int, required=True)
    d.add_argument("--validation", type=int, required=True)
    d.add_argument("--shards", type=int, default=2)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--format", choices=("imagenet-tfrecord", "cifar10-tfds"), default="imagenet-tfrecord")
    c = sub.add_parser("check")
    for k in ("audit", "state", "workdir", "output"):
        c.add_argument(f"--{k}", required=True)
    for k in ("ranks", "m-ranks", "spe", "train", "validation", "epochs"):
        c.add_argument(f"--{k}", type=int, required=True)
    c.add_argument("--result-at-requeue", choices=("absent", "present", "none"), required=True)
    a = p.parse_args(argv)
    if a.cmd == "make-data":
        if a.format == "cifar10-tfds":
            make_cifar10_tfds(a.out, {"train": a.train, "test": a.validation})
        else:
            make_data(a.out, {"train": a.train, "validation": a.validation}, a.shards, a.size)
        return 0
    try:
        print(f"[rehearse] checked: {check(a)}")
    except Failed as e:
        print(f"[rehearse] FAILED: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
