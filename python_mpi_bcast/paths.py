"""The one place that resolves PYTHON_MPI_* locations on the Python side,
with the same defaults as the launcher (launcher/config.c)."""

from __future__ import annotations

import os
import socket

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


def config_file() -> str:
    """The user's config file: $PYTHON_MPI_BCAST_CONFIG, else
    $XDG_CONFIG_HOME/python-mpi-bcast/config.toml (XDG_CONFIG_HOME defaults
    to ~/.config)."""
    explicit = os.environ.get("PYTHON_MPI_BCAST_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "python-mpi-bcast", "config.toml")
