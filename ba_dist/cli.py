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

__all__ = ["HELP_ARGS", "help_text", "parse", "run"]

HELP_ARGS = ("--help", "-h", "-?", "--helpshort")


def define_flags(specs: Sequence[tuple]) -> None:
    """Defines the ``(name, kind, default, help)`` flags not defined yet (``kind``: string, integer, bool, ...).

    Commands call it when they run, not on import, so importing one command's
    functions next to another command's flags cannot clash.
    """
    for name, kind, default, help_ in specs:
        if name not in flags.FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_)


def help_text(usage: str, flag_names: Sequence[str],
              flag_values: Optional[flags.FlagValues] = None) -> str:
    """``usage`` (what it does + an example) followed by one paragraph per flag."""
    lines = [textwrap.dedent(usage).strip(), "", "flags:"]
    for name in flag_names:
        f = (flag_values or flags.FLAGS)[name]
        default = "" if f.default_unparsed is None else f" (default: {f.default_unparsed})"
        lines.append(f"  --{name}: {f.help}{default}")
    return "\n".join(lines) + "\n"


def parse(flag_values: flags.FlagValues, argv: Sequence[str]) -> list:
    """Parse ``argv`` (``argv[0]`` is the program) into ``flag_values``, starting from the defaults.

    For a command with its own ``FlagValues``: it can be imported next to
    ba-train's global ``--config``/``--workdir`` and called more than once in
    one process (tests do). Returns the positional arguments (and everything
    after ``--``) with ``argv[0]`` first.

    Raises:
      absl.flags.Error: an unknown flag or a bad value; the message names it.
    """
    flag_values.unparse_flags()
    return flag_values(list(argv))


def run(main: Callable[[list], Optional[int]], *, usage: str, flag_names: Sequence[str],
        argv: Optional[Sequence[str]] = None, flag_values: Optional[flags.FlagValues] = None) -> None:
    """``absl.app.run(main)``; ``--help`` prints :func:`help_text` and exits 0.

    With ``flag_values`` (a command's own ``FlagValues``), ``main`` gets the
    unparsed ``argv``, parses it with :func:`parse` and returns the exit code.
    """
    args = list(sys.argv if argv is None else argv)
    if any(a in HELP_ARGS for a in args[1:]):
        sys.stdout.write(help_text(usage, flag_names, flag_values))
        sys.stdout.flush()
        sys.exit(0)
    if flag_values is not None:
        sys.exit(main(args))
    app.run(main, argv=args)
