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
def test_mpi_suite(np_, m_ranks, m_local):
    res = mpirun(np_, PYTEST_ON_EVERY_RANK, timeout=420,
                 BA_DIST_TEST_M_RANKS=str(m_ranks), BA_DIST_TEST_M_LOCAL=str(m_local))
    sys.stdout.write(res.stdout[-8000:])
    assert res.returncode == 0, res.stdout[-8000:]
    # every rank ran and passed the same tests (nothing silently skipped away)
    assert res.stdout.count(" passed") == np_, res.stdout[-4000:]
