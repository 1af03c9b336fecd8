"""ba-eval: TTA arithmetic, the TTA eval dataset, and end to end on a real digits checkpoint."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from ba_dist import dist, evaluate, train_step
from ba_dist.data.arrays import SyntheticSource
from ba_dist.data.evaluation import make_eval_dataset
from ba_dist.data.loader import PipelineSpec
from launcher import PYTHON, mpirun, rank_env, run

BA_TRAIN = [PYTHON, "-m", "ba_dist.train"]
BA_EVAL = [PYTHON, "-m", "ba_dist.evaluate"]


@pytest.fixture(autouse=True, scope="module")
def one_rank():
    """A world of one (a plain process is rank 0 of 1): evaluate_sharded reduces through ba_dist.dist."""
    dist.init()


def test_tta_averages_the_softmax_over_copies():
    # The "network" reads its logits off the input, so the expected values are exact.
    net = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(1, 1, 3))])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 3)).astype(np.float32) * 3          # 5 samples x 4 copies x 3 classes
    # sample 0: the mean softmax picks class 0 (its label), the mean logit would pick class 1
    logits[0] = [[5, 0, 0], [5, 0, 0], [-5, 0.2, 0], [-5, 0.2, 0]]
    labels = np.array([0, 1, 2, 1, 0])
    weights = np.array([1, 1, 1, 1, 0], np.float32)                      # the last one is padding
    ds = tf.data.Dataset.from_tensor_slices((logits.reshape(5, 4, 1, 1, 3), labels, weights)).batch(2)
    out = train_step.evaluate_sharded(net, ds, num_classes=3)

    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean = p.mean(1)[:4]
    assert out["val_count"] == 4
    assert out["val_top1"] == pytest.approx(np.mean(mean.argmax(-1) == labels[:4]))
    assert out["val_loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(4), labels[:4]])), rel=1e-5)
    assert mean[0].argmax() == 0 and logits[0].mean(0).argmax() == 1


def test_single_copy_tta_equals_plain_evaluation_of_the_same_images():
    net = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(1, 1, 3))])
    x = np.random.default_rng(1).normal(size=(6, 1, 1, 3)).astype(np.float32)
    y, w = np.array([0, 1, 2, 0, 1, 2]), np.ones(6, np.float32)
    plain = train_step.evaluate_sharded(net, tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4), 3)
    tta1 = train_step.evaluate_sharded(net, tf.data.Dataset.from_tensor_slices((x[:, None], y, w)).batch(4), 3)
    for k in ("val_top1", "val_top5", "val_count"):
        assert plain[k] == tta1[k]
    assert plain["val_loss"] == pytest.approx(tta1["val_loss"], rel=1e-5)


def test_the_evaluation_step_is_traced_once_per_network():
    # an end-of-epoch evaluation must reuse the compiled step (no retracing every epoch)
    net = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(1, 1, 3))])
    x = np.random.default_rng(2).normal(size=(8, 1, 1, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3, np.ones(8, np.float32))).batch(4)
    first = train_step.evaluate_sharded(net, ds, 3)
    assert train_step.evaluate_sharded(net, ds, 3) == first
    assert train_step._eval_step(net, 3).experimental_get_tracing_count() == 1
    other = tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(1, 1, 3))])
    assert train_step._eval_step(other, 3) is not train_step._eval_step(net, 3)


def _tta_images(world, rank, copies=3):
    src = SyntheticSource("validation", num_examples=5, image_shape=(32, 32, 3), num_classes=10, seed=0)
    spec = PipelineSpec(per_rank_unique=1, augment="cifar", eval_transform="none", seed=7, read_threads=1)
    ds, n = make_eval_dataset(src, spec, rank, world, batch_size=2, image_shape=src.image_shape, tta=copies)
    batches = list(ds)
    assert len(batches) == n
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[2].numpy() for b in batches])


def test_tta_dataset_makes_distinct_copies_independent_of_the_world_size():
    x, w = _tta_images(world=1, rank=0)
    assert x.shape == (5, 3, 32, 32, 3) and list(w) == [1] * 5
    assert not np.allclose(x[:, 0], x[:, 1])                    # copies differ (random crops / flips)
    again, _ = _tta_images(world=1, rank=0)
    np.testing.assert_array_equal(x, again)                      # and are reproducible
    # ranks take samples rank::world; a sample's copies are the same wherever it is evaluated
    r1, w1 = _tta_images(world=2, rank=1)
    np.testing.assert_array_equal(r1[:2], x[1::2])
    assert list(w1) == [1, 1, 0]                                 # the padding of the shorter shard


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("digits_run")
    res = run(BA_TRAIN + ["--config", "configs/digits_smoke.py", "--workdir", str(wd), "--config.ba.m_ranks=1",
                          "--config.train.epochs=1", "--config.train.verbose=0"], timeout=300, env=rank_env())
    assert res.returncode == 0, res.stdout[-4000:]
    return wd


def test_single_process_matches_training_and_tta_runs(digits_run):
    res = run(BA_EVAL + ["--workdir", str(digits_run), "--tta", "4"], timeout=300, env=rank_env())
    assert res.returncode == 0, res.stdout[-4000:]
    out = json.loads((digits_run / "eval.json").read_text())
    trained = json.loads((digits_run / "result.json").read_text())
    # the same checkpoint through the same evaluation path as ba-train's last evaluation
    assert out["single_crop"]["val_top1"] == trained["val_top1"]
    assert out["single_crop"]["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-6)
    assert out["single_crop"]["val_count"] == out["tta"]["val_count"] == 359
    assert out["tta"]["copies"] == 4 and out["tta"]["augment"] == "digits"
    assert out["checkpoint"]["global_step"] == trained["global_step"]
    assert math.isfinite(out["tta"]["val_loss"])
    assert "single-crop" in res.stdout and "TTA x4" in res.stdout


def test_two_ranks_give_the_single_process_numbers(digits_run, tmp_path):
    one = run(BA_EVAL + ["--workdir", str(digits_run), "--tta", "3", "--checkpoint", "best"], timeout=300,
              env=rank_env())
    assert one.returncode == 0, one.stdout[-4000:]
    single = json.loads((digits_run / "eval.json").read_text())
    two = mpirun(2, BA_EVAL + ["--workdir", str(digits_run), "--tta", "3", "--checkpoint", "best"], timeout=300)
    assert two.returncode == 0, two.stdout[-4000:]
    assert two.stdout.count("[ba-eval] wrote") == 1                     # only rank 0 writes
    double = json.loads((digits_run / "eval.json").read_text())
    assert double["world_size"] == 2
    for kind in ("single_crop", "tta"):
        assert double[kind]["val_count"] == 359                          # each sample once, padding excluded
        assert double[kind]["val_top1"] == single[kind]["val_top1"]
        assert double[kind]["val_loss"] == pytest.approx(single[kind]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("args,msg", [
    (["--checkpoint", "ckpt-000000999"], "no 'ckpt-000000999' checkpoint in"),
    (["--tta", "-1"], "--tta=-1: must be >= 0"),
])
def test_bad_checkpoint_or_flag_is_a_clear_error(digits_run, args, msg):
    res = run(BA_EVAL + ["--workdir", str(digits_run)] + args, timeout=300, env=rank_env())
    assert res.returncode == 2 and msg in res.stdout, res.stdout[-3000:]


def test_not_a_workdir_is_a_clear_error(tmp_path):
    res = run(BA_EVAL + ["--workdir", str(tmp_path)], timeout=120, env=rank_env())
    assert res.returncode == 2
    assert f"{tmp_path}/config.json: cannot read the run's config" in res.stdout, res.stdout[-3000:]


def test_precise_bn_flag_reestimates_on_training_batches(digits_run):
    res = run(BA_EVAL + ["--workdir", str(digits_run), "--precise_bn", "4"], timeout=300, env=rank_env())
    assert res.returncode == 0, res.stdout[-4000:]
    assert "precise BN: statistics re-estimated on 4 training batches" in res.stdout, res.stdout[-3000:]
    out = json.loads((digits_run / "eval.json").read_text())
    assert out["checkpoint"]["precise_bn_batches"] == 4 and out["single_crop"]["val_count"] == 359
    bad = run(BA_EVAL + ["--workdir", str(digits_run), "--precise_bn", "-1"], timeout=300, env=rank_env())
    assert bad.returncode == 2 and "--precise_bn=-1: must be >= 0" in bad.stdout, bad.stdout[-3000:]


def test_training_with_precise_bn_saves_the_statistics_it_reports(tmp_path):
    """train.precise_bn_batches: the final checkpoint holds the re-estimated statistics, 2 ranks agree."""
    res = mpirun(2, BA_TRAIN + ["--config", "configs/digits_smoke.py", "--workdir", str(tmp_path),
                                "--config.ba.m_ranks=1", "--config.train.epochs=1", "--config.train.verbose=0",
                                "--config.train.precise_bn_batches=3"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "precise BN: statistics re-estimated on 3 training batches per rank" in res.stdout, res.stdout[-3000:]
    trained = json.loads((tmp_path / "result.json").read_text())
    ev = run(BA_EVAL + ["--workdir", str(tmp_path)], timeout=300, env=rank_env())
    assert ev.returncode == 0, ev.stdout[-4000:]
    out = json.loads((tmp_path / "eval.json").read_text())
    assert out["single_crop"]["val_top1"] == trained["val_top1"]
    assert out["single_crop"]["val_loss"] == pytest.approx(trained["val_loss"], rel=1e-5)


@pytest.mark.parametrize("single,tta,verb,amount", [(0.90, 0.92, "reduces", "20.00%"),
                                                     (0.90, 0.86, "increases", "40.00%")])
def test_tta_line_says_whether_the_error_went_down_or_up(single, tta, verb, amount):
    row = dict(val_top5=1.0, val_loss=0.3, val_count=100)
    err1, errt = 1 - single, 1 - tta
    out = dict(single_crop=dict(row, val_top1=single),
               tta=dict(row, val_top1=tta, copies=4, error_reduction=(err1 - errt) / err1))
    line = evaluate.format_table(out).splitlines()[-1]
    assert line.startswith(f"TTA {verb} the top-1 error by {amount} "), line
