"""Run a few real ``ba-train`` steps of many configs in ONE process (used by test_configs.py).

    python tests/config_steps.py configs/resnet44_cifar10.py:ba configs/vgg16_cifar10.py:fixed_steps ...

Each config goes through :func:`ba_dist.train.main` unchanged except for
:func:`smoke_overrides`: synthetic data of the row's image shape and classes,
2 unique samples per step, 2 steps, a small evaluation split. M, the model, its
normalisation, augmentation, regime and every other value stay the config's
own. Prints one JSON line per config: ``{"spec", "ok", "seconds", "result" | "error"}``.

Two things keep 31 configs within a few minutes on 2 CPU cores:

* one process runs many configs (importing TensorFlow and Horovod takes ~10 s).
  In a process of one rank the configs differ only in ``m_local``, which no
  communicator depends on, so ``dist.init`` is simply called again with it
  (:func:`_use_m_local`);
* ``tf.config.run_functions_eagerly(True)`` (``BA_CONFIG_STEPS_EAGER=0`` turns it
  off): tracing and optimising the graphs of 31 models for two steps costs 2-3x
  more CPU than running the same Python step eagerly. Graph mode is what
  tests/test_train_mpi.py exercises.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback

import ml_collections

STEPS = 2
UNIQUE_PER_STEP = 1


def smoke_overrides(cfg: ml_collections.ConfigDict, num_classes: int, image_shape: tuple) -> ml_collections.ConfigDict:
    """The config on synthetic data with a tiny batch and ``STEPS`` steps, one rank."""
    with cfg.unlocked():
        cfg.input.dataset = "synthetic"
        cfg.input.source_kwargs = ml_collections.ConfigDict(dict(
            num_examples=STEPS * UNIQUE_PER_STEP, image_shape=tuple(image_shape), num_classes=num_classes))
    cfg.input.batch_size = UNIQUE_PER_STEP      # B = 2 unique; the copies stay M per sample
    cfg.input.eval_batch_size = STEPS * UNIQUE_PER_STEP
    cfg.input.prefetch = 1
    cfg.input.read_threads = 1
    cfg.ba.m_ranks = 1                          # one process: rank 0 of 1 makes all M copies
    cfg.model.ghost_batch_size = min(cfg.model.ghost_batch_size, UNIQUE_PER_STEP)
    cfg.train.epochs = 1                        # STEPS * 2 samples / B 2 = STEPS steps in the epoch
    cfg.optim.warmup_epochs = 0.0
    cfg.train.max_steps = STEPS
    cfg.train.verbose = 0
    cfg.train.keep_checkpoints = 1
    return cfg


def _use_m_local(m_local: int) -> None:
    from ba_dist import dist
    dist.init(m_ranks=1, m_local=m_local, abort_on_error=False)  # m_local may change between configs


def run(spec: str, num_classes: int, image_shape: tuple, workdir: str) -> dict:
    from ba_dist import config as config_lib
    from ba_dist import train
    cfg = smoke_overrides(config_lib.load_config_file(spec), num_classes, image_shape)
    cfg.lock()
    _use_m_local(cfg.ba.multiplicity)
    code = train.main(cfg, workdir)
    result = json.loads(open(f"{workdir}/result.json").read())
    result["exit_code"] = code
    import tensorflow as tf
    tf.keras.backend.clear_session()
    return result


def main(argv: list[str]) -> int:
    import os
    import tensorflow as tf
    from ba_dist import paper_tables as paper
    if os.environ.get("BA_CONFIG_STEPS_EAGER", "1") == "1":
        tf.config.run_functions_eagerly(True)
    failed = 0
    for spec in argv:
        row = paper.row_for_config(spec)
        imagenet = row is not None and row.dataset == "ImageNet"
        digits = row is not None and row.key == "digits_smoke"
        classes = 1000 if imagenet else 100 if row and row.dataset == "Cifar100" else 10
        # ImageNet sources decode to any size; the augmentations crop/resize to 224.
        shape = (8, 8, 1) if digits else (64, 64, 3) if imagenet else (32, 32, 3)
        t0 = time.time()
        try:
            with tempfile.TemporaryDirectory(prefix="ba-config-steps-") as wd:
                out = dict(spec=spec, ok=True, result=run(spec, classes, shape, wd))
        except Exception:
            failed += 1
            out = dict(spec=spec, ok=False, error=traceback.format_exc()[-4000:])
        out["seconds"] = round(time.time() - t0, 1)
        print("CONFIG_STEPS " + json.dumps(out, default=float), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
