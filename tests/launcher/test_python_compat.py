"""python-mpi is python: a user swaps one word in the launch line and every
program behaves as under ``python`` (or gets one line saying why not), in
both start modes, under each process manager that starts ranks here:
MPICH 5's hydra (``mpiexec``), Open MPI 5's ``mpirun`` (PyPI, in its own
venv) and ``srun`` on the test Slurm cluster.

Real MPI, real packages made by the packer; every launch has a timeout, so a
hang fails the test.
"""

from __future__ import annotations

import os
import uuid

import pytest

from helpers import BIN, LAUNCHER, MPIEXEC, env_file, mpi_env, run

MODES = ["embed", "exec"]

# the rank a program that never imports mpi4py finds in its environment
RANK = ("import os\n"
        "RANK = int(next(os.environ[k] for k in ('PMI_RANK', 'OMPI_COMM_WORLD_RANK',"
        " 'SLURM_PROCID', 'PMIX_RANK') if k in os.environ))\n")

# ranks end 0.5 s apart and never touch MPI
UNEVEN = RANK + "import time\ntime.sleep(0.5 + RANK)\nos.write(1, b'DONE %d\\n' % RANK)\n"

# rank 1 fails while rank 0 waits in a barrier
FAIL = """
import sys, time
from mpi4py import MPI
c = MPI.COMM_WORLD
if c.rank == 1:
    time.sleep(0.3)
    how = sys.argv[1]
    if how == "exception":
        raise RuntimeError("rank 1 fails")
    if how == "exit3":
        sys.exit(3)
    raise KeyboardInterrupt
c.Barrier()
sys.stdout.write("PASSED THE BARRIER %s\\n" % c.rank)
"""

# mpi4py.rc.initialize = False, then MPI.Init_thread (mpi4py's documented
# pattern), and an explicit Finalize: every answer as under python
INIT_THREAD = """
import os
import mpi4py
mpi4py.rc.initialize = False
from mpi4py import MPI
assert not MPI.Is_initialized() and not MPI.Is_finalized()
provided = MPI.Init_thread(MPI.THREAD_SERIALIZED)
assert provided == MPI.THREAD_SERIALIZED, provided
assert MPI.Query_thread() == provided
assert MPI.Is_initialized() and not MPI.Is_finalized()
c = MPI.COMM_WORLD
total = c.allreduce(c.rank + 1)
MPI.Finalize()
assert MPI.Is_initialized() and MPI.Is_finalized()
os.write(1, b"INIT_THREAD %d %d\\n" % (c.rank, total))  # one write: lines never mix
"""


class Launch:
    """Start N ranks of python-mpi ARGS under one process manager."""

    def __init__(self, name, cmd, env):
        self.name, self.cmd, self.env = name, cmd, env

    def __call__(self, n, args, timeout=120, input=None, **extra):
        env = dict(self.env, **{k: str(v) for k, v in extra.items()})
        return run(self.cmd(n) + list(args), env=env, timeout=timeout, check=False, input=input)


@pytest.fixture(params=["mpich", "openmpi"])
def launch(request, pkgroot, shm_chroot):
    """mpiexec of MPICH 5 (hydra) or of Open MPI 5 (PRRTE), each with the
    launcher built against that MPI."""
    env = mpi_env(pkgroot, shm_chroot)
    if request.param == "mpich":
        return Launch("mpich", lambda n: [MPIEXEC, "-n", str(n), LAUNCHER], env)
    ompi = request.getfixturevalue("ompi")
    env = {k: v for k, v in env.items() if not k.startswith("MPIR_")}
    env.update(env_file("env.openmpi"))
    return Launch("openmpi", lambda n: [os.path.join(ompi, "bin", "mpiexec"), "-n", str(n),
                                        os.path.join(ompi, "bin", "python-mpi")], env)


def dones(stdout):
    return sorted(int(ln.split()[1]) for ln in stdout.splitlines() if ln.startswith("DONE "))


# -- every rank runs to its end; a failing rank ends the job ---------------------

@pytest.mark.parametrize("mode", MODES)
def test_every_rank_runs_to_its_end_when_the_program_never_uses_mpi(launch, mode):
    r = launch(3, ["-c", UNEVEN], PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dones(r.stdout) == [0, 1, 2], r.stdout + r.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["exception", "exit3", "keyboardinterrupt"])
