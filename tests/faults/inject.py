"""``ba-train`` with one fault injected from inside a rank, at a chosen moment (test-only).

    mpirun -np 2 python tests/faults/inject.py --config configs/digits_smoke.py --workdir W ...

Arguments are ba-train's. The fault comes from the environment and acts on rank
``BA_FAULT_RANK`` only; the other ranks run plain ba-train:

``BA_FAULT=kill_in_broadcast``
    A non-reader (``input.broadcast='decoded'``) SIGKILLs itself once a step
    has been announced and before its Bcast, on the first step it receives
    once the file ``BA_FAULT_AFTER`` exists (e.g. a checkpoint's meta.json).
    Its reader sends that step into a Bcast the dead rank never joins; the
    main thread is in a training step (the loader runs ``prefetch`` steps ahead).
``BA_FAULT=kill_in_checkpoint``
    Rank 0 SIGKILLs itself when it opens ``meta.json`` inside the temporary
    directory of the checkpoint of global step ``BA_FAULT_STEP``: the tensors
    are on disk, meta.json is not, nothing has been renamed into place.

Every rank writes its pid to ``BA_FAULT_DIR/rank<N>.pid`` (so a test can signal
exactly one rank), and the injected kill first writes ``BA_FAULT_DIR/killed``
(``time.time()``), so a test can measure how long the others take to go.

The kill is a real SIGKILL: from outside, indistinguishable from the OOM killer
or a node failure; only its moment is chosen. ba_dist itself has no test hooks:
this file patches a private function and uses an audit hook (PEP 578).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, as under tests/launcher.py


def _die(fault_dir: Path) -> None:
    (fault_dir / "killed").write_text(repr(time.time()))
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_broadcast(fault_dir: Path, after: str) -> None:
    from ba_dist.data import broadcast
    receive = broadcast.DecodedReceiver.recv  # the loader calls it through the class

    def announced_then_die(self):
        # The previous message announced this step (status and size): its
        # reader sends it as soon as the step after it is decoded, into a Bcast
        # that this rank never joins.
        if os.path.exists(after) and self._next is not None and self._next[0] == broadcast._OK:
            _die(fault_dir)
        try:
            return receive(self)
        except broadcast.GroupEnd:
            # the loader finished every step before the trigger: wait for it
            # here (training still consumes the queue), then die
            while not os.path.exists(after):
                time.sleep(0.05)
            _die(fault_dir)

    broadcast.DecodedReceiver.recv = announced_then_die


def _kill_in_checkpoint(fault_dir: Path, step: int) -> None:
    marker = f"/.tmp-ckpt-{step:09d}-"

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and marker in args[0] and args[0].endswith("/meta.json"):
            _die(fault_dir)

    sys.addaudithook(hook)


def main() -> None:
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    fault_dir = Path(os.environ["BA_FAULT_DIR"])
    fault_dir.mkdir(parents=True, exist_ok=True)
    (fault_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    fault = os.environ.get("BA_FAULT", "")
    if fault and rank == int(os.environ.get("BA_FAULT_RANK", "0")):
        if fault == "kill_in_broadcast":
            _kill_in_broadcast(fault_dir, os.environ["BA_FAULT_AFTER"])
        elif fault == "kill_in_checkpoint":
            _kill_in_checkpoint(fault_dir, int(os.environ["BA_FAULT_STEP"]))
        else:
            raise SystemExit(f"unknown BA_FAULT={fault!r}")
    from ba_dist import train
    sys.argv = ["ba-train"] + sys.argv[1:]
    train.run()


if __name__ == "__main__":
    main()
