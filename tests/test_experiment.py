"""ba-experiment (ba_dist/reproduce.py): the three variants of a row, each launched under mpirun, and the comparison table."""
import json

import pytest

from ba_dist import paper_tables as paper
from ba_dist import reproduce
from launcher import PYTHON, REPO, rank_env, run


def test_digits_row_three_variants_on_two_ranks(tmp_path):
    # 1 epoch budget (fixed #samples: 4 epochs of B 256) cut to 6 steps: seconds of training per variant
    res = run([PYTHON, "-m", "ba_dist.reproduce", "--config", "configs/digits_smoke.py", "--workdir", str(tmp_path),
               "--ranks", "2", "--epochs", "1", "--", "--config.train.max_steps=6", "--config.train.verbose=0"],
              timeout=600, env=rank_env())
    assert res.returncode == 0, res.stdout[-6000:]
    table = json.loads((tmp_path / "comparison.json").read_text())
    assert list(table["variants"]) == ["fixed_steps", "fixed_samples", "ba"]
    configs = {v: json.loads((tmp_path / v / "config.json").read_text()) for v in table["variants"]}
    assert [(c["input"]["batch_size"], c["ba"]["multiplicity"], c["train"]["epochs"]) for c in configs.values()] == \
        [(64, 1, 1), (256, 1, 4), (64, 4, 1)]
    for v, entry in table["variants"].items():
        assert entry["result"]["global_step"] == 6, v
        assert entry["result"]["val_count"] == 359, v
    # every run went through a 2-rank mpirun launch, and the table shows all three
    assert res.stdout.count("2 ranks x") == 3
    assert "Fixed #Steps" in res.stdout and "Fixed #Samples" in res.stdout and "B unique x M" in res.stdout
    # a second call runs nothing and prints the same table
    again = run([PYTHON, "-m", "ba_dist.reproduce", "--config", "configs/digits_smoke.py", "--workdir", str(tmp_path),
                 "--ranks", "2"], timeout=120, env=rank_env())
    assert again.returncode == 0 and again.stdout.count("done already") == 3, again.stdout[-3000:]


def test_table_puts_the_paper_beside_the_runs(tmp_path):
    row = paper.TABLE2["resnet44_cifar10"]
    (tmp_path / "ba").mkdir()
    (tmp_path / "ba" / "result.json").write_text(json.dumps(dict(val_top1=0.9512, global_step=128084,
                                                                 wall_time_sec=3600.0)))
    text = reproduce.format_table(reproduce.collect(tmp_path, row))
    assert "ResNet44 / Cifar10, M=40" in text
    assert "95.12%" in text and "93.70%" in text and "93.80%" in text and "95.43%" in text


def test_launch_command_names_the_variant_and_the_budget(tmp_path):
    cmd = reproduce.variant_command("configs/resnet44_cifar10.py", "fixed_samples", tmp_path / "fs", 8,
                                     "launch/local.sh {ranks}", epochs=20, extra=("--config.seed=1",))
    assert cmd[:2] == ["launch/local.sh", "8"]
    assert cmd[cmd.index("--config") + 1] == "configs/resnet44_cifar10.py:fixed_samples,epochs=20"
    assert cmd[-1] == "--config.seed=1"


def test_not_a_row_is_refused():
    res = run([PYTHON, "-m", "ba_dist.reproduce", "--config", "configs/seq_nothing.py", "--workdir", "/tmp/x"],
              timeout=60, env=rank_env())
    assert res.returncode == 2 and "is not a Table 2 row" in res.stdout


def test_flags_table_only_and_stray_arguments(tmp_path, capsys):
    smoke = str(REPO / "configs/digits_smoke.py")
    assert reproduce.main(["--config", smoke, "--workdir", str(tmp_path), "--table-only"]) == 0
    assert json.loads((tmp_path / "comparison.json").read_text())["variants"]["ba"]["result"] is None
    assert "Fixed #Steps" in capsys.readouterr().out
    assert reproduce.main(["--config", smoke, "--workdir", str(tmp_path), "stray"]) == 2
    assert "ba-train arguments go after '--'" in capsys.readouterr().err
    assert reproduce.main(["--config", smoke]) == 2
    assert "--workdir required" in capsys.readouterr().err


