"""``ba-eval-seq``: perplexity (language model) or BLEU with beam search (translation) of a checkpoint.

Example::

    [mpirun -np N] ba-eval-seq --config configs/seq_transformer_wmt16.py:ba --workdir W \\
        --split test --checkpoint best --config.eval.beam_size=4

Uses the vocabulary and encoded data that ``ba-train-seq`` cached in
``<workdir>/data`` (a vocabulary built anew would not match the weights).
Evaluation is sharded over all ranks and exact; it needs no BA groups, so any
world size works. Rank 0 writes ``<workdir>/eval_<split>.json`` and, for
translation, the detokenized outputs ``<workdir>/<split>.hyp.txt``.
Exit codes: 0 done, 1 error, 2 bad config or command line.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from absl import flags

from ba_dist import dist, fit
from ba_dist.config import ConfigError
from ba_dist.seq import config as seq_config
from ba_dist.seq import train as seq_train

FLAGS = flags.FLAGS


def _context():
    from ba_dist import dist
    try:
        return dist.context()   # already initialised (e.g. right after training in one process)
    except RuntimeError:
        return dist.init(m_ranks=1, m_local=1)


def find_checkpoint(workdir: Path, which: str) -> Path:
    """``latest``, ``best`` or a checkpoint directory; ConfigError naming what is missing."""
    from ba_dist.checkpoint import CheckpointManager
    manager = CheckpointManager(Path(workdir) / "checkpoints", is_writer=False)
    path = {"latest": manager.latest, "best": manager.best}.get(which, lambda: Path(which))()
    if path is None or not (path / "meta.json").is_file():
        raise ConfigError(f"no complete checkpoint {which!r} under {Path(workdir) / 'checkpoints'}: "
                          f"train with ba-train-seq first, or pass --checkpoint=latest|best|<ckpt dir>")
    return path


def evaluate_checkpoint(cfg, workdir: str, split: str = "test", which: str = "best") -> dict:
    """Restore ``which`` checkpoint of ``workdir`` and evaluate ``split`` on every rank; rank 0 writes files."""
    seq_config.validate(cfg)
    if split not in ("valid", "test"):
        raise ConfigError(f"--split={split!r}: use 'valid' or 'test'")
    wd = Path(workdir)
    if not (wd / "data" / "DONE").is_file():
        raise ConfigError(f"{wd / 'data'} holds no prepared data: evaluate the workdir of a ba-train-seq run")
    path = find_checkpoint(wd, which)
    ctx = _context()
    import tensorflow as tf
    vocab, splits = seq_train.prepare_data(cfg, wd, ctx)
    net = seq_train.build_net(cfg, vocab.size)
    if ctx.topology.is_chief:
        status = tf.train.Checkpoint(net=net).read(str(path / "state"))
        status.expect_partial()   # the optimizer's slots are in the file and not needed here
        status.assert_existing_objects_matched()
    dist.broadcast_from_chief(net.variables)
    hyps: list[str] = []
    res = seq_train.evaluate_split(cfg, net, vocab, splits, split, ctx, wd, bleu=cfg.task == "translation",
                                   hypotheses=hyps)
    res = {k.replace("val_", f"{split}_"): v for k, v in res.items()}
    res.update(checkpoint=str(path), global_step=json.loads((path / "meta.json").read_text())["global_step"])
    if ctx.topology.is_chief:
        (wd / f"eval_{split}.json").write_text(json.dumps(res, indent=1, default=float))
        if hyps:
            (wd / f"{split}.hyp.txt").write_text("\n".join(hyps) + "\n")
        summary = ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k.endswith(("_ppl", "_bleu", "_loss")))
        print(f"[ba-eval-seq] {path.name} on {split}: {summary}", flush=True)
    return res


def main(cfg, workdir: str) -> int:
    evaluate_checkpoint(cfg, workdir, FLAGS.split, FLAGS.checkpoint)
    return 0


def run():
    """Console-script entry point ``ba-eval-seq``."""
    seq_train.define_flags()
    flags.DEFINE_enum("split", "test", ["valid", "test"], "Split to evaluate.")
    flags.DEFINE_string("checkpoint", "best", "latest | best | a checkpoint directory.")
    fit.console("ba-eval-seq", functools.partial(seq_train.run_main, "ba-eval-seq", main), usage=__doc__,
                flag_names=["config", "workdir", "split", "checkpoint"], catch_signals=False)


if __name__ == "__main__":
    run()
