"""mpiexec over "nodes" with their own host name and /dev/shm: MPICH's hydra
starts each node's proxy through tests/support/fakessh (ssh stand-in: a new mount and
UTS namespace with a fresh tmpfs on /dev/shm), as on a cluster without Slurm."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from support import slurm
from helpers import FAKESSH, LAUNCHER, MPIEXEC, NODE_CHECK, check_rows, mpi_env, run


@pytest.fixture
def fakessh():
    if os.geteuid() != 0:
        pytest.skip("fakessh mounts a tmpfs per node: needs root")
    how = slurm.mount_propagation()
    if how is None:
        pytest.skip("cannot create a private mount namespace here")
    r = run(["unshare", "-m", "-u", "--propagation", how, "true"], check=False, timeout=30)
    if r.returncode != 0:
        pytest.skip("cannot create private mount/UTS namespaces here: " + r.stderr.strip())
    return [MPIEXEC, "-launcher", "ssh", "-launcher-exec", FAKESSH, "-iface", "lo"]


@pytest.mark.parametrize("hosts,ranks", [("a:2,b:2", 4), ("a:1,b:2,c:1", 4)])
def test_mpiexec_nodes_each_stage_their_own_tree_once(pkgroot, fakessh, hosts, ranks):
    chroot = f"/dev/shm/pmbt-{uuid.uuid4().hex[:10]}"
    env = mpi_env(pkgroot, chroot, PYTHON_MPI_VERBOSE=2)
    del env["MPIR_CVAR_NUM_CLIQUES"]  # real nodes, not simulated ones
    r = run(fakessh + ["-hosts", hosts, "-n", str(ranks), LAUNCHER, "-c", NODE_CHECK], env=env,
            timeout=180, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = hosts.count(",") + 1
    by_host = check_rows(r.stdout, ranks, nodes)
    assert {h: len(v) for h, v in by_host.items()} == \
        {h.split(":")[0]: int(h.split(":")[1]) for h in hosts.split(",")}
    assert len(re.findall(r"\): unpacked 2 package", r.stderr)) == nodes, r.stderr
    assert not os.path.exists(chroot)  # each node's tmpfs is gone with its namespace


def test_mpiexec_failure_on_one_node_ends_the_job(pkgroot, fakessh):
    env = mpi_env(pkgroot, f"/dev/shm/pmbt-{uuid.uuid4().hex[:10]}")
    del env["MPIR_CVAR_NUM_CLIQUES"]
    prog = ("import socket, sys\nfrom mpi4py import MPI\n"
            "if socket.gethostname() == 'b': sys.exit(3)\nMPI.COMM_WORLD.Barrier()\n")
    r = run(fakessh + ["-hosts", "a:2,b:2", "-n", "4", LAUNCHER, "-c", prog], env=env, timeout=120,
            check=False)
    assert r.returncode != 0
    assert re.search(r"python-mpi: b \(rank [23]\): exit status 3, aborting the job", r.stderr), r.stderr
