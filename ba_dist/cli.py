"""The one way a ``ba-*`` console script starts: absl flags with a ``--help`` that helps.

absl's own ``--help`` exits 1 and, for flags defined outside ``__main__`` (every
console script), shows only "Try --helpfull". :func:`run` answers ``--help`` /
``-h`` with what the command does, one example and its own flags, and exits 0;
everything else goes to ``absl.app.run``.

    from ba_dist import cli
    flags.DEFINE_string("workdir", None, "Run directory.")

    def main(argv): ...

    def run():
        cli.run(main, usage=__doc__, flag_names=["workdir"])
"""
from __future__ import annotations

import sys
import textwrap
from typing import Callable, Optional, Sequence

from absl import app, flags

__all__ = ["HELP_ARGS", "help_text", "run"]

HELP_ARGS = ("--help", "-h", "-?", "--helpshort")


def help_text(usage: str, flag_names: Sequence[str]) -> str:
    """``usage`` (what it does + an example) followed by one paragraph per flag."""
    lines = [textwrap.dedent(usage).strip(), "", "flags:"]
    for name in flag_names:
        f = flags.FLAGS[name]
        default = "" if f.default is None else f" (default: {f.default})"
        lines.append(f"  --{name}: {f.help}{default}")
    return "\n".join(lines) + "\n"


def run(main: Callable[[list], Optional[int]], *, usage: str, flag_names: Sequence[str],
        argv: Optional[Sequence[str]] = None) -> None:
    """``absl.app.run(main)``; ``--help`` prints :func:`help_text` and exits 0."""
    args = list(sys.argv if argv is None else argv)
    if any(a in HELP_ARGS for a in args[1:]):
        sys.stdout.write(help_text(usage, flag_names))
        sys.stdout.flush()
        sys.exit(0)
    app.run(main, argv=args)
