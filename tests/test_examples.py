"""examples/: the plain Horovod script and its Batch Augmentation version."""
import ast
import difflib
import re
import time
from pathlib import Path

import pytest

from launcher import PYTHON, REPO, mpirun

PLAIN = REPO / "examples/horovod_keras_digits.py"
BA = REPO / "examples/horovod_keras_digits_ba.py"


def _code_lines(path: Path) -> list[str]:
    """Source lines after the module docstring."""
    tree = ast.parse(path.read_text())
    start = tree.body[0].end_lineno if ast.get_docstring(tree) else 0
    return path.read_text().splitlines()[start:]


def test_ba_version_changes_at_most_five_marked_lines():
    diff = list(difflib.unified_diff(_code_lines(PLAIN), _code_lines(BA), lineterm="", n=0))
    added = [l for l in diff if l.startswith("+") and not l.startswith("+++")]
    assert 0 < len(added) <= 5, added
    assert all("# BA:" in l for l in added), added


@pytest.mark.parametrize("script,steps", [(PLAIN, 1797 // (64 * 2)), (BA, 1797 // 32)])
def test_examples_train_under_mpirun(script, steps):
    res = mpirun(2, [PYTHON, str(script)], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    m = re.search(r"final training accuracy ([0-9.]+), steps/epoch (\d+)", res.stdout)
    assert m, res.stdout[-3000:]
    # BA: one group of 2 ranks shares 32 unique digits per step -> 4x the plain script's steps per epoch
    assert int(m.group(2)) == steps
    assert float(m.group(1)) > 0.8


CUSTOM_LOOP = REPO / "examples/horovod_custom_loop_ba.py"
EXIT_LIMIT_SEC = 30  # from the final print to every rank gone; the hang this guards against was forever


@pytest.mark.parametrize("flags", [[], ["--broadcast"], ["--broadcast", "--no-stop"]])
def test_custom_loop_learns_and_every_rank_exits(flags, tmp_path):
    """hvd.DistributedGradientTape loop on 4 ranks, groups of 2: learns, and exits (with or without stop())."""
    # each rank records when the script's body is done (in its own file: mpirun may split lines of
    # different ranks into each other on stdout); what follows is atexit and interpreter teardown
    runner = ("import os, runpy, sys, time; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
              f"open(os.path.join({str(tmp_path)!r}, 'done.' + os.environ['OMPI_COMM_WORLD_RANK']), 'w')"
              ".write(repr(time.time()))")
    res = mpirun(4, [PYTHON, "-c", runner, str(CUSTOM_LOOP)] + flags, timeout=400)
    gone = time.time()
    assert res.returncode == 0, res.stdout[-4000:]
    done = [float(p.read_text()) for p in sorted(tmp_path.glob("done.*"))]
    assert len(done) == 4, (sorted(p.name for p in tmp_path.iterdir()), res.stdout[-3000:])
    assert gone - min(done) < EXIT_LIMIT_SEC, f"ranks took {gone - min(done):.0f}s to exit"
    m = re.search(r"final training accuracy ([0-9.]+), steps/epoch (\d+)", res.stdout)
    assert m, res.stdout[-3000:]
    assert int(m.group(2)) == (1797 // 2) // 16  # 2 groups, 16 unique digits per rank per step
    assert float(m.group(1)) > 0.8
