"""``relocate``, ``migrate``, ``shell-init``, ``wheelhouse``: move
environments and make pip work offline on compute nodes."""

from __future__ import annotations

import sys

from ..support.errors import PmbError
from ..support.report import log
from . import report


def add_relocate(sub) -> None:
    rl = sub.add_parser("relocate", help="copy a venv or conda env to a new location with every "
                                         "reference rewritten",
                        description="Copy a venv or conda environment to DEST with every path "
                                    "that names SRC rewritten (text files, shebangs, activate "
                                    "scripts, pyvenv.cfg, .pth, RECORD, RPATHs, conda's recorded "
                                    "prefix files), check that no old path is left, then put it "
                                    "in place atomically.  SRC is not modified.  Site aliases "
                                    "come from the config file's [aliases] table.")
    rl.add_argument("src", metavar="SRC", help="the venv or conda environment to copy")
    rl.add_argument("-o", "--output", required=True, metavar="DEST",
                    help="where the environment will live")
    rl.add_argument("--map", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                    help="also rewrite the absolute path OLD to NEW (repeatable; e.g. a data "
                         "directory that moved with the environment)")
    rl.add_argument("--tar", metavar="FILE",
                    help="write the relocated environment to this archive (.tar, .tar.gz, "
                         ".tar.xz, .tar.zst) instead of creating DEST")
    rl.add_argument("-f", "--force", action="store_true",
                    help="replace DEST (or FILE) if it exists")
    rl.add_argument("--no-config", action="store_true",
                    help="ignore the config file's site aliases")
    rl.set_defaults(func=cmd_relocate)


def add_migrate(sub) -> None:
    mg = sub.add_parser("migrate", help="move environments to another storage area, "
                                        "removing each source only after its copy checks out",
                        description="Find the venvs and conda envs in DIR, export a spec of "
                                    "each (requirements.txt; environment.yml for conda envs), "
                                    "relocate it to DEST, compare old and new (distributions, "
                                    "files and contents, imports) and only then remove the old "
                                    "one.  Any difference keeps the source and shows what "
                                    "differs.")
    mg.add_argument("-d", "--directory", required=True, metavar="DIR",
                    help="the directory holding the environments (e.g. $SCRATCH/envs)")
    mg.add_argument("names", nargs="*", metavar="NAME", help="environments to migrate")
    mg.add_argument("--all", action="store_true", help="migrate every valid environment")
    mg.add_argument("--to", metavar="DEST", help="destination directory (default: "
                    "~/.conda/envs for conda envs, ~/venvs for venvs)")
    mg.add_argument("--keep", action="store_true", help="keep the source after a good copy")
    mg.add_argument("--update-rc", action="store_true",
                    help="rewrite the old locations in your shell start-up files (after a "
                         "backup; the diff is shown)")
    mg.add_argument("--specs", metavar="DIR", help="where specs go (default: "
                    "~/.local/share/python-mpi-bcast/specs/NAME)")
    mg.set_defaults(func=cmd_migrate)


def add_shell_init(sub) -> None:
    si = sub.add_parser("shell-init", help="print shell code that makes pip work offline on "
                                           "compute nodes",
                        description="Print shell code for your start-up file that wraps pip: in "
                                    "a batch job (SLURM_JOB_ID, PBS_JOBID, LSB_JOBID, FLUX_JOB_ID "
                                    "or COBALT_JOBID set) or on a host matching --compute-host, "
                                    "'pip install/download/wheel' run with --no-index "
                                    "--find-links WHEELHOUSE; elsewhere 'pip download' and 'pip "
                                    "wheel' fill the wheelhouse and 'pip install' also looks "
                                    "there.  PYTHON_MPI_BCAST_NODE=compute|login overrides the "
                                    "detection.  Use: python-mpi-bcast shell-init bash >> "
                                    "~/.bashrc (fish: >> ~/.config/fish/config.fish).")
    si.add_argument("shell", nargs="?", choices=("bash", "zsh", "fish"),
                    help="default: the basename of $SHELL, else bash")
    si.add_argument("--wheelhouse", metavar="DIR",
                    help="default: $PYTHON_MPI_BCAST_WHEELHOUSE, else next to the cache")
    si.add_argument("--compute-host", action="append", default=[], metavar="GLOB",
                    help="host names that are compute nodes even outside a job (repeatable), "
                         "e.g. 'nid*'")
    si.set_defaults(func=cmd_shell_init)


