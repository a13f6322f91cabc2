"""The ``python-mpi-bcast`` command: argparse and one call per subcommand.

Expected failures are :class:`PmbError` and print one line,
``python-mpi-bcast: error: ...``, with exit status 1.  ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__
from .errors import PmbError

log = logging.getLogger("python_mpi_bcast")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 8M, 512k)") from None


def _level(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= v <= 22:
        raise argparse.ArgumentTypeError("zstd level must be between 1 and 22")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python-mpi-bcast",
                                description="Package Python environments and start them fast "
                                            "on many MPI ranks.")
    p.add_argument("--version", action="version", version=f"python-mpi-bcast {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pk = sub.add_parser("pack", help="pack an interpreter and/or a venv, or a conda env, into "
                                     "package files",
                        description="Pack a Python installation (--python) and/or a venv into "
                                    "relocatable NAME.tar.zst packages; a conda environment "
                                    "becomes one package holding its interpreter and packages.")
    pk.add_argument("venv", nargs="?", help="the venv to pack as an environment layer, or a "
                                            "conda environment (CONDA_PREFIX)")
    pk.add_argument("--python", nargs="?", const="", default=None, metavar="PREFIX",
                    help="also (or only) pack the base interpreter: a prefix, an executable or a "
                         "venv (default: the venv's base interpreter)")
    pk.add_argument("--directory", metavar="DIR", help="pack a plain directory instead")
    pk.add_argument("-o", "--output", default=".", metavar="DIR", help="where to write packages")
    pk.add_argument("-n", "--name", help="package name (default: python-X.Y / the venv's name)")
    pk.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="leave out paths matching PATTERN (repeatable)")
    pk.add_argument("--keep-all", action="store_true",
                    help="keep test/, idlelib, tkinter, ensurepip in the interpreter package")
    pk.add_argument("--slim", action="store_true",
                    help="leave out what jobs never use: tests inside installed packages (unless "
                         "their own code imports them), C headers, manuals and documents; strip "
                         "debug info from the interpreter")
    pk.add_argument("--level", type=_level, default=10, help="zstd level (default 10)")
    pk.add_argument("--threads", type=int, default=0, help="compression threads (default: all cores)")
    pk.add_argument("--shard-size", type=_size, default=8 << 20, metavar="SIZE",
                    help="unpacked bytes per shard (default 8M)")
    pk.add_argument("-f", "--force", action="store_true", help="replace existing packages")
    pk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pk.add_argument("--tmpdir", help="directory for the staging copy (default $TMPDIR)")

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

    ins = sub.add_parser("inspect", help="show a package's manifest")
    ins.add_argument("package")
    ins.add_argument("--json", action="store_true", help="print JSON")

    ver = sub.add_parser("verify", help="check a package's hashes and scan for leftover paths")
    ver.add_argument("package")

    up = sub.add_parser("unpack", help="unpack packages (in order) into one directory")
    up.add_argument("packages", nargs="+", metavar="PKG")
    up.add_argument("dest", metavar="DEST")
    up.add_argument("-f", "--force", action="store_true", help="replace DEST if it exists")

    sub.add_parser("info", help="show the launcher, the MPI it links and its start modes")

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

    cache_help = "the cache directory (default: $PYTHON_MPI_BCAST_CACHE, else " \
                 "~/.local/share/python-mpi-bcast/envs)"
    cr = sub.add_parser("create", help="create a venv in node-local scratch",
                        description="Create a venv in node-local scratch ($SLURM_TMPDIR in a "
                                    "job, else $TMPDIR) with python3.X from PATH.")
    cr.add_argument("version", nargs="?", help="3.X (default: python3 on PATH)")
    cr.add_argument("name", nargs="?", help="the venv's name (default: a generated one)")

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
    sv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    ld = sub.add_parser("load", help="unpack a saved environment into node-local scratch",
                        description="Unpack a saved environment into node-local scratch "
                                    "($SLURM_TMPDIR in a job, else $TMPDIR) and print how to "
                                    "activate it.")
    ld.add_argument("name")
    ld.add_argument("--as", dest="as_name", metavar="NEW", help="load under another name")
    ld.add_argument("--to", metavar="DIR", help="unpack into DIR instead")
    ld.add_argument("-f", "--force", action="store_true", help="replace a loaded copy")

    ls = sub.add_parser("list", help="list saved environments")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--all", action="store_true",
                    help="also show the packages 'run' made for its jobs (run-*, rundir-*)")

    rm = sub.add_parser("rm", help="remove a saved environment")
    rm.add_argument("name")

    ac = sub.add_parser("activate", help="print shell code that activates a loaded environment",
                        description="Print shell code for eval: eval \"$(python-mpi-bcast "
                                    "activate NAME)\" (fish: python-mpi-bcast activate NAME "
                                    "--shell fish | source).")
    ac.add_argument("name", nargs="?", help="a loaded environment's name or directory "
                                            "(default: list them)")
    ac.add_argument("--shell", choices=("bash", "zsh", "fish"), default=None)
    for c in (sv, ld, ls, rm):
        c.add_argument("--cache", metavar="DIR", help=cache_help)

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
    rn.add_argument("--cache", metavar="DIR", help=cache_help)
    rn.add_argument("-q", "--quiet", action="store_true", help="say nothing before the line "
                                                               "runs")
    rn.add_argument("line", nargs=argparse.REMAINDER, metavar="LAUNCHER...",
                    help="the launch line: srun|mpiexec|mpirun|aprun [OPTIONS] python SCRIPT ARGS")

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
    return p


def cmd_pack(a) -> int:
    from .pack import pack
    python = a.python
    with_python = python is not None
    if python == "":
        python = None
    if a.venv is None and a.directory is None and not with_python:
        raise PmbError("nothing to pack: give a venv, --python [PREFIX] or --directory DIR")
    written = pack(venv=a.venv, python=python, with_python=with_python, directory=a.directory,
                   output_dir=a.output, name=a.name, excludes=a.exclude, slim=not a.keep_all,
                   level=a.level, threads=a.threads, shard_size=a.shard_size, force=a.force,
                   quiet=a.quiet, tmpdir=a.tmpdir, drop_unused=a.slim)
    for path, m in written:
        print(f"{path}: {m.kind}, Python {m.python}, {m.files} files, "
              f"{m.unpacked_size / 1e6:.1f} MB unpacked, {len(m.shards) - 1} shards")
    return 0


def cmd_relocate(a) -> int:
    from .relocate_env import relocate
    res = relocate(a.src, a.output, maps=[tuple(m) for m in a.map], tar=a.tar, force=a.force,
                   use_config=not a.no_config)
    for w in res["warnings"]:
        log.warning("%s", w)
    print(f"{res['written']}: {res['kind']} relocated for {res['dest']}")
    return 0


def cmd_inspect(a) -> int:
    from .inspect import inspect
    m = inspect(a.package)
    if a.json:
        print(json.dumps(m.to_dict(), indent=2))
        return 0
    print(f"package:       {a.package}")
    for key in ("name", "kind", "python", "abi", "platform", "libpython", "executable",
                "site_dir", "files", "unpacked_size", "payload_size", "content_hash",
                "created_by"):
        value = getattr(m, key)
        if value != "":
            print(f"{key + ':':<14} {value}")
    print(f"{'shards:':<14} {len(m.shards) - 1} (+ tar end frame)")
    print(f"{'prefix files:':<14} {len(m.prefix_files)}")
    for p in m.prefix_files:
        print(f"  {p.mode:<6} {p.path}")
    return 0


def cmd_verify(a) -> int:
    from .inspect import verify
    from .pkgformat import read_manifest
    m = read_manifest(a.package)[0]
    res = verify(a.package, m.sources.split(":") if m.sources else [])
    if res["leftovers"]:
        for name in res["leftovers"][:20]:
            print(f"leftover source path in: {name}")
        raise PmbError(f"{a.package}: {len(res['leftovers'])} files still refer to the "
                       f"source location ({m.sources}); repack with this version")
    if res["compiled_in"]:
        print(f"{len(res['compiled_in'])} binary file(s) keep a compiled-in path of the source "
              f"as a fallback (not used when relocated): {', '.join(res['compiled_in'][:5])}")
    print(f"{a.package}: OK ({res['files']} files, {res['unpacked_size']} bytes, "
          f"{len(m.shards) - 1} shards, hash {m.content_hash[:16]})")
    return 0


def cmd_unpack(a) -> int:
    from .unpack import unpack
    unpack(a.packages, a.dest, force=a.force)
    print(a.dest)
    return 0


def cmd_info(a) -> int:
    from .info import info
    for key, value in info().items():
        print(f"{key + ':':<16} {value}")
    return 0


def cmd_clean(a) -> int:
    from .clean import clean
    from .leftovers import sweep
    from .paths import node_directory
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


def cmd_create(a) -> int:
    from .cache import create
    dest = create(a.version, a.name)
    print(dest)
    print(f"activate with: source {dest}/bin/activate", file=sys.stderr)
    return 0


def cmd_save(a) -> int:
    from .cache import save
    from .paths import cache_dir
    cache = cache_dir(a.cache)
    rec = save(cache, a.name, a.venv, force=a.force, quiet=a.quiet)
    print(f"saved {rec['source']} as '{a.name}' in {cache} ({rec['size'] / 1e6:.1f} MB, "
          f"Python {rec['python']}, {len(rec['distributions'])} packages)")
    return 0


def cmd_load(a) -> int:
    from .cache import load
    from .paths import cache_dir
    import shlex
    dest = load(cache_dir(a.cache), a.name, a.as_name, a.to, force=a.force)
    print(dest)
    print(f"activate with: source {shlex.quote(dest + '/bin/activate')}   (fish: source "
          f"{shlex.quote(dest + '/bin/activate.fish')})", file=sys.stderr)
    return 0


def cmd_list(a) -> int:
    from .cache import came_from, entries, is_dirty
    from .paths import cache_dir
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
        if active and came_from(active, cache, e["name"]) and is_dirty(active):
            mark += " (loaded copy changed since saved: save again to keep it)"
        pk = "?" if e["packages"] is None else str(e["packages"])
        print(f"{e['name']:<20} {e['size'] / 1e6:8.1f}M {e['python']:<7} {pk:>8}  "
              f"{e['saved']:<24} {e['source']}{mark}")
    if hidden:
        print(f"({hidden} package(s) that 'python-mpi-bcast run' made for its jobs not shown; "
              f"--all shows them)")
    return 0


def cmd_rm(a) -> int:
    from .cache import remove
    from .paths import cache_dir
    print(f"removed {remove(cache_dir(a.cache), a.name)}")
    return 0


def cmd_activate(a) -> int:
    import os
    from .cache import activation, loaded_here, scratch_dir
    if not a.name:
        here = loaded_here()
        if not here:
            print(f"no loaded environments in {scratch_dir()}", file=sys.stderr)
        for t in here:
            print(os.path.basename(t))
        return 0
    shell = a.shell or ("fish" if os.path.basename(os.environ.get("SHELL", "")) == "fish"
                        else "bash")
    sys.stdout.write(activation(a.name, shell))
    return 0


def _choose(valid, a) -> list:
    if a.names:
        by_name = {f.name: f for f in valid}
        unknown = [n for n in a.names if n not in by_name]
        if unknown:
            raise PmbError(f"no valid environment named {', '.join(unknown)} in {a.directory} "
                           f"(valid: {', '.join(by_name) or 'none'})")
        return [by_name[n] for n in a.names]
    if a.all:
        return list(valid)
    if not sys.stdin.isatty():
        raise PmbError("name the environments to migrate, or pass --all (no terminal to ask on)")
    answer = input("Select environments to migrate (comma-separated numbers or names, "
                   "'all'): ").strip()
    if answer.lower() == "all":
        return list(valid)
    chosen = []
    for item in (x.strip() for x in answer.split(",") if x.strip()):
        match = [f for i, f in enumerate(valid, 1) if item in (str(i), f.name)]
        if not match:
            raise PmbError(f"{item!r} is not one of the listed environments")
        chosen.append(match[0])
    return chosen


def cmd_migrate(a) -> int:
    import os
    from . import migrate
    from .paths import data_home
    found = migrate.scan(a.directory)
    for f in found:
        print(f"{'valid:' if not f.invalid else 'INVALID:':<9} {f.name} ({f.kind or '?'})"
              + (f": {f.invalid}" if f.invalid else ""))
    valid = [f for f in found if not f.invalid]
    if not valid:
        raise PmbError(f"no valid environment in {a.directory}")
    for i, f in enumerate(valid, 1):
        print(f"{i}. {f.name} ({f.path})")
    chosen = _choose(valid, a)
    failed, moves, kept = [], [], []
    for f in chosen:
        dest = migrate.default_destination(f, a.to)
        spec_dir = os.path.join(a.specs or os.path.join(data_home(), "specs"), f.name)
        print(f"== {f.name}: {f.path} -> {dest}")
        try:
            # with --update-rc a source goes only once no start-up file names it
            migrate.migrate_one(f, dest, spec_dir, a.keep or a.update_rc, print)
            moves.append((f, dest))
        except PmbError as e:
            print(f"python-mpi-bcast: error: {e}", file=sys.stderr)
            failed.append(f.name)
    if a.update_rc and moves:
        home = os.path.expanduser("~")
        pairs = [(old, dest) for f, dest in moves for old in {f.path, os.path.realpath(f.path)}]
        changed = migrate.update_rc(home, pairs, print)
        print(f"updated {', '.join(changed)}" if changed else "no shell start-up file named "
              "the old locations")
        for f, dest in moves:
            still = migrate.rc_naming(home, sorted({f.path, os.path.realpath(f.path)}))
            if still:
                print(f"python-mpi-bcast: error: {f.name}: {still[0]} still names {f.path}, so "
                      f"the source was kept (the copy is {dest}); edit that file, then remove "
                      f"the source", file=sys.stderr)
                kept.append(f.name)
            elif not a.keep:
                migrate.remove_source(f, print)
    if not a.update_rc:
        for f, dest in moves:
            still = migrate.rc_naming(os.path.expanduser("~"),
                                      sorted({f.path, os.path.realpath(f.path)}))
            if still:
                print(f"note: {', '.join(still)} still name {f.path}; change that to {dest} "
                      f"(--update-rc does it, after a backup)")
    problems = []
    if failed:
        problems.append(f"not migrated: {', '.join(failed)} (sources kept)")
    if kept:
        problems.append(f"copied, sources kept while a start-up file names them: "
                        f"{', '.join(kept)}")
    if problems:
        raise PmbError("; ".join(problems))
    return 0


def cmd_shell_init(a) -> int:
    import os
    from .paths import wheelhouse_dir
    from .shellinit import SHELLS, shell_code
    shell = a.shell or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in SHELLS:
        shell = "bash"
    from .paths import compute_hosts
    sys.stdout.write(shell_code(shell, wheelhouse_dir(a.wheelhouse),
                                compute_hosts() + a.compute_host))
    return 0


def cmd_run(a) -> int:
    from .run import run
    if not a.line:
        raise PmbError("give a launch line: python-mpi-bcast run srun -n 4 python SCRIPT ARGS")
    say = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr))
    return run(a.line, with_dir=a.with_dir, repack=a.repack, keep=a.keep, cache=a.cache,
               dry_run=a.dry_run, say=say)


def cmd_wheelhouse(a) -> int:
    import os
    import shutil
    from . import wheelhouse
    from .paths import wheelhouse_dir
    where = wheelhouse_dir(a.wheelhouse)
    if a.wh_command == "path":
        print(where)
    elif a.wh_command == "list":
        for name, size in wheelhouse.listing(where):
            print(f"{size / 1e6:9.1f} MB  {name}")
    elif a.wh_command == "add":
        python = a.python
        if python is None:
            venv = os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX")
            cand = os.path.join(venv, "bin", "python3") if venv else None
            python = cand if cand and os.path.exists(cand) else (shutil.which("python3")
                                                                 or sys.executable)
        added = wheelhouse.add(where, a.requirements, a.requirement, python, a.pip_args)
        for name in added:
            print(f"added {name}")
        print(f"{where}: {len(wheelhouse.listing(where))} wheels")
    else:
        raise PmbError("wheelhouse: give an action: add, list or path")
    return 0


COMMANDS = {"pack": cmd_pack, "inspect": cmd_inspect, "verify": cmd_verify, "unpack": cmd_unpack,
            "relocate": cmd_relocate, "info": cmd_info, "clean": cmd_clean,
            "create": cmd_create, "save": cmd_save, "load": cmd_load, "list": cmd_list,
            "rm": cmd_rm, "activate": cmd_activate, "shell-init": cmd_shell_init,
            "wheelhouse": cmd_wheelhouse, "migrate": cmd_migrate, "run": cmd_run}


#: commands that make big temporaries; a rerun removes what a killed run left
SWEEPING = ("pack", "unpack", "relocate", "save", "load", "migrate", "run")


def _sweep(command: str) -> None:
    from . import leftovers
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
    logging.basicConfig(format="python-mpi-bcast: %(levelname)s: %(message)s",
                        level=logging.DEBUG if a.debug else logging.INFO)
    if not a.command:
        parser.print_help()
        return 2
    try:
        _sweep(a.command)
        return COMMANDS[a.command](a)
    except PmbError as e:
        if a.debug:
            raise
        print(f"python-mpi-bcast: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python-mpi-bcast: interrupted", file=sys.stderr)
        return 130
