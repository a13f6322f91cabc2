"""The ``python-mpi-bcast`` command: argparse and one call per subcommand.

Each command family is a module here that adds its own parsers next to its
``cmd_*`` (``packing``: pack; ``package``: inspect, verify, unpack; ``launch``:
run, info, clean; ``saved``: create, save, load, list, rm, activate; ``envs``:
relocate, migrate, shell-init, wheelhouse).

Expected failures are :class:`PmbError` and print one line,
``python-mpi-bcast: error: ...``, with exit status 1.  ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..support.errors import PmbError
from . import envs, launch, package, packing, report, saved


#: the subcommands, in the order ``--help`` lists them
ADDERS = (packing.add_pack, envs.add_relocate, package.add_inspect, package.add_verify,
          package.add_unpack, launch.add_info, launch.add_clean, envs.add_migrate,
          saved.add_create, saved.add_save, saved.add_load, saved.add_list, saved.add_rm,
          saved.add_activate, envs.add_shell_init, launch.add_run, envs.add_wheelhouse)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python-mpi-bcast",
                                description="Package Python environments and start them fast "
                                            "on many MPI ranks.")
    p.add_argument("--version", action="version", version=f"python-mpi-bcast {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return p


#: commands that make big temporaries; a rerun removes what a killed run left
SWEEPING = ("pack", "unpack", "relocate", "save", "load", "migrate", "run")


def _sweep(command: str) -> None:
    from ..support import leftovers
    leftovers.COMMAND = command
    if command not in SWEEPING:
        return
    for path, j in leftovers.sweep(command):
        print(f"python-mpi-bcast: removed {path}, left by a killed '{command}' "
              f"(pid {j.get('pid', '?')})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pip_args = []
    words = [w for w in argv if not w.startswith("-")]
    if words[:1] == ["run"]:
        # 'run [--with-dir] LAUNCHER...': a bare --with-dir takes no value (the line,
        # its own '--' included, is argparse's remainder)
        i = argv.index("run") + 1
        while i < len(argv) and argv[i].startswith("-"):
            if argv[i] == "--with-dir":
                argv[i] = "--with-dir="
            elif argv[i] in ("--keep", "--cache"):
                i += 1
            i += 1
    elif "--" in argv:  # 'wheelhouse add REQ -- PIP ARGS': the rest goes to pip
        i = argv.index("--")
        argv, pip_args = argv[:i], argv[i + 1:]
    a = parser.parse_args(argv)
    a.pip_args = pip_args
    report.install(a.debug)
    if not a.command:
        parser.print_help()
        return 2
    try:
        _sweep(a.command)
        return a.func(a)
    except PmbError as e:
        if a.debug:
            raise
        print(f"python-mpi-bcast: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python-mpi-bcast: interrupted", file=sys.stderr)
        return 130
