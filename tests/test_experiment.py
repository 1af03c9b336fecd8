"""ba-experiment (ba_dist/reproduce.py): the three variants of a row, each launched under mpirun, and the comparison table."""
import json

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
