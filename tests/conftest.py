"""Shared fixtures: a real venv with real wheels, real packages made by the
real packer, and a helper that launches real MPI jobs with a timeout.

MPI comes from PyPI (``pip install mpich``) and lives next to the Python
running the tests; several "nodes" are simulated with MPICH's
MPIR_CVAR_NUM_CLIQUES (all of them share one /dev/shm, so PYTHON_MPI_CHROOT
gets a %n placeholder per node).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from python_mpi_bcast.pyinfo import running_base_interpreter as base_python

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")
LAUNCHER = os.path.join(BIN, "python-mpi")
CLI = [sys.executable, "-m", "python_mpi_bcast"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PMB_TEST_CACHE", os.path.join(REPO, "build", "test-cache"))


def run(args, timeout=120, check=True, **kw):
    """subprocess.run with a timeout and captured text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(args, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true",
                     help="also run the tests marked 'extended' (slow: every MPI provider); "
                          "tests/run.sh --all sets it")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended test: run with tests/run.sh --all (pytest --extended)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


def make_venv(path: str, packages: list[str]) -> str:
    run([base_python(), "-m", "venv", path], timeout=300)
    if packages:
        run([os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check"] + packages, timeout=900)
    return path


@pytest.fixture(scope="session")
def demo_venv():
    """A venv with numpy and mpi4py from PyPI, built once per cache dir."""
    path = os.path.join(CACHE, f"venv-numpy-py{sys.version_info[0]}{sys.version_info[1]}")
    marker = os.path.join(path, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(CACHE, exist_ok=True)
        make_venv(path, ["numpy", "mpi4py"])
        open(marker, "w").close()
    return path


@pytest.fixture(scope="session")
def pkgroot(tmp_path_factory, demo_venv):
    """Interpreter + demo venv packed by the real packer."""
    root = tmp_path_factory.mktemp("pkgroot")
    run(CLI + ["pack", "--python", demo_venv, "-o", str(root), "-q"], timeout=600)
    run(CLI + ["pack", demo_venv, "-o", str(root), "-n", "demo", "-q"], timeout=600)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {"root": str(root), "python": f"python-{ver}.tar.zst", "env": "demo.tar.zst"}


@pytest.fixture
def shm_chroot():
    """A unique node-directory pattern under /dev/shm, removed afterwards."""
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    yield base + "/node-%n"
    shutil.rmtree(base, ignore_errors=True)


def mpi_env(pkgroot: dict, chroot: str, cliques: int = 1, packages: str | None = None,
            **extra) -> dict:
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
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpirun(n: int, args: list[str], env: dict, timeout: int = 120, check: bool = False,
           input: str | None = None, prefix: list[str] | None = None):
    cmd = (prefix or []) + [MPIEXEC, "-n", str(n), LAUNCHER] + args
    return run(cmd, env=env, timeout=timeout, check=check, input=input)
