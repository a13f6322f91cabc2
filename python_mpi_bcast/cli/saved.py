"""``create``, ``save``, ``load``, ``list``, ``rm``, ``activate``: saved
environments."""

from __future__ import annotations

import json
import sys

from ..support.report import say
from .packing import DEFAULT_LEVEL, _level

CACHE_HELP = "the cache directory (default: $PYTHON_MPI_BCAST_CACHE, else " \
             "~/.local/share/python-mpi-bcast/envs)"


def add_create(sub) -> None:
    cr = sub.add_parser("create", help="create a venv in node-local scratch",
                        description="Create a venv in node-local scratch ($SLURM_TMPDIR in a "
                                    "job, else $TMPDIR) with python3.X from PATH.")
    cr.add_argument("version", nargs="?", help="3.X (default: python3 on PATH)")
    cr.add_argument("name", nargs="?", help="the venv's name (default: a generated one)")
    cr.set_defaults(func=cmd_create)


def add_save(sub) -> None:
    sv = sub.add_parser("save", help="save the active environment (with its interpreter) "
                                     "into the cache",
                        description="Pack the active environment (venv, conda env or one made "
                                    "by 'load') with its interpreter into CACHE/NAME.tar.zst, "
                                    "atomically: a failed or interrupted save leaves the "
                                    "previous entry as it was.  The cache is a package root: "
                                    "PYTHON_MPI_PKGROOT=CACHE PYTHON_MPI_PACKAGES=NAME.tar.zst "
                                    "launches it with python-mpi.")
    sv.add_argument("name")
    sv.add_argument("-f", "--force", action="store_true", help="replace an existing entry")
    sv.add_argument("--venv", metavar="PATH", help="save this environment instead of the active one")
    sv.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lines")
    sv.add_argument("--level", type=_level, default=DEFAULT_LEVEL,
                    help=f"zstd level (default {DEFAULT_LEVEL})")
    sv.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    sv.set_defaults(func=cmd_save)


def add_load(sub) -> None:
    ld = sub.add_parser("load", help="unpack a saved environment into node-local scratch",
                        description="Unpack a saved environment into node-local scratch "
                                    "($SLURM_TMPDIR in a job, else $TMPDIR) and print how to "
                                    "activate it.")
    ld.add_argument("name")
    ld.add_argument("--as", dest="as_name", metavar="NEW", help="load under another name")
    ld.add_argument("--to", metavar="DIR", help="unpack into DIR instead")
    ld.add_argument("-f", "--force", action="store_true", help="replace a loaded copy")
    ld.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    ld.set_defaults(func=cmd_load)


def add_list(sub) -> None:
    ls = sub.add_parser("list", help="list saved environments")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--all", action="store_true",
                    help="also show the packages 'run' made for its jobs (run-*, rundir-*)")
    ls.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    ls.set_defaults(func=cmd_list)


def add_rm(sub) -> None:
    rm = sub.add_parser("rm", help="remove a saved environment")
    rm.add_argument("name")
    rm.add_argument("--cache", metavar="DIR", help=CACHE_HELP)
    rm.set_defaults(func=cmd_rm)


def add_activate(sub) -> None:
    ac = sub.add_parser("activate", help="print shell code that activates a loaded environment",
                        description="Print shell code for eval: eval \"$(python-mpi-bcast "
                                    "activate NAME)\" (fish: python-mpi-bcast activate NAME "
                                    "--shell fish | source).")
    ac.add_argument("name", nargs="?", help="a loaded environment's name or directory "
                                            "(default: list them)")
    ac.add_argument("--shell", choices=("bash", "zsh", "fish"), default=None)
    ac.set_defaults(func=cmd_activate)


def cmd_create(a) -> int:
    from ..envs.saved import create
    dest = create(a.version, a.name)
    print(dest)
    say(f"activate with: source {dest}/bin/activate")
    return 0


def cmd_save(a) -> int:
    from ..envs.saved import save
    from ..support.paths import cache_dir
    cache = cache_dir(a.cache)
    rec = save(cache, a.name, a.venv, force=a.force, quiet=a.quiet, level=a.level)
    print(f"saved {rec['source']} as '{a.name}' in {cache} ({rec['size'] / 1e6:.1f} MB, "
          f"Python {rec['python']}, {len(rec['distributions'])} packages)")
    return 0


def cmd_load(a) -> int:
    from ..envs.saved import load
    from ..support.paths import cache_dir
    import shlex
    dest = load(cache_dir(a.cache), a.name, a.as_name, a.to, force=a.force)
    print(dest)
    say(f"activate with: source {shlex.quote(dest + '/bin/activate')}   (fish: source "
        f"{shlex.quote(dest + '/bin/activate.fish')})")
    return 0


def cmd_list(a) -> int:
    from ..envs.saved import changed_since_saved, entries
    from ..support.paths import cache_dir
    import os
    cache = cache_dir(a.cache)
    every = entries(cache)
    es = [e for e in every if a.all or "made_by" not in e]
    hidden = len(every) - len(es)
    active = os.environ.get("PYTHON_MPI_BCAST_LOADED")
    if a.json:
        print(json.dumps(es, indent=2))
        return 0
    if not es:
        print(f"no saved environments in {cache}")
    else:
        print(f"{'name':<20} {'size':>9} {'python':<7} {'packages':>8}  {'saved':<24} source")
    for e in es:
        if "error" in e:
            print(f"{e['name']:<20} damaged: {e['error']}")
            continue
        mark = " (made by 'run' for its jobs)" if "made_by" in e else ""
        if changed_since_saved(active, cache, e["name"]):
            mark += " (loaded copy changed since saved: save again to keep it)"
        pk = "?" if e["packages"] is None else str(e["packages"])
        print(f"{e['name']:<20} {e['size'] / 1e6:8.1f}M {e['python']:<7} {pk:>8}  "
              f"{e['saved']:<24} {e['source']}{mark}")
    if hidden:
        print(f"({hidden} package(s) that 'python-mpi-bcast run' made for its jobs not shown; "
              f"--all shows them)")
    return 0


def cmd_rm(a) -> int:
    from ..envs.saved import remove
    from ..support.paths import cache_dir
    print(f"removed {remove(cache_dir(a.cache), a.name)}")
    return 0


def cmd_activate(a) -> int:
    import os
    from ..envs.saved import activation, loaded_here, scratch_dir
    if not a.name:
        here = loaded_here()
        if not here:
            say(f"no loaded environments in {scratch_dir()}")
        for t in here:
            print(os.path.basename(t))
        return 0
    shell = a.shell or ("fish" if os.path.basename(os.environ.get("SHELL", "")) == "fish"
                        else "bash")
    sys.stdout.write(activation(a.name, shell))
    return 0
