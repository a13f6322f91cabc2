"""``pack``: relocatable package files from an interpreter, a venv, a conda
environment or a plain directory."""

from __future__ import annotations

import argparse

from ..package.format import DEFAULT_LEVEL
from ..support.errors import PmbError


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


def add_pack(sub) -> None:
    pk = sub.add_parser("pack", help="pack an interpreter and/or a venv, or a conda env, into "
                                     "package files",
                        description="Pack a Python installation (--python) and/or a venv into "
                                    "relocatable NAME.tar.zst packages; a conda environment "
                                    "becomes one package holding its interpreter and packages.")
    pk.add_argument("venv", nargs="?", help="the venv to pack as an environment layer, or a "
                                            "conda environment (CONDA_PREFIX)")
    pk.add_argument("--python", nargs="?", const="", default=None, metavar="PREFIX",
                    help="also (or only) pack the base interpreter: a prefix, an executable or a "
                         "venv (default: the venv's base interpreter); '--python VENV' packs "
                         "that venv's interpreter only")
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
    pk.add_argument("--refuse-editable", action="store_true",
                    help="stop at an editable install (pip install -e) instead of packing a "
                         "copy of what it makes importable")
    pk.add_argument("--level", type=_level, default=DEFAULT_LEVEL,
                    help=f"zstd level (default {DEFAULT_LEVEL})")
    pk.add_argument("--threads", type=int, default=0, help="compression threads (default: all cores)")
    pk.add_argument("--shard-size", type=_size, default=8 << 20, metavar="SIZE",
                    help="unpacked bytes per shard (default 8M)")
    pk.add_argument("--no-split", dest="split", action="store_false",
                    help="keep every file whole, even one of many shards (default: a file of "
                         "more than 4 shards is split so several threads unpack it; a package "
                         "without split files is format version 2, which python-mpi launchers "
                         "older than format 3 read)")
    pk.add_argument("-f", "--force", action="store_true", help="replace existing packages")
    pk.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lines")
    pk.add_argument("--tmpdir", help="directory for the staging skeleton: directories and links, "
                         "no file data (default $TMPDIR)")
    pk.add_argument("--reuse", metavar="OLD.tar.zst",
                    help="a previous package of the same source: its shards whose files did "
                         "not change are copied instead of packed again (default with -f: the "
                         "package -f replaces)")
    pk.set_defaults(func=cmd_pack)


def cmd_pack(a) -> int:
    from ..packing.pack import pack
    python = a.python
    with_python = python is not None
    if python == "":
        python = None
    if a.venv is None and a.directory is None and not with_python:
        raise PmbError("nothing to pack: give a venv, --python [PREFIX] or --directory DIR")
    written = pack(venv=a.venv, python=python, with_python=with_python, directory=a.directory,
                   output_dir=a.output, name=a.name, excludes=a.exclude, slim=not a.keep_all,
                   level=a.level, threads=a.threads, shard_size=a.shard_size, force=a.force,
                   quiet=a.quiet, tmpdir=a.tmpdir, drop_unused=a.slim,
                   refuse_editable=a.refuse_editable, reuse=a.reuse, split=a.split)
    for path, m in written:
        print(f"{path}: {m.kind}, Python {m.python}, {m.files} files, "
              f"{m.unpacked_size / 1e6:.1f} MB unpacked, {len(m.shards) - 1} shards")
    return 0
