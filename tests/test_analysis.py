"""ba-analyze / ba-bench / ba-plot: the paper's section 3 measurements.

One real ``mpirun -np 2`` job (module fixture ``mpi_run``) checks the gradient
statistics of the training step against values derived independently from
every rank's local gradient, and runs grad-corr split over 2 ranks; the
scaling benchmark launches ``mpirun -np 1`` and ``-np 2`` itself. Everything
else runs in this process on the embedded digits or synthetic tensors.
"""
import json
import math
import re
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from launcher import REPO, mpirun

from ba_dist import models
from ba_dist.analysis import cli
from ba_dist.analysis import grad_corr as gc
from ba_dist.analysis import throughput as tp
from ba_dist.analysis.gradstats import variance_of_mean
from ba_dist.data import augment as aug
from ba_dist.data import sources

SMOKE = str(REPO / "configs/digits_smoke.py")

# Every rank: a BATrainModel on the digits, gradient statistics of
# (A) the same batch on every rank (BA with m_ranks = N, m_local = 1 and no
#     augmentation: every rank trains on identical examples) and
# (B) a different batch per rank, with the expected values computed from the
#     allgathered local gradients in float64;
# then a checkpoint in the workdir layout and grad-corr over both ranks.
WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from types import SimpleNamespace
    import numpy as np
    from ba_dist import dist
    ctx = dist.init()
    hvd, rank, size = ctx.hvd, ctx.rank, ctx.size
    import tensorflow as tf
    from ba_dist import config as config_lib, optim, train, train_step
    from ba_dist.analysis import cli
    from ba_dist.analysis.gradstats import GradStatsLogger
    from ba_dist.checkpoint import CheckpointManager
    from ba_dist.data import build as data_build
    from ba_dist.data import sources

    out = Path(sys.argv[1]); wd = out / "run"
    cfg = config_lib.load_config_file(sys.argv[2])
    src = sources.get_source("digits")
    tf.keras.utils.set_random_seed(0)
    spec = data_build.make_spec(cfg, SimpleNamespace(per_rank_unique=1, m_local=1), src)
    net = train.build_net(cfg, src.num_classes, data_build.input_shape(spec, src))
    dist.broadcast_from_chief(net.variables)
    opt = optim.make_optimizer(0.05)
    model = train_step.BATrainModel(net, weight_decay=5e-4)
    model.compile(optimizer=opt)

    def batch(first):
        return (tf.constant(src.images[first:first + 32], tf.float32) / 255.0,
                tf.one_hot(src.labels[first:first + 32], 10))

    res = {"rank": rank, "size": size}
    ds = tf.data.Dataset.from_tensors(batch(0)).repeat()
    cbs = [GradStatsLogger(wd, every=2, world_size=size)] if rank == 0 else []
    model.fit(ds, steps_per_epoch=4, epochs=1, verbose=0, callbacks=cbs)
    res["same_var"] = float(model.step_grad_var.numpy())
    res["same_norm"] = float(model.step_grad_norm.numpy())

    x, y = batch(32 + 32 * rank)
    with tf.GradientTape() as tape:
        loss = model.loss_fn(y, net(x, training=True))   # grad_norm is the loss gradient's (no weight decay)
    flat = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, net.trainable_variables)], 0)
    local = hvd.allgather(flat[None]).numpy().astype(np.float64)
    mean = local.mean(0)
    res["expected_var"] = float((local ** 2).sum(1).mean() - (mean ** 2).sum())
    res["expected_norm"] = float(np.sqrt((mean ** 2).sum()))
    model.fit(tf.data.Dataset.from_tensors((x, y)), steps_per_epoch=1, verbose=0)   # same trace as (A)
    res["diff_var"] = float(model.step_grad_var.numpy())
    res["diff_norm"] = float(model.step_grad_norm.numpy())

    if rank == 0:
        (wd / "config.json").write_text(config_lib.to_json(cfg))
        CheckpointManager(wd / "checkpoints").save(tf.train.Checkpoint(net=net, optimizer=opt),
                                                   {"epoch": 1, "step_in_epoch": 0, "global_step": 5})
    dist.barrier()
    res["grad_corr_exit"] = cli.main(["grad-corr", "--workdir", str(wd), "--n", "6", "--eval-samples", "64"])
    (out / f"rank{rank}.json").write_text(json.dumps(res))
