"""Multi-rank tests: each launch is one real ``mpirun`` running many tests.

tests/mpi/*.py are collected by pytest on every rank simultaneously; a rank
that fails makes mpirun exit non-zero, and a hang is cut by the time limit.
"""
import sys

import pytest

from launcher import PYTHON, mpirun

PYTEST_ON_EVERY_RANK = [PYTHON, "-m", "pytest", "tests/mpi", "-q", "-x", "-p", "no:cacheprovider",
                        "-o", "timeout=240"]


@pytest.mark.parametrize("np_,m_ranks,m_local", [(2, 2, 1), (4, 2, 2)])
def test_mpi_suite(np_, m_ranks, m_local, tmp_path):
    res = mpirun(np_, PYTEST_ON_EVERY_RANK, timeout=420, BA_DIST_TEST_RANK_RESULTS=str(tmp_path),
                 BA_DIST_TEST_M_RANKS=str(m_ranks), BA_DIST_TEST_M_LOCAL=str(m_local))
    sys.stdout.write(res.stdout[-8000:])
    assert res.returncode == 0, res.stdout[-8000:]
    # every rank ran and passed the same tests (nothing silently skipped away); one file per rank
    # (tests/conftest.py), as mpirun may split the ranks' stdout lines into each other
    outcomes = {p.name: p.read_text().split() for p in tmp_path.glob("rank-*")}
    assert sorted(outcomes) == [f"rank-{r}" for r in range(np_)], (outcomes, res.stdout[-4000:])
    collected = {o[1] for o in outcomes.values()}
    assert all(o[0] == "0" and o[2] == "0" for o in outcomes.values()) and len(collected) == 1, outcomes
    assert int(collected.pop()) > 0
