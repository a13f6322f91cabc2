"""The one place that resolves PYTHON_MPI_* locations on the Python side,
with the same defaults as the launcher (launcher/config.c)."""

from __future__ import annotations

import os
import shutil
import socket
import sys

from . import config
from .errors import PmbError


def default_chroot() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f"/dev/shm/python-mpi.{os.geteuid()}" + (f".{job}" if job else "")


def node_directory(pattern: str | None = None, node_index: int | None = None) -> str:
    """PYTHON_MPI_CHROOT (or ``pattern``) with %h and, if given, %n expanded."""
    pattern = pattern or os.environ.get("PYTHON_MPI_CHROOT") or default_chroot()
    if not pattern.startswith("/"):
        raise PmbError(f"PYTHON_MPI_CHROOT={pattern!r} must be an absolute path")
    if "%n" in pattern and node_index is None:
        raise PmbError(f"PYTHON_MPI_CHROOT={pattern!r} holds %n (the node index); give the "
                       f"node directory explicitly")
    out = pattern.replace("%%", "\0").replace("%h", socket.gethostname())
    if node_index is not None:
        out = out.replace("%n", str(node_index))
    return out.replace("\0", "%").rstrip("/") or "/"


# ---- the environment cache and the wheelhouse -----------------------------
#
# Precedence: default < config file < environment variable < command-line flag.
# The config file (config.config_file()) may hold:
#
#   [cache]
#   dir = "/proj/me/pmb-envs"
#   [wheelhouse]
#   dir = "/proj/me/wheels"
#   [shell]
#   compute_hosts = ["nid*", "cn[0-9]*"]     # or "nid*,cn[0-9]*"


def _config_value(table: str, key: str):
    where = config.config_file()
    section = config.load().get(table, {})
    if not isinstance(section, dict):
        raise PmbError(f"{where}: [{table}] must be a table")
    return section.get(key), where


def _config_dir(table: str) -> str | None:
    value, where = _config_value(table, "dir")
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("/", "~")):
        raise PmbError(f"{where}: [{table}] dir = {value!r} must be an absolute path")
    return os.path.expanduser(value).rstrip("/") or "/"


def compute_hosts() -> list[str]:
    """[shell] compute_hosts of the config file: host-name globs of compute nodes."""
    value, where = _config_value("shell", "compute_hosts")
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PmbError(f"{where}: [shell] compute_hosts must be a list of host-name globs")
    return value

JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "COBALT_JOBID")


def data_home() -> str:
    """$XDG_DATA_HOME/python-mpi-bcast, by default ~/.local/share/python-mpi-bcast."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "python-mpi-bcast")


def _absolute(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise PmbError(f"{what}={value!r} must be an absolute path")
    return value.rstrip("/") or "/"


def cache_dir(flag: str | None = None) -> str:
    """Where saved environments live: a package root (``PYTHON_MPI_PKGROOT``
    can point at it).  --cache > $PYTHON_MPI_BCAST_CACHE > [cache] dir of the
    config file > <data home>/envs."""
    if flag:
        return os.path.abspath(flag)
    env = os.environ.get("PYTHON_MPI_BCAST_CACHE")
    if env:
        return _absolute(env, "PYTHON_MPI_BCAST_CACHE")
    return _config_dir("cache") or os.path.join(data_home(), "envs")


def wheelhouse_dir(flag: str | None = None) -> str:
    """Wheels for offline installs, next to the cache.  --wheelhouse >
    $PYTHON_MPI_BCAST_WHEELHOUSE > [wheelhouse] dir of the config file >
    <cache>/../wheelhouse."""
    if flag:
        return os.path.abspath(flag)
    env = os.environ.get("PYTHON_MPI_BCAST_WHEELHOUSE")
    if env:
        return _absolute(env, "PYTHON_MPI_BCAST_WHEELHOUSE")
    return _config_dir("wheelhouse") or os.path.join(os.path.dirname(cache_dir()), "wheelhouse")


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
