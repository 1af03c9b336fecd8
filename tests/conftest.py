"""Shared test set-up and the two test tiers.

``bash tests/run.sh`` runs everything (what CI runs). ``bash tests/run.sh
--quick`` runs ``-m "not mpirun and not slow"``: the single-process tier for
the edit-test loop. The markers are assigned here, centrally, so a test file
needs no decorator:

* ``mpirun``: the test launches ``mpirun`` -- found in the source of the test
  or of a fixture it uses (``mpirun(``, ``MPIRUN``, the fault suite's
  ``faultlib.run``/``Launch``, ``launch/horovodrun.sh``), or listed in
  ``LAUNCHES_MPIRUN`` when it goes through a command that launches it.
* ``slow``: single process, but trains a model end to end or runs for tens of
  seconds; listed in ``SLOW`` (by test, or by the fixture that does the work).
"""
import inspect
import os
import re
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# tests/mpi/ holds tests that every rank runs at once under mpirun (see
# tests/test_multirank.py, which launches them). Outside mpirun they are not collected.
collect_ignore_glob = [] if "OMPI_COMM_WORLD_SIZE" in os.environ else ["mpi/*"]

_MPIRUN_IN_SOURCE = re.compile(r"\bmpirun\(|\bMPIRUN\b|\bfaultlib\.(run|run_reporting|Launch)\(|horovodrun\.sh")
# Tests whose source does not say mpirun but whose command launches it.
LAUNCHES_MPIRUN = (
    "test_analysis.py::test_scaling_one_and_two_ranks",          # ba-bench scaling: mpirun -np 1 and 2
    "test_experiment.py::test_digits_row_three_variants_on_two_ranks",  # launch/local.sh = mpirun
    "test_experiment.py::test_seeds_and_sweep_real_runs_and_figure",    # launch/local.sh = mpirun
    # the stand-in srun of tests/stand_ins starts mpirun
    "test_slurm.py::test_512_node_template_stops_on_usr1_checkpoints_requeues_and_resumes",
    "test_slurm.py::test_cifar_template_through_submit",
    "test_slurm.py::test_srun_stand_in_models_a_dead_rank_with_and_without_wait",
    "test_slurm.py::test_rehearsal_of_every_template",     # slurm/rehearse.sh: 8-10 ranks, 5-10 min each
    "test_slurm.py::test_rehearsal_of_a_rank_killed_mid_training",
)
# Single-process tests that take tens of seconds or more: "file::test" or "fixture:name".
SLOW = (
    "fixture:step_results",      # test_configs.py: every config for two real steps, all model families
    "fixture:digits_run",        # test_evaluate.py: trains the digits for an epoch, then ba-eval
    "test_train_mpi.py::test_single_process_without_mpirun_copies_on_host_and_on_device",
    "test_train_mpi.py::test_xla_and_mixed_precision_switches",
    "test_models.py::test_digits_cnn_with_ghost_bn_learns_uci_digits",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "mpirun: launches mpirun (left out of run.sh --quick)")
    config.addinivalue_line("markers", "slow: trains end to end in one process (left out of run.sh --quick)")


def _test_fixtures(item):
    """The fixture functions of ``item`` that live in tests/ (not pytest's own)."""
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        for d in defs:
            if TESTS in Path(inspect.getsourcefile(d.func) or "/").resolve().parents:
                yield name, d.func


def _launches_mpirun(item) -> bool:
    funcs = [item.function] + [f for _, f in _test_fixtures(item)] if hasattr(item, "function") else []
    return any(_MPIRUN_IN_SOURCE.search(inspect.getsource(f)) for f in funcs)


def pytest_collection_modifyitems(config, items):
    for item in items:
        key = f"{Path(item.fspath).name}::{item.originalname}"
        if key in LAUNCHES_MPIRUN or _launches_mpirun(item):
            item.add_marker(pytest.mark.mpirun)
        if key in SLOW or any(f"fixture:{name}" in SLOW for name, _ in _test_fixtures(item)):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    """Under tests/test_multirank.py, each rank leaves its outcome in a file of its own (counting
    "passed" in mpirun's merged stdout breaks when two ranks' lines are split into each other)."""
    out = os.environ.get("BA_DIST_TEST_RANK_RESULTS")
    if out and "OMPI_COMM_WORLD_RANK" in os.environ:
        Path(out, f"rank-{os.environ['OMPI_COMM_WORLD_RANK']}").write_text(
            f"{int(exitstatus)} {session.testscollected} {session.testsfailed}")