def add_wheelhouse(sub) -> None:
    wh = sub.add_parser("wheelhouse", help="manage the wheels compute nodes install from")
    whs = wh.add_subparsers(dest="wh_command", metavar="ACTION")
    wha = whs.add_parser("add", help="build or download wheels (and their dependencies) into "
                                     "the wheelhouse, on a login node",
                         description="Run 'pip wheel' for the requirements into the wheelhouse "
                                     "(sdists are built once, here).  Arguments after '--' go to "
                                     "pip, e.g. '-- --no-binary :all:'.")
    wha.add_argument("requirements", nargs="*", metavar="REQ")
    wha.add_argument("-r", "--requirement", action="append", default=[], metavar="FILE",
                     help="a requirements file (repeatable)")
    wha.add_argument("--python", default=None, metavar="PYTHON",
                     help="the interpreter whose pip runs and whose version/platform the wheels "
                          "are for (default: python3 of the active environment, else this one)")
    for w in (wha, whs.add_parser("list", help="list the wheels"),
              whs.add_parser("path", help="print the wheelhouse directory")):
        w.add_argument("--wheelhouse", metavar="DIR",
                       help="default: $PYTHON_MPI_BCAST_WHEELHOUSE, else next to the cache")
    wh.set_defaults(func=cmd_wheelhouse)


def cmd_relocate(a) -> int:
    from ..envs.relocate import relocate
    res = relocate(a.src, a.output, maps=[tuple(m) for m in a.map], tar=a.tar, force=a.force,
                   use_config=not a.no_config)
    for w in res.warnings:
        log.warning("%s", w)
    print(f"{res.written}: {res.kind} relocated for {res.dest}")
    return 0


def cmd_migrate(a) -> int:
    from ..envs import migrate
    found = migrate.scan(a.directory)
    for f in found:
        print(f"{'valid:' if not f.invalid else 'INVALID:':<9} {f.name} ({f.kind or '?'})"
              + (f": {f.invalid}" if f.invalid else ""))
    valid = [f for f in found if not f.invalid]
    if not valid:
        raise PmbError(f"no valid environment in {a.directory}")
    for i, f in enumerate(valid, 1):
        print(f"{i}. {f.name} ({f.path})")
    chosen = migrate.choose(valid, a.names, a.all, a.directory,
                            input if sys.stdin.isatty() else None)
    report.steps_to_stdout()  # what it did, step by step, is migrate's answer
    migrate.migrate_chosen(chosen, a.to, a.specs, a.keep, a.update_rc)
    return 0


def cmd_shell_init(a) -> int:
    import os
    from ..support.paths import wheelhouse_dir
    from ..envs.shellinit import SHELLS, shell_code
    shell = a.shell or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in SHELLS:
        shell = "bash"
    from ..support.paths import compute_hosts
    sys.stdout.write(shell_code(shell, wheelhouse_dir(a.wheelhouse),
                                compute_hosts() + a.compute_host))
    return 0


def cmd_wheelhouse(a) -> int:
    from ..envs import wheelhouse
    from ..support.paths import wheelhouse_dir
    if a.wh_command not in ("add", "list", "path"):  # no action: no --wheelhouse either
        raise PmbError("wheelhouse: give an action: add, list or path")
    where = wheelhouse_dir(a.wheelhouse)
    if a.wh_command == "path":
        print(where)
    elif a.wh_command == "list":
        for name, size in wheelhouse.listing(where):
            print(f"{size / 1e6:9.1f} MB  {name}")
    elif a.wh_command == "add":
        python = a.python if a.python is not None else wheelhouse.default_python()
        added = wheelhouse.add(where, a.requirements, a.requirement, python, a.pip_args)
        for name in added:
            print(f"added {name}")
        print(f"{where}: {len(wheelhouse.listing(where))} wheels")
    return 0