""")


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis_mpi")
    (out / "worker.py").write_text(WORKER)
    res = mpirun(2, [str(__import__("sys").executable), str(out / "worker.py"), str(out), SMOKE], timeout=300)
    assert res.returncode == 0, res.stdout[-6000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks, res.stdout


# ---------------------------------------------------------------------------- pearson, gradients
def test_pearson_exact_values():
    a = np.random.default_rng(0).normal(size=1000)
    assert gc.pearson(a, a) == pytest.approx(1.0, abs=1e-12)
    assert gc.pearson(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert gc.pearson(a, 3.0 * a + 7.0) == pytest.approx(1.0, abs=1e-12)   # affine invariant
    assert math.isnan(gc.pearson(a, np.ones_like(a)))
    with pytest.raises(ValueError, match="one size"):
        gc.pearson(a, a[:-1])


@pytest.fixture(scope="module")
def digits_net():
    tf.keras.utils.set_random_seed(0)
    return models.build_model("digits_cnn", 10, (8, 8, 1))


def test_example_gradient_is_the_single_example_gradient(digits_net):
    src = sources.get_source("digits")
    x = tf.constant(src.images[:3], tf.float32) / 255.0
    batched = gc.example_gradients(digits_net, x, src.labels[:3])
    assert batched.shape == (3, sum(int(np.prod(v.shape)) for v in digits_net.trainable_variables))
    with tf.GradientTape() as tape:
        loss = tf.keras.losses.sparse_categorical_crossentropy(
            src.labels[1:2], digits_net(x[1:2], training=False), from_logits=True)[0]
    ref = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, digits_net.trainable_variables)])
    one = gc.example_gradient(digits_net, x[1], src.labels[1])
    np.testing.assert_allclose(one, ref, atol=1e-5)
    np.testing.assert_allclose(batched[1], ref, atol=1e-5)
    assert gc.pearson(one, one) == pytest.approx(1.0, abs=1e-12)
    assert gc.pearson(one, batched[0]) < 1.0


def test_sample_pairs_same_and_different_class():
    src = sources.get_source("digits")
    triples = gc.sample_pairs(src, 50, seed=3)
    assert triples == gc.sample_pairs(src, 50, seed=3) != gc.sample_pairs(src, 50, seed=4)
    for x, y, w in triples:
        assert x != y and src.label(x) == src.label(y) and src.label(w) != src.label(x)


def test_grad_corr_at_init_orders_the_measures(tmp_path, capsys):
    """Paper Table 1 at initialization: rho(x, T(x)) and rho(x, y) well above rho(z, w)."""
    out = tmp_path / "gc.json"
    assert cli.main(["grad-corr", "--config", SMOKE, "--n", "12", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["augment_sets"] == ["digits", "digits|cutout(size=4)"]
    (init,) = result["states"]
    rho = init["rho"]
    assert all(s["n"] == 12 for s in rho.values())
    diff = rho[gc.DIFFERENT_CLASS]["median"]
    for name in result["augment_sets"]:
        assert rho[gc.augment_key(name)]["median"] > diff + 0.3
    assert rho[gc.SAME_CLASS]["median"] > diff + 0.3
    assert 0.0 <= init["val_top1"] <= 0.3 and init["val_count"] == 359   # chance level, whole split
    table = capsys.readouterr().out
    assert "ρ(x, T(x)) (digits\\|cutout(size=4))" in table and "| Epoch | 0 |" in table


def test_grad_corr_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["grad-corr", "--workdir", str(tmp_path)]) == 2
    assert "config.json does not exist" in capsys.readouterr().err


def test_default_augment_sets():
    assert cli.default_augment_sets("cifar", 32) == ["cifar", "cifar_cutout"]
    assert cli.default_augment_sets("imagenet", 224) == ["imagenet", "imagenet|cutout(size=112)"]
    for name in cli.default_augment_sets("digits", 8):
        aug.get_augment(name)  # every default parses


# ---------------------------------------------------------------------------- under mpirun -np 2
def test_grad_var_is_zero_when_ranks_agree(mpi_run):
    _, ranks, _ = mpi_run
    for r in ranks:
        assert r["size"] == 2
        assert r["same_var"] == 0.0          # identical gradients on both ranks: exactly zero spread
        assert r["same_norm"] > 0.0
    out, _, _ = mpi_run
    rows = [json.loads(l) for l in (out / "run" / "grad_norm.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]  # every 2 steps, written once (rank 0)
    assert all(r["grad_var"] == 0.0 and r["grad_var_of_mean"] == 0.0 and r["grad_norm"] > 0 for r in rows)


def test_grad_var_matches_the_spread_of_local_gradients(mpi_run):
    _, ranks, _ = mpi_run
    for r in ranks:
        assert r["diff_var"] > 0.0
        assert r["diff_var"] == pytest.approx(r["expected_var"], rel=1e-3)
        assert r["diff_norm"] == pytest.approx(r["expected_norm"], rel=1e-4)
    assert ranks[0]["diff_var"] == ranks[1]["diff_var"]   # every rank logs the same value


def test_grad_corr_on_two_ranks_equals_one_process(mpi_run, tmp_path):
    out, ranks, _ = mpi_run
    assert [r["grad_corr_exit"] for r in ranks] == [0, 0]
    two = json.loads((out / "run" / "grad_corr.json").read_text())
    assert [s["name"] for s in two["states"]] == ["init", "trained"]
    assert two["states"][1]["epoch"] == 1 and two["states"][1]["checkpoint"].endswith("ckpt-000000005")
    one_path = tmp_path / "one.json"
    assert cli.main(["grad-corr", "--workdir", str(out / "run"), "--n", "6", "--eval-samples", "64",
                     "--out", str(one_path)]) == 0
    one = json.loads(one_path.read_text())
    for s1, s2 in zip(one["states"], two["states"]):
        for key in s1["rho"]:
            np.testing.assert_allclose(s1["rho"][key]["values"], s2["rho"][key]["values"], atol=1e-6)


def test_variance_of_mean():
    assert variance_of_mean(3.0, 1) is None
    assert variance_of_mean(3.0, 4) == 1.0


# ---------------------------------------------------------------------------- throughput
def test_throughput_imagenet_shaped_every_batch_size():
    from ba_dist import dist
    dist.init()
    spec = tp.BenchSpec("mobilenet_v1", image_size=64, num_classes=1000, repeats=2, steps=1,
                        min_images=0, warmup=1)
    rows = tp.sweep(spec, [1, 2])
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["images_per_sec"] > 0 and len(r["values"]) == 2 and r["std"] >= 0 for r in rows)
    table = tp.markdown_throughput(rows, spec)
    assert "| 1 |" in table and "| 2 |" in table and "64x64x3" in table


def test_scaling_one_and_two_ranks(tmp_path, capsys):
    code = cli.main(["scaling", "--model", "digits_cnn", "--image-size", "8", "--channels", "1",
                     "--max-ranks", "2", "--batch-size", "8", "--repeats", "2", "--min-images", "32",
                     "--out-dir", str(tmp_path)], prog="ba-bench", commands=("bench",))
    assert code == 0
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["ranks"] for r in result["rows"]] == [1, 2]
    one, two = result["rows"]
    assert one["speedup"] == 1.0 and one["efficiency"] == 1.0
    assert two["images_per_sec"] > 0 and two["efficiency"] == pytest.approx(two["speedup"] / 2)
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert "| 2 |" in capsys.readouterr().out


# ---------------------------------------------------------------------------- ba-plot
def _fake_run(path, m, epochs=4, steps_per_epoch=10, per_step=True):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"ba": {"multiplicity": m}, "input": {"batch_size": 64}}))
    with open(path / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "step": e * steps_per_epoch, "train_loss": 2.0 / e,
                                "train_top1": 1 - 0.5 / e, "val_loss": 2.2 / e, "val_top1": 1 - 0.6 / e,
                                "grad_norm": 1.0 / m}) + "\n")
    if per_step:
        with open(path / "grad_norm.jsonl", "w") as f:
            for s in range(2, epochs * steps_per_epoch + 1, 2):
                f.write(json.dumps({"step": s, "grad_norm": 1.0 / m + 0.01 * s, "grad_var": 0.1,
                                    "grad_var_of_mean": 0.1}) + "\n")
    return path


def test_plot_val_error_train_dashed_val_solid(tmp_path):
    from ba_dist import plot
    runs = [_fake_run(tmp_path / "m1", 1), _fake_run(tmp_path / "m4", 4)]
    fig = plot.plot_runs(runs, "val_error", "epoch")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    assert sorted(l.get_linestyle() for l in lines) == ["-", "-", "--", "--"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["M=1, B=64", "M=4, B=64"]
    val = [l for l in lines if l.get_linestyle() == "-"][0]
    assert list(val.get_xdata()) == [1, 2, 3, 4] and val.get_ydata()[0] == pytest.approx(60.0)


def test_plot_grad_norm_per_step_and_per_epoch_fallback(tmp_path):
    from ba_dist import plot
    runs = [_fake_run(tmp_path / "a", 1), _fake_run(tmp_path / "b", 2), _fake_run(tmp_path / "c", 8, per_step=False)]
    lines = plot.plot_runs(runs, "grad_norm", "step").axes[0].get_lines()
    assert len(lines) == 3
    assert len(lines[0].get_xdata()) == 20 and len(lines[2].get_xdata()) == 4   # per step / per epoch
    assert list(lines[2].get_xdata()) == [10, 20, 30, 40]
    epochs = plot.plot_runs(runs[:1], "grad_norm", "epoch").axes[0].get_lines()[0].get_xdata()
    assert epochs[0] == pytest.approx(0.2) and epochs[-1] == pytest.approx(4.0)


def test_plot_cli_writes_png(tmp_path, capsys):
    from ba_dist import plot
    runs = [str(_fake_run(tmp_path / "m1", 1)), str(_fake_run(tmp_path / "m2", 1))]
    out = tmp_path / "fig" / "err.png"
    assert plot.main(runs + ["--metric", "val_error", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert plot.main([str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_cli_flags_belong_to_their_subcommand(capsys):
    cases = [
        (["throughput", "--model", "mlp", "--workdir", "x"], "throughput does not take --workdir"),
        (["scaling", "--model", "mlp"], "scaling needs --max-ranks"),
        (["grad-corr", "--workdir", "a", "--config", "b"], "exactly one of --workdir"),
        (["throughput", "--model", "mlp", "--repeats", "many"], "--repeats=many"),
        (["--n", "3"], "expected one subcommand of grad-corr, throughput, scaling, copies, got none"),
        (["copies", "--source-size", "big"], "--source-size must be HxW"),
        (["copies", "--transform", "sepia"], "Unknown augmentation 'sepia'"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert cli.main(["grad-corr", "--config", SMOKE], prog="ba-bench", commands=("bench",)) == 2
    assert "one subcommand of throughput, scaling, copies, got ['grad-corr']" in capsys.readouterr().err


def test_bench_copies_names_the_device_and_times_both_placements(capsys):
    """ba-bench copies: what a GPU user runs to see where input.copies_on='auto' makes the copies."""
    assert cli.main(["copies", "--source-size", "60x80", "--unique", "4", "--copies", "2", "--repeats", "2"],
                    prog="ba-bench", commands=("bench",)) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (host|device) \| (\S+) \| (\d+) \| ([0-9.]+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["host", "device"] and all(int(r[2]) > 0 for r in rows), out
    assert rows[0][1].endswith("CPU:0")
    if not tf.config.list_logical_devices("GPU"):
        assert rows[1][1].endswith("CPU:0") and "No GPU visible" in out