def test_a_failing_rank_ends_the_job_with_a_nonzero_status(launch, mode, how, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAIL)
    r = launch(2, [str(script), how], timeout=90, PYTHON_MPI_MODE=mode)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "PASSED THE BARRIER" not in r.stdout
    if how == "exit3":
        assert "(rank 1): exit status 3, aborting the job" in r.stderr, r.stderr
    elif how == "exception":
        assert "RuntimeError: rank 1 fails" in r.stderr
        assert "(rank 1): exit status 1, aborting the job" in r.stderr, r.stderr
    else:  # python ends itself with SIGINT after an uncaught KeyboardInterrupt
        assert "KeyboardInterrupt" in r.stderr, r.stderr


# -- mpi4py habits ---------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_init_thread_after_rc_initialize_false_and_explicit_finalize(launch, mode):
    r = launch(2, ["-c", INIT_THREAD], PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(ln for ln in r.stdout.splitlines() if ln.startswith("INIT_THREAD")) == \
        ["INIT_THREAD 0 3", "INIT_THREAD 1 3"], r.stdout + r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_explicit_finalize_comes_before_the_launchers_cleanup(pkgroot, shm_chroot, mode):
    """MPI.Finalize() in the program, then PYTHON_MPI_CLEANUP=1: the node's
    last rank still removes the tree (the launcher's MPI is still up)."""
    env = mpi_env(pkgroot, shm_chroot, cliques=2, PYTHON_MPI_CLEANUP=1, PYTHON_MPI_MODE=mode)
    prog = ("import os\nfrom mpi4py import MPI\nr = MPI.COMM_WORLD.rank\nMPI.Finalize()\n"
            "assert MPI.Is_finalized()\nos.write(1, b'FINALIZED %d\\n' % r)\n")
    r = run([MPIEXEC, "-n", "4", LAUNCHER, "-c", prog], env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("FINALIZED") == 4, r.stdout + r.stderr
    base = os.path.dirname(shm_chroot)
    left = [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs] if os.path.isdir(base) else []
    assert left == [] and (not os.path.isdir(base) or os.listdir(base) == []), left


def test_exec_mode_leaves_no_trace_in_the_program_or_its_children(pkgroot, shm_chroot):
    """exec mode's shim is preloaded from a memfd and takes itself out of
    the environment at once: the program and a subprocess of sys.executable
    see the user's LD_PRELOAD (here: none) and no PYTHON_MPI_EXEC_* setting,
    and the child runs as a plain interpreter."""
    prog = ("import os, subprocess, sys\n"
            "seen = sorted(k for k in os.environ if k == 'LD_PRELOAD' or k.startswith('PYTHON_MPI_EXEC'))\n"
            "maps = [ln.split()[-1] for ln in open('/proc/self/maps') if 'python-mpi-exec-shim' in ln]\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(k for k in "
            "os.environ if k == \"LD_PRELOAD\" or k.startswith(\"PYTHON_MPI_EXEC\")))'], "
            "capture_output=True, text=True, timeout=60).stdout.strip()\n"
            "os.write(1, ('TRACE %r %d %s\\n' % (seen, len(maps) > 0, child)).encode())\n")
    env = mpi_env(pkgroot, shm_chroot, PYTHON_MPI_MODE="exec")
    env.pop("LD_PRELOAD", None)
    r = run([MPIEXEC, "-n", "2", LAUNCHER, "-c", prog], env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("TRACE [] 1 []") == 2, r.stdout + r.stderr


# -- the program from stdin ------------------------------------------------------

STDIN_PROG = RANK + "import sys\nos.write(1, b'STDIN %d %r\\n' % (RANK, sys.argv))\n"


@pytest.fixture
def hydra(pkgroot, shm_chroot):
    """MPICH's mpiexec only: Open MPI 5.0's mpirun here never passes the end
    of stdin on to rank 0 ('mpiexec -n 1 cat < file' hangs too), so no
    program read from stdin can start under it, with python or python-mpi."""
    return Launch("mpich", lambda n: [MPIEXEC, "-n", str(n), LAUNCHER],
                  mpi_env(pkgroot, shm_chroot))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [2, 3])
def test_program_from_stdin_runs_on_every_rank(hydra, mode, n):
    """python-mpi - < script.py: rank 0 reads the program (only it has the
    user's stdin), every rank runs it with sys.argv as python gives it."""
    r = hydra(n, ["-", "a", "b"], input=STDIN_PROG, PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("STDIN "))
    assert lines == [f"STDIN {k} ['-', 'a', 'b']" for k in range(n)], r.stdout + r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_program_from_stdin_without_a_dash(hydra, mode):
    r = hydra(2, ["-u"], input=STDIN_PROG, PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("STDIN "))
    assert lines == ["STDIN 0 ['']", "STDIN 1 ['']"], r.stdout + r.stderr


# -- srun on the test cluster -----------------------------------------------------

@pytest.fixture
def job(slurm_cluster, pkgroot):
    chroot = f"/dev/shm/pmbc-{uuid.uuid4().hex[:10]}"
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHON_MPI_PKGROOT": pkgroot["root"],
        "PYTHON_MPI_PACKAGES": f"{pkgroot['python']}:{pkgroot['env']}",
        "PYTHON_MPI_CHROOT": chroot,
    }
    yield {"env": env, "cluster": slurm_cluster}
    for n in ["n1", "n2", "n3", "n4"]:
        run(["rm", "-rf", slurm_cluster.node_path(n, chroot)], check=False)


# Open MPI 5.0 under srun --mpi=pmix sometimes crashes inside MPI_Init before
# python-mpi runs any code (open-mpi/ompi#12495, see test_slurm.py): retried once
OMPI_INIT_RACE = "mca_pml_ob1_recv_frag_callback_match"


def srun_env(job, mpi, **extra):
    env = dict(job["env"], **{k: str(v) for k, v in extra.items()})
    if mpi == "openmpi":
        env.update(env_file("env.openmpi"))
        env["PATH"] = f"{job['ompi']}/bin:{env['PATH']}"
    return env


def srun(job, mpi, args, timeout=180, **extra):
    env = srun_env(job, mpi, **extra)
    cmd = ["srun", "-K"] + (["--mpi=pmix"] if mpi == "openmpi" else [])
    for attempt in (1, 2):
        r = job["cluster"].run(cmd + list(args), env=env, timeout=timeout)
        if r.returncode == 0 or OMPI_INIT_RACE not in r.stderr or attempt == 2:
            return r


@pytest.fixture(params=[("mpich", "embed"), ("openmpi", "embed"), ("openmpi", "exec")],
                ids=lambda p: "-".join(p))
def srun_case(request, job):
    """The MPIs and modes that run under srun (exec mode with MPICH under
    --mpi=pmi2 is refused: test_srun_pmi2_refuses_exec_mode_in_one_line)."""
    mpi, mode = request.param
    if mpi == "openmpi":
        job["ompi"] = request.getfixturevalue("ompi")
    return job, mpi, mode


def test_srun_every_rank_runs_to_its_end(srun_case):
    job, mpi, mode = srun_case
    r = srun(job, mpi, ["-N", "3", "--ntasks-per-node=1", "python-mpi", "-c", UNEVEN],
             PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dones(r.stdout) == [0, 1, 2], r.stdout + r.stderr


def test_srun_a_failing_rank_ends_the_step(srun_case, tmp_path):
    job, mpi, mode = srun_case
    script = tmp_path / "fail.py"
    script.write_text(FAIL)
    r = srun(job, mpi, ["-N", "2", "--ntasks-per-node=1", "python-mpi", str(script), "exit3"],
             timeout=120, PYTHON_MPI_MODE=mode)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "PASSED THE BARRIER" not in r.stdout
    assert "(rank 1): exit status 3, aborting the job" in r.stderr, r.stderr


def test_srun_init_thread_after_rc_initialize_false(srun_case):
    job, mpi, mode = srun_case
    r = srun(job, mpi, ["-N", "2", "--ntasks-per-node=1", "python-mpi", "-c", INIT_THREAD],
             PYTHON_MPI_MODE=mode)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("INIT_THREAD") == 2, r.stdout + r.stderr


def test_srun_pmi2_refuses_exec_mode_in_one_line(job):
    """Slurm's PMI-2 server takes one handshake per task: the exec'd
    interpreter cannot join the job again, so MPICH's exec mode under srun
    is refused before anything is staged (it used to hang)."""
    r = srun(job, "mpich", ["-N", "2", "--ntasks-per-node=1", "python-mpi", "-c", UNEVEN],
             timeout=120, PYTHON_MPI_MODE="exec")
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("python-mpi: ")]
    assert len(lines) == 1, r.stderr
    assert "PYTHON_MPI_MODE=exec does not work" in lines[0] and "srun --mpi=pmi2" in lines[0]
    assert dones(r.stdout) == []


def test_srun_program_from_stdin_runs_on_every_rank(srun_case):
    """srun gives stdin to every task; rank 0's copy is the one read"""
    job, mpi, mode = srun_case
    r = job["cluster"].run(["srun", "-K", "-N", "2", "--ntasks-per-node=1"]
                           + (["--mpi=pmix"] if mpi == "openmpi" else [])
                           + ["python-mpi", "-", "a", "b"],
                           env=srun_env(job, mpi, PYTHON_MPI_MODE=mode), timeout=180,
                           input=STDIN_PROG)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("STDIN "))
    assert lines == [f"STDIN {k} ['-', 'a', 'b']" for k in range(2)], r.stdout + r.stderr
