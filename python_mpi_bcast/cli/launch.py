"""``run``, ``info``, ``clean``: start jobs with the launcher, show it, and
clean up after killed stagings."""

from __future__ import annotations

import argparse

from ..support.errors import PmbError
from .packing import DEFAULT_LEVEL, _level
from .saved import CACHE_HELP


def add_info(sub) -> None:
    sub.add_parser("info", help="show the launcher, the MPI it links and its start modes"
                   ).set_defaults(func=cmd_info)


def add_clean(sub) -> None:
    cl = sub.add_parser("clean", help="remove leftovers of staging from a node directory",
                        description="Remove temporary directories left by killed stagings and, "
                                    "with --all or --older-than, staged trees.  Run it once per "
                                    "node, e.g. 'srun --ntasks-per-node=1 python-mpi-bcast clean "
                                    "--all'.")
    cl.add_argument("directory", nargs="?",
                    help="node directory (default: PYTHON_MPI_CHROOT, or its default)")
    cl.add_argument("--all", action="store_true", help="also remove staged trees")
    cl.add_argument("--older-than", type=float, metavar="HOURS",
                    help="also remove staged trees not modified for HOURS")
    cl.add_argument("-n", "--dry-run", action="store_true", help="only list what would go")
    cl.set_defaults(func=cmd_clean)


def add_run(sub) -> None:
    rn = sub.add_parser("run", help="pack the active environment on demand and run a "
                                    "launch line with python replaced by python-mpi",
                        description="Pack the environment of the line's python (a venv or "
                                    "conda env, with its interpreter) into the cache unless an "
                                    "identical one is there (keyed by the installed "
                                    "distributions and their RECORDs, .pth files, bin/ and "
                                    "the interpreter), then run the line with python replaced "
                                    "by python-mpi and PYTHON_MPI_PKGROOT/PYTHON_MPI_PACKAGES "
                                    "exported.  E.g. python-mpi-bcast run srun -n 64 python "
                                    "x.py.  Its exit status is the line's.")
    rn.add_argument("--with-dir", metavar="DIR", default=None,
                    help="--with-dir or --with-dir=DIR: also stage DIR (default: the script's "
                         "directory) and run the script from the staged copy")
    rn.add_argument("--repack", action="store_true", help="pack even if the cache has it")
    rn.add_argument("--keep", type=int, default=3, metavar="N",
                    help="keep the newest N packages of this environment (default 3); "
                         "older ones are removed unless a running job uses them")
    rn.add_argument("--dry-run", action="store_true",
                    help="print the rewritten line and the exports; pack and run nothing")
    rn.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    rn.add_argument("--level", type=_level, default=DEFAULT_LEVEL,
                    help=f"zstd level when it packs (default {DEFAULT_LEVEL}; a cached "
                         f"package is used whatever its level)")
    rn.add_argument("-q", "--quiet", action="store_true", help="say nothing before the line "
                                                               "runs")
    rn.add_argument("line", nargs=argparse.REMAINDER, metavar="LAUNCHER...",
                    help="the launch line: srun|mpiexec|mpirun|aprun [OPTIONS] python SCRIPT ARGS")
    rn.set_defaults(func=cmd_run)


def cmd_info(a) -> int:
    from ..launch.info import info
    for key, value in info().items():
        print(f"{key + ':':<16} {value}")
    return 0


def cmd_clean(a) -> int:
    from ..launch.clean import clean
    from ..support.leftovers import sweep
    from ..support.paths import node_directory
    for path, j in sweep(dry_run=a.dry_run):
        print(("would remove " if a.dry_run else "removed ") + path
              + f" (left by a killed '{j.get('command', '?')}', pid {j.get('pid', '?')})")
    directory = a.directory or node_directory()
    kept: list[str] = []
    for path in clean(directory, all_trees=a.all, older_than_hours=a.older_than,
                      dry_run=a.dry_run, kept=kept):
        print(("would remove " if a.dry_run else "removed ") + path)
    for what in kept:
        print("kept " + what)
    return 0


def cmd_run(a) -> int:
    from ..launch.run import launch, plan, shown
    from ..support import report
    if not a.line:
        raise PmbError("give a launch line: python-mpi-bcast run srun -n 4 python SCRIPT ARGS")
    report.quiet(a.quiet)
    ll, exports, fds = plan(a.line, with_dir=a.with_dir, repack=a.repack, keep=a.keep,
                            cache=a.cache, dry_run=a.dry_run, quiet=a.quiet, level=a.level)
    print(f"{'would run' if a.dry_run else 'running'}: {shown(ll, exports)}", flush=True)
    if not a.dry_run:
        launch(ll, exports, fds)
    return 0
