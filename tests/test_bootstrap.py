"""scripts/bootstrap.sh refuses an unsupported Python before touching anything."""
import subprocess

from launcher import REPO


def test_unsupported_python_is_a_clear_error(tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")  # answers the version probe like Python 3.9 would
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(REPO / "scripts/bootstrap.sh")], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                         "BA_PYTHON": str(fake)}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "is Python 3.9; ba_dist supports only Python 3.11" in res.stderr


def test_missing_python_is_a_clear_error(tmp_path):
    res = subprocess.run(["bash", str(REPO / "scripts/bootstrap.sh")], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                         "BA_PYTHON": "python3.11-not-here"}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no 'python3.11-not-here' on PATH" in res.stderr
