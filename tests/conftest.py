import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# tests/mpi/ holds tests that every rank runs at once under mpirun (see
# tests/test_multirank.py, which launches them). Outside mpirun they are not collected.
collect_ignore_glob = [] if "OMPI_COMM_WORLD_SIZE" in os.environ else ["mpi/*"]
