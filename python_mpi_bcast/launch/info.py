"""``python-mpi-bcast info``: where the launcher is, which MPI it links, and
which start modes it offers."""

from __future__ import annotations

import subprocess

from .. import __version__
from ..support.errors import PmbError
from ..support.paths import launcher_path


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
