"""``python-mpi-bcast info``: where the launcher is, which MPI it links, and
which start modes it offers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from . import __version__
from .errors import PmbError


def launcher_path() -> str:
    """The installed ``python-mpi``: next to this Python first, then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "python-mpi")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("python-mpi")
    if found:
        return found
    raise PmbError("the python-mpi launcher is not installed next to this Python or on PATH; "
                   "load your MPI (its mpicc on PATH) and reinstall: "
                   "'pip install --force-reinstall --no-deps python-mpi-bcast'")


def info() -> dict:
    exe = launcher_path()
    out = {"python-mpi-bcast": __version__, "launcher": exe}
    try:
        r = subprocess.run([exe, "--pmb-info"], capture_output=True, text=True, timeout=60,
                           check=False)
    except subprocess.TimeoutExpired:
        raise PmbError(f"{exe} --pmb-info did not answer within 60 s (MPI singleton start "
                       f"hangs?); try 'mpiexec -n 1 {exe} --pmb-info'") from None
    if r.returncode != 0:
        raise PmbError(f"{exe} --pmb-info failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    for line in r.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
    try:
        ldd = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=30, check=False)
        for line in ldd.stdout.splitlines():
            if "libmpi" in line and "=>" in line:
                out["mpi_linked"] = line.split("=>", 1)[1].split("(")[0].strip()
                break
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out
