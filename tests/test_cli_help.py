"""Every console script of setup.py answers ``--help`` with its usage and exits 0.

Each script runs as a subprocess through its setup.py entry point (module and
function), so the test checks what ``pip install`` would put on PATH, from
this checkout. Usage means: what the command does, one example invocation
(an indented line naming the command with a flag) and a ``flags:`` section that
documents every flag the example uses.
"""
import re
import subprocess
import warnings

import pytest

from launcher import PYTHON, REPO, rank_env

ENTRY_POINTS = re.findall(r'"(ba-[\w-]+)=([\w.]+):(\w+)"', (REPO / "setup.py").read_text())
# Runs the entry point as the console script would; reports on stderr whether --help loaded TensorFlow.
CALL = """import sys
from {module} import {func}
sys.argv = ["{name}", "--help"]
try:
    {func}()
finally:
    sys.stderr.write("\\nTENSORFLOW_IMPORTED=%s\\n" % ("tensorflow" in sys.modules))
"""


def test_setup_py_lists_the_console_scripts():
    names = [n for n, _, _ in ENTRY_POINTS]
    assert len(names) >= 9 and len(set(names)) == len(names), names
    assert {"ba-train", "ba-analyze", "ba-bench", "ba-plot", "ba-experiment"} <= set(names)


@pytest.mark.parametrize("name,module,func", ENTRY_POINTS, ids=[n for n, _, _ in ENTRY_POINTS])
def test_help_prints_usage_flags_and_an_example(name, module, func):
    res = subprocess.run([PYTHON, "-c", CALL.format(name=name, module=module, func=func)], cwd=REPO,
                         env=rank_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{name} --help exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    out = res.stdout
    usage, sep, flag_part = out.partition("\nflags:\n")
    assert sep, f"{name} --help has no 'flags:' section:\n{out[-3000:]}"
    documented = set(re.findall(r"^\s+--([\w-]+)", flag_part, re.M))
    assert documented, f"{name} --help documents no flag:\n{out}"
    examples = [l for l in usage.splitlines() if re.match(rf"\s+(\S+\s+)*{re.escape(name)}\b.*\s--\w", l)]
    assert examples, f"{name} --help shows no example (an indented '{name} --flag ...' line):\n{usage}"
    used = {f for l in examples for f in re.findall(r"(?<![\w-])--([a-z][\w-]*)", l)}
    assert used <= documented, f"{name} --help: example flags {sorted(used - documented)} not under 'flags:'"
    if "TENSORFLOW_IMPORTED=True" in res.stderr:
        warnings.warn(f"{name} --help imports TensorFlow (slow start)")
