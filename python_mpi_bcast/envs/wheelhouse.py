"""``python-mpi-bcast wheelhouse``: a directory of wheels next to the cache,
filled on a login node (which has internet) so that compute nodes install
offline (see :mod:`shellinit`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ..source import pyinfo
from ..support.errors import PmbError


def _wheels(directory: str) -> set[str]:
    try:
        return {f for f in os.listdir(directory) if f.endswith(".whl")}
    except FileNotFoundError:
        return set()


def default_python() -> str:
    """The interpreter whose pip fills the wheelhouse when none is named:
    python3 of the active environment (VIRTUAL_ENV, else CONDA_PREFIX), else
    python3 on PATH, else this one."""
    venv = os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX")
    if venv:
        try:
            return pyinfo.interpreter_of(venv)
        except PmbError:
            pass
    return shutil.which("python3") or sys.executable


def add(wheelhouse: str, requirements: list[str], requirement_files: list[str],
        python: str, pip_args: list[str]) -> list[str]:
    """Build or download wheels for ``requirements`` (and their dependencies)
    into ``wheelhouse`` with ``python -m pip wheel``, so that sdists are
    built here once and compute nodes need no compiler.  ``python`` should
    be the interpreter of the environment that will install them (its
    version and platform pick the wheels).  Returns the new wheel files."""
    if not requirements and not requirement_files:
        raise PmbError("nothing to add: give requirements (e.g. 'numpy scipy') or -r FILE")
    for f in requirement_files:
        if not os.path.isfile(f):
            raise PmbError(f"{f}: no such requirements file")
    try:
        os.makedirs(wheelhouse, exist_ok=True)
    except OSError as e:
        raise PmbError(f"cannot create the wheelhouse {wheelhouse}: {e.strerror}") from None
    before = _wheels(wheelhouse)
    cmd = [python, "-m", "pip", "wheel", "--wheel-dir", wheelhouse, "--find-links", wheelhouse]
    for f in requirement_files:
        cmd += ["-r", f]
    cmd += list(requirements) + list(pip_args)
    try:
        r = subprocess.run(cmd, check=False)
    except OSError as e:
        raise PmbError(f"cannot run {python}: {e.strerror}") from None
    if r.returncode != 0:
        raise PmbError(f"'pip wheel' failed (exit {r.returncode}); see its output above. The "
                       f"wheelhouse keeps what was already there")
    return sorted(_wheels(wheelhouse) - before)


def listing(wheelhouse: str) -> list[tuple[str, int]]:
    if not os.path.isdir(wheelhouse):
        raise PmbError(f"no wheelhouse at {wheelhouse} yet; fill it with 'python-mpi-bcast "
                       f"wheelhouse add PACKAGE...' on a login node")
    return [(f, os.path.getsize(os.path.join(wheelhouse, f))) for f in sorted(_wheels(wheelhouse))]
