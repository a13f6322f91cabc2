"""At run time the staged tree gets no writes: no ``__pycache__``, no new,
changed or removed file, whatever the ranks import and compute.

Checked two ways on a real 2-rank job (numpy + mpi4py) that starts from a
tree already staged: ``strace -ff -y`` of every rank (benchmarks/filecalls.py)
shows no call that may change anything under the tree (an open for writing,
mkdir, rename, unlink, chmod, ...), and the tree's file list and mtimes are
the same before and after.  A control job that does write into the tree
(through ``sys.prefix``) is caught by both checks, so the test can fail.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from helpers import LAUNCHER, MPIEXEC, mpi_env, run, tree_stat

import filecalls

pytestmark = pytest.mark.skipif(not shutil.which("strace"),
                                reason="strace is not installed")

JOB = """
import sys, json, decimal, fractions, sqlite3, ctypes, xml.dom.minidom, email.parser
import numpy as np, numpy.linalg
from mpi4py import MPI
c = MPI.COMM_WORLD
a = np.random.default_rng(c.rank).random((64, 64)) + 64 * np.eye(64)
x = np.linalg.solve(a, np.ones(64))
s = c.allreduce(float(np.abs(a @ x - 1).max()))
assert s < 1e-9, s
sys.stdout.write(f"TREE {sys.prefix}\\n")
"""

WRITER = """
import os, sys
from mpi4py import MPI
if MPI.COMM_WORLD.rank == 0:
    os.mkdir(os.path.join(sys.prefix, "newdir"))
    os.unlink(os.path.join(sys.prefix, VICTIM))
else:
    with open(os.path.join(sys.prefix, "written-at-run-time"), "w") as f:
        f.write("x")
sys.stdout.write(f"TREE {sys.prefix}\\n")
"""


def staged_run(program: str, env: dict, tmp_path):
    """The job under strace: (the tree it ran from, calls that may write in it)."""
    script = tmp_path / "job.py"
    script.write_text(program)
    tasks = filecalls.trace([MPIEXEC, "-n", "2", LAUNCHER, str(script)], env=env,
                            workdir=str(tmp_path), timeout=300)
    r = tasks[None]
    assert r.returncode == 0, r.stdout + r.stderr
    trees = set(re.findall(r"TREE (/\S+)", r.stdout))
    assert len(trees) == 1 and r.stdout.count("TREE ") == 2, r.stdout + r.stderr
    (tree,) = trees
    return tree, filecalls.writes_under(tasks, os.path.realpath(tree))


@pytest.fixture
def staged(pkgroot, shm_chroot):
    """The packages staged into one node directory: (the job's env, the tree)."""
    env = mpi_env(pkgroot, shm_chroot)
    run([MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=300)
    node = shm_chroot.replace("%n", "0")
    (tree,) = [os.path.join(node, d) for d in os.listdir(node) if d.startswith("env-")]
    return env, tree


def test_staged_tree_gets_no_writes_at_run_time(staged, tmp_path):
    env, tree = staged
    before = tree_stat(tree)
    assert any(p.endswith(".pyc") for p in before) and len(before) > 1000
    for _ in range(2):  # the second run would see what the first cached
        ran_in, writes = staged_run(JOB, env, tmp_path)
        assert ran_in == tree
        assert writes == [], "\n".join(writes[:20])
    assert tree_stat(tree) == before


def test_a_job_that_writes_into_the_tree_is_caught(staged, tmp_path):
    """The control: both checks see a file created through sys.prefix, a
    directory made there and a file removed."""
    env, tree = staged
    before = tree_stat(tree)
    victim = sorted(p for p in before if p.endswith(".pyc"))[0]
    ran_in, writes = staged_run(WRITER.replace("VICTIM", repr(victim)), env, tmp_path)
    assert ran_in == tree
    calls = sorted(w.split(": ", 1)[1].split("(")[0] for w in writes)
    assert calls == ["mkdir", "openat", "unlink"], writes
    assert [w for w in writes if "openat(" in w and "written-at-run-time" in w and "O_CREAT" in w]
    after = tree_stat(tree)
    assert set(after) ^ set(before) == {"written-at-run-time", "newdir", victim}
