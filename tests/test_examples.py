"""examples/: the plain Horovod script and its Batch Augmentation version."""
import ast
import difflib
import re
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
