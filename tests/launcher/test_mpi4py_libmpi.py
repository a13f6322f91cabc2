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
import re
import shutil
import sys

import pytest

from helpers import CACHE, CLI, base_python, env_file, mpi_env, open_mpi5_run, run
from support.mpibuild import build_launcher, linked_mpi, need, renamed_library, wrapper_linking

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


OMPI_ENV = env_file("env.openmpi4")  # Debian's Open MPI 4


def ompi_run(launcher, n, args, pkgroot, chroot, **extra):
    env = mpi_env(pkgroot, chroot, **OMPI_ENV, **extra)
    return run(["mpiexec.openmpi", "-n", str(n), launcher] + args, env=env, timeout=180,
               check=False)


def mpich_run(launcher, n, args, pkgroot, chroot, cliques=2, **extra):
    env = mpi_env(pkgroot, chroot, cliques=cliques, **extra)
    return run(["mpiexec.mpich", "-launcher", "fork", "-n", str(n), launcher] + args, env=env,
               timeout=180, check=False)


@pytest.fixture(scope="module")
def cray_named_launcher(tmp_path_factory):
    """The launcher linked against libmpi_cray.so.12: Debian's MPICH library
    copied under that name, SONAME included."""
    need("mpicc.mpich", "mpiexec.mpich")
    d = tmp_path_factory.mktemp("launcher-cray")
    lib = renamed_library(os.path.realpath(DEBIAN_MPICH), str(d / "cray-lib"), "libmpi_cray.so.12")
    cc = wrapper_linking(str(d / "mpicc-cray"), "mpicc.mpich", lib)
    return build_launcher(str(d / "prefix"), cc), lib


@pytest.fixture(scope="module")
def debian_openmpi_launcher(tmp_path_factory):
    need("mpicc.openmpi", "mpiexec.openmpi")
    return build_launcher(str(tmp_path_factory.mktemp("launcher-ompi")), "mpicc.openmpi")


@pytest.fixture(scope="module")
def source_mpi4py(pkgroot):
    """numpy and mpi4py built from source against Debian's MPICH (its MPI.so
    names libmpich.so.12 and is MPICH-ABI only), packed as 'srcmpi4py'."""
    need("mpicc.mpich")
    venv = os.path.join(CACHE, f"venv-mpi4py-src-mpich-py{sys.version_info[0]}{sys.version_info[1]}")
    if not os.path.exists(os.path.join(venv, ".complete")):
        shutil.rmtree(venv, ignore_errors=True)
        run([base_python(), "-m", "venv", venv], timeout=300)
        env = dict(os.environ, MPICC="mpicc.mpich", CFLAGS="-O0")  # a fast compile is enough
        env.pop("CC", None)
        run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "--no-binary", "mpi4py", "mpi4py", "numpy"],
            env=env, timeout=1800)
        open(os.path.join(venv, ".complete"), "w").close()
    run(CLI + ["pack", venv, "-o", pkgroot["root"], "-n", "srcmpi4py", "-q", "--force"],
        timeout=600)
    return dict(pkgroot, env="srcmpi4py.tar.zst")


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


def test_pypi_mpi4py_uses_debian_open_mpi(debian_openmpi_launcher, pkgroot, shm_chroot):
    lines = linked_mpi(debian_openmpi_launcher)
    assert len(lines) == 1 and lines[0].startswith("libmpi.so.40 => "), lines
    lib = os.path.realpath(lines[0].split("=>")[1].split("(")[0].strip())
    r = ompi_run(debian_openmpi_launcher, 4, ["-c", PROG], pkgroot, shm_chroot)
    check_allreduce(r, 4, lib)
    assert "Open MPI v4" in r.stdout, r.stdout


def test_source_built_mpi4py_keeps_working(debian_mpich_launcher, source_mpi4py, shm_chroot):
    r = mpich_run(debian_mpich_launcher, 4, ["-c", PROG], source_mpi4py, shm_chroot)
    check_allreduce(r, 4, os.path.realpath(DEBIAN_MPICH))


def test_source_built_mpi4py_with_a_cray_named_mpich_loads_no_second_copy(
        cray_named_launcher, source_mpi4py, shm_chroot):
    # its MPI.so names libmpich.so.12, which is on the default loader path:
    # without the alias, a second MPICH would be loaded next to libmpi_cray
    launcher, lib = cray_named_launcher
    r = mpich_run(launcher, 4, ["-c", PROG], source_mpi4py, shm_chroot)
    check_allreduce(r, 4, lib)