def test_paired_difference_and_mean_std_on_known_numbers():
    assert reproduce._mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(1.2909944487))
    d = reproduce.paired_difference([0.98, 0.97, 0.99], [0.96, 0.96, 0.97])
    # differences 0.02, 0.01, 0.02: mean 1/60, sample std sqrt(1/3) / 100, t(0.975, 2) = 4.302652729749464
    half = 4.302652729749464 * (3 ** -0.5 / 100) / 3 ** 0.5
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 60)
    assert d["std"] == pytest.approx(3 ** -0.5 / 100)
    assert (d["low"], d["high"]) == (pytest.approx(1 / 60 - half), pytest.approx(1 / 60 + half))
    assert reproduce.paired_difference([0.5], [0.25]) == dict(n=1, mean=0.25, std=0.0, low=None, high=None)
    with pytest.raises(ValueError, match="equally long"):
        reproduce.paired_difference([0.5, 0.6], [0.25])


def test_seed_table_pairs_by_seed(tmp_path):
    row = paper.TABLE2["digits_smoke"]
    numbers = {(3, "fixed_steps"): (0.95, 0.20), (3, "ba"): (0.97, 0.15), (4, "fixed_steps"): (0.96, 0.18),
               (4, "ba"): (0.96, 0.16), (5, "fixed_steps"): (0.94, 0.22)}     # seed 5's BA run is missing
    for (k, v), (top1, loss) in numbers.items():
        (tmp_path / f"seed{k}" / v).mkdir(parents=True)
        (tmp_path / f"seed{k}" / v / "result.json").write_text(json.dumps(dict(val_top1=top1, val_loss=loss)))
    stats = reproduce.seed_statistics(tmp_path, row, ["fixed_steps", "ba"], [3, 4, 5])
    assert stats["variants"]["fixed_steps"]["n"] == 3 and stats["variants"]["ba"]["seeds"] == [3, 4]
    assert stats["variants"]["fixed_steps"]["val_top1"]["mean"] == pytest.approx(0.95)
    assert stats["variants"]["fixed_steps"]["val_top1"]["std"] == pytest.approx(0.01)
    diff = stats["ba_minus_fixed_steps"]
    assert diff["val_top1"]["seeds"] == [3, 4] and diff["val_top1"]["mean"] == pytest.approx(0.01)
    assert diff["val_loss"]["mean"] == pytest.approx(-0.035)
    text = reproduce.format_seed_table(stats)
    assert "95.00 +- 1.00" in text and "96.50 +- 0.71" in text
    assert "BA - Fixed #Steps, val_top1: +1.00 points, 95% t-interval [-11.71, +13.71]" in text


def test_seeds_and_sweep_real_runs_and_figure(tmp_path):
    # 2 seeds x (fixed #steps, BA M=4) + the M=2 sweep run, 1 rank, 3 steps each; M=1 and M=4 reuse seed 7's runs
    fig = tmp_path / "fig" / "val_error.png"
    res = run([PYTHON, "-m", "ba_dist.reproduce", "--config", "configs/digits_smoke.py", "--workdir", str(tmp_path),
               "--ranks", "1", "--variants", "fixed_steps,ba", "--epochs", "1", "--seeds", "2", "--base-seed", "7",
               "--sweep", "4,1,2", "--figure", str(fig), "--", "--config.ba.m_ranks=1",
               "--config.train.max_steps=3", "--config.train.verbose=0"], timeout=900, env=rank_env())
    assert res.returncode == 0, res.stdout[-6000:]
    seeds = {json.loads((tmp_path / f"seed{k}" / v / "config.json").read_text())["seed"]
             for k in (7, 8) for v in ("fixed_steps", "ba")}
    assert seeds == {7, 8}
    sweep = json.loads((tmp_path / "sweep" / "M2" / "config.json").read_text())
    assert (sweep["ba"]["multiplicity"], sweep["seed"], sweep["input"]["batch_size"]) == (2, 7, 64)
    assert not (tmp_path / "sweep" / "M1").exists() and not (tmp_path / "sweep" / "M4").exists()
    stats = json.loads((tmp_path / "seeds.json").read_text())
    assert stats["ba_minus_fixed_steps"]["val_top1"]["n"] == 2
    assert "95% t-interval" in res.stdout and "figure:" in res.stdout
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000


def test_figure_needs_a_sweep(tmp_path, capsys):
    smoke = str(REPO / "configs/digits_smoke.py")
    assert reproduce.main(["--config", smoke, "--workdir", str(tmp_path), "--figure", "x.png"]) == 2
    assert "give --sweep too" in capsys.readouterr().err
    assert reproduce.main(["--config", smoke, "--workdir", str(tmp_path), "--sweep", "1,0"]) == 2
    assert "positive integers" in capsys.readouterr().err
