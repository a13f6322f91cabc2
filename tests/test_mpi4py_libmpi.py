"""mpi4py from PyPI uses the MPI library the launcher initialised, whatever
that library's file name (issue 12).

The launcher is built against Debian's MPICH 4 (libmpich.so.12 only; the
PyPI mpi4py wheel asks for libmpi.so.12), and against a copy of that library
renamed the Cray way (libmpi_cray.so.12, SONAME set to match, the only MPI
name the launcher can reach).  The packed venv holds numpy and the mpi4py
wheel from PyPI.  Debian's Open MPI puts libmpi.so.40 on the default loader
path, so a wrong pick by mpi4py would find a second MPI: the test checks
that each rank maps exactly one MPI library file, the launcher's.

Debian's mpiexec.mpich (hydra) gets ``-launcher fork``: every rank is local
and no ssh is needed.
"""

from __future__ import annotations

import os

import pytest

from conftest import mpi_env, run
from mpibuild import build_launcher, linked_mpi, need, renamed_library, wrapper_linking

DEBIAN_MPICH = "/usr/lib/x86_64-linux-gnu/libmpich.so.12"

PROG = r"""
import os, numpy
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(float(numpy.arange(10.0).sum()) * (c.rank + 1))
libs = sorted({os.path.realpath(ln.split()[-1]) for ln in open("/proc/self/maps")
               if "/libmpi" in ln or "/libmpich" in ln})
rows = c.gather((c.rank, libs))
if c.rank == 0:
    print("TOTAL", c.size, total, MPI.Get_library_version().split("\n")[0])
    for r, l in rows:
        print("LIBS", r, " ".join(l))
"""


def mpich_run(launcher, n, args, pkgroot, chroot, cliques=2, **extra):
    env = mpi_env(pkgroot, chroot, cliques=cliques, **extra)
    return run(["mpiexec.mpich", "-launcher", "fork", "-n", str(n), launcher] + args, env=env,
               timeout=180, check=False)


@pytest.fixture(scope="module")
def debian_mpich_launcher(tmp_path_factory):
    need("mpicc.mpich", "mpiexec.mpich")
    exe = build_launcher(str(tmp_path_factory.mktemp("launcher-mpich")), "mpicc.mpich")
    return exe


@pytest.fixture(scope="module")
def cray_named_launcher(tmp_path_factory):
    """The launcher linked against libmpi_cray.so.12: Debian's MPICH library
    copied under that name, SONAME included."""
    need("mpicc.mpich", "mpiexec.mpich")
    d = tmp_path_factory.mktemp("launcher-cray")
    lib = renamed_library(os.path.realpath(DEBIAN_MPICH), str(d / "cray-lib"), "libmpi_cray.so.12")
    cc = wrapper_linking(str(d / "mpicc-cray"), "mpicc.mpich", lib)
    return build_launcher(str(d / "prefix"), cc), lib


def check_allreduce(r, n, expect_lib):
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"TOTAL {n} {45.0 * n * (n + 1) / 2}" in r.stdout, r.stdout + r.stderr
    libs = [ln.split()[2:] for ln in r.stdout.splitlines() if ln.startswith("LIBS ")]
    assert len(libs) == n, r.stdout
    assert all(lib == [expect_lib] for lib in libs), r.stdout


def test_launcher_built_with_debian_mpich_links_only_libmpich(debian_mpich_launcher):
    lines = linked_mpi(debian_mpich_launcher)
    assert len(lines) == 1 and lines[0].startswith("libmpich.so.12 => "), lines


def test_pypi_mpi4py_uses_debian_mpich(debian_mpich_launcher, pkgroot, shm_chroot):
    r = mpich_run(debian_mpich_launcher, 4, ["-c", PROG], pkgroot, shm_chroot,
                  PYTHON_MPI_VERBOSE=1)
    check_allreduce(r, 4, os.path.realpath(DEBIAN_MPICH))
    assert "MPICH Version:\t4." in r.stdout or "MPICH Version: 4." in r.stdout, r.stdout
    assert "needs libmpi.so.12: resolved to the loaded" in r.stderr, r.stderr


def test_pypi_mpi4py_uses_a_cray_named_mpich(cray_named_launcher, pkgroot, shm_chroot):
    launcher, lib = cray_named_launcher
    lines = linked_mpi(launcher)
    assert len(lines) == 1 and lines[0].startswith(f"libmpi_cray.so.12 => {lib} "), lines
    r = mpich_run(launcher, 4, ["-c", PROG], pkgroot, shm_chroot)
    check_allreduce(r, 4, lib)