NUMPY_ONLY = r"""
import os, sys, numpy
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "-1")))
sys.stdout.write("NUMPY %s %s\n" % (rank, float(numpy.arange(10.0).sum())))  # one write per rank
"""


def refusals(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("python-mpi: ") and "mpi4py" in ln]


def check_refused_at_import(r, n, needs, runs):
    """Every rank's import of mpi4py.MPI failed with the launcher's one line."""
    assert r.returncode != 0, r.stdout + r.stderr
    lines = refusals(r.stderr)
    assert 1 <= len(lines) <= n, r.stderr
    for ln in lines:
        assert re.match(r"python-mpi: \S+ \(rank \d+\): mpi4py's MPI\.cpython-", ln), lines
        assert f"needs {needs}, but the launcher runs " in ln and runs in ln, lines
    assert "Traceback" not in r.stderr and "TOTAL" not in r.stdout, r.stderr


def test_mpi4py_for_another_mpi_family_fails_its_import_with_one_line(
        debian_openmpi_launcher, source_mpi4py, shm_chroot):
    r = ompi_run(debian_openmpi_launcher, 4, ["-c", PROG], source_mpi4py, shm_chroot)
    check_refused_at_import(r, 4, "libmpich.so.12 (mpich ABI)", "libmpi.so.40 (openmpi ABI)")


def test_mpi4py_for_another_mpi_family_does_not_stop_a_numpy_only_program(
        debian_openmpi_launcher, source_mpi4py, shm_chroot):
    r = ompi_run(debian_openmpi_launcher, 2, ["-c", NUMPY_ONLY], source_mpi4py, shm_chroot)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(ln for ln in r.stdout.splitlines() if ln.startswith("NUMPY")) == \
        ["NUMPY 0 45.0", "NUMPY 1 45.0"], r.stdout + r.stderr
    assert not refusals(r.stderr), r.stderr


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_mpi4py_for_another_mpi_family_is_refused_only_at_its_import_in_both_modes(
        ompi, source_mpi4py, shm_chroot, mode):
    """Open MPI 5's launcher, an mpi4py built against MPICH: a numpy-only
    program runs on every rank; importing mpi4py.MPI (also in a child
    through sys.executable) fails with the one line, and the job ends."""
    r = open_mpi5_run(ompi, 2, ["-c", NUMPY_ONLY], source_mpi4py, shm_chroot, PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(ln for ln in r.stdout.splitlines() if ln.startswith("NUMPY")) == \
        ["NUMPY 0 45.0", "NUMPY 1 45.0"], r.stdout + r.stderr
    assert not refusals(r.stderr), r.stderr
    r = open_mpi5_run(ompi, 2, ["-c", "import mpi4py.MPI\nprint('TOTAL')"], source_mpi4py,
                      shm_chroot, PYTHON_MPI_MODE=mode)
    check_refused_at_import(r, 2, "libmpich.so.12 (mpich ABI)", "(openmpi ABI)")
    child = ("import subprocess, sys\n"
             "r = subprocess.run([sys.executable, '-c', 'import mpi4py.MPI'], capture_output=True,"
             " text=True, timeout=60)\n"
             "print('CHILD', r.returncode, r.stderr.strip().splitlines())\n")
    r = open_mpi5_run(ompi, 1, ["-c", child], source_mpi4py, shm_chroot, PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    out = [ln for ln in r.stdout.splitlines() if ln.startswith("CHILD")]
    assert len(out) == 1 and out[0].startswith("CHILD 1 [\"python-mpi: "), r.stdout
    assert "needs libmpich.so.12 (mpich ABI)" in out[0] and "Traceback" not in out[0], out


def test_a_caught_refusal_is_an_import_error(ompi, source_mpi4py, shm_chroot):
    prog = ("import sys\ntry:\n    from mpi4py import MPI\nexcept ImportError as e:\n"  # one write per rank
            "    sys.stdout.write('FALLBACK %s %s\\n' % (type(e).__mro__[1].__name__, 'mpi4py' in str(e)))\n")
    r = open_mpi5_run(ompi, 2, ["-c", prog], source_mpi4py, shm_chroot)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("FALLBACK ImportError True") == 2, r.stdout + r.stderr


def test_info_tells_which_library_the_wheel_will_use(debian_mpich_launcher):
    r = run([debian_mpich_launcher, "--pmb-info"], timeout=60)
    assert "mpi_abi: mpich\n" in r.stdout, r.stdout
    assert "mpi_file: /" in r.stdout and "libmpich.so.12\n" in r.stdout, r.stdout
    assert "mpi4py: the launcher points the PyPI wheel's libmpi.so.12 at /" in r.stdout, r.stdout
