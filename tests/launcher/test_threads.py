"""Every core of a node unpacks: threads in each unpacking rank.

The threaded unpack must give exactly the tree one thread gives, take its
thread count from the CPUs the process may run on (not the machine's), fail
the way one thread fails, and stage real numpy + mpi4py at 1 and 2 ranks per
(simulated) node."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from helpers import LAUNCHER, launcher_errors, mpi_env, mpirun, run, tree_digest

from python_mpi_bcast.package import format as pkgformat

FINAL = "/nonexistent/pmb-final-tree"  # prefixes patched for one path, so trees compare


def unpack(pkgroot, dest, threads, prefix=None, check=True, verbose=3):
    os.makedirs(dest)
    env = dict(os.environ, PYTHON_MPI_THREADS=str(threads), PYTHON_MPI_VERBOSE=str(verbose))
    pkgs = [os.path.join(pkgroot["root"], pkgroot[k]) for k in ("python", "env")]
    return run((prefix or []) + [LAUNCHER, "--pmb-unpack", str(dest), FINAL] + pkgs, env=env,
               timeout=300, check=check)


def threads_used(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"unpacking with (\d+) thread", stderr)]


def test_threaded_unpack_gives_the_one_thread_tree(pkgroot, tmp_path):
    one = unpack(pkgroot, tmp_path / "one", 1)
    assert threads_used(one.stderr) == [1], one.stderr
    ref = tree_digest(str(tmp_path / "one"))
    assert any(p.endswith("numpy/__init__.py") for p in ref)
    assert any(v[0] == "l" for v in ref.values())  # bin/python3 -> ...
    for name, threads in (("auto", 0), ("three", 3)):
        r = unpack(pkgroot, tmp_path / name, threads)
        ncpu = len(os.sched_getaffinity(0))  # the setting caps, never adds threads
        assert threads_used(r.stderr) == [min(threads or ncpu, ncpu)], r.stderr
        got = tree_digest(str(tmp_path / name))
        assert sorted(got) == sorted(ref)
        bad = [p for p in ref if got[p] != ref[p]]
        assert not bad, bad[:10]


@pytest.mark.skipif(not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and 2 CPUs")
def test_thread_count_follows_affinity_not_the_machine(pkgroot, shm_chroot, tmp_path):
    r = unpack(pkgroot, tmp_path / "a", 0, prefix=["taskset", "-c", "0"])
    assert threads_used(r.stderr) == [1], r.stderr
    r = unpack(pkgroot, tmp_path / "b", 0, prefix=["taskset", "-c", "0,1"])
    assert threads_used(r.stderr) == [2], r.stderr
    # under MPI: one rank pinned to one CPU gets one thread; two ranks sharing
    # two CPUs get one each; one rank on two CPUs gets two (capped by the setting)
    for cpus, ranks, cap, want in (("0", 1, 0, [1]), ("0,1", 2, 0, [1, 1]), ("0,1", 1, 0, [2]),
                                   ("0,1", 1, 1, [1])):
        env = mpi_env(pkgroot, shm_chroot, PYTHON_MPI_VERBOSE=3, PYTHON_MPI_THREADS=cap)
        r = mpirun(ranks, ["-c", "pass"], env, timeout=120, prefix=["taskset", "-c", cpus])
        assert r.returncode == 0, r.stderr
        assert sorted(threads_used(r.stderr)) == want, r.stderr
        shutil.rmtree(os.path.dirname(shm_chroot), ignore_errors=True)


@pytest.mark.parametrize("value", ["-1", "1025", "two", "1.5"])
def test_invalid_thread_settings_refused_with_one_line(pkgroot, shm_chroot, tmp_path, value):
    env = mpi_env(pkgroot, shm_chroot, PYTHON_MPI_THREADS=value)
    r = mpirun(2, ["-c", "pass"], env, timeout=60)
    assert r.returncode != 0
    lines = launcher_errors(r.stderr)
    assert len(lines) == 1 and f"PYTHON_MPI_THREADS='{value}' is not valid" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    r = unpack(pkgroot, tmp_path / "u", value, check=False)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "PYTHON_MPI_THREADS" in r.stderr, r.stderr


def _corrupt_two_shards(pkgroot, tmp_path):
    root = tmp_path / "pk"
    shutil.copytree(pkgroot["root"], root)
    p = root / pkgroot["env"]
    m, start = pkgformat.read_manifest(str(p))
    assert len(m.shards) >= 4
    data = bytearray(p.read_bytes())
    for s in (m.shards[1], m.shards[-2]):  # two workers' shards: the lower one is reported
        data[start + s.offset + s.csize // 2] ^= 0x5A
    p.write_bytes(bytes(data))
    return dict(pkgroot, root=str(root))


def _reason(line: str) -> str:
    """The error without its rank and package path prefix."""
    m = re.search(r"package '[^']*': (.*)", line)
    assert m, line
    return m.group(1)


def test_corrupt_shard_same_error_with_threads(pkgroot, shm_chroot, tmp_path):
    mine = _corrupt_two_shards(pkgroot, tmp_path)
    reasons = set()
    for threads in (1, 2, 3):
        r = unpack(mine, tmp_path / f"u{threads}", threads, check=False, verbose=0)
        assert r.returncode != 0
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "corrupt" in lines[0], r.stderr
        reasons.add(_reason(lines[0]))
    assert len(reasons) == 1, reasons
    for threads in (1, 2):
        env = mpi_env(mine, shm_chroot, PYTHON_MPI_THREADS=threads)
        r = mpirun(1, ["-c", "pass"], env, timeout=120)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        lines = launcher_errors(r.stderr)
        assert len(lines) == 1, r.stderr
        reasons.add(_reason(lines[0]))
        base = os.path.dirname(shm_chroot)
        ready = [e for d in (os.listdir(base) if os.path.isdir(base) else [])
                 for e in os.listdir(os.path.join(base, d)) if e.startswith("env-")]
        assert ready == []  # nothing marked ready
    assert len(reasons) == 1, reasons


CHECK = r"""
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
a = np.linalg.solve(np.eye(3) * (c.rank + 2), np.ones(3))
tot = c.allreduce(float(a.sum()), op=MPI.SUM)
want = sum(3.0 / (r + 2) for r in range(c.size))
assert abs(tot - want) < 1e-9, (tot, want)
if c.rank == 0:
    print("OK", c.size, flush=True)
"""


@pytest.mark.parametrize("ranks,nodes", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_numpy_and_mpi4py_at_one_and_two_ranks_per_node(pkgroot, shm_chroot, ranks, nodes):
    env = mpi_env(pkgroot, shm_chroot, cliques=nodes, PYTHON_MPI_VERBOSE=3)
    r = mpirun(ranks, ["-c", CHECK], env, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"OK {ranks}", (r.stdout, r.stderr)
    used = threads_used(r.stderr)
    assert len(used) == ranks and all(n >= 1 for n in used), r.stderr
    if len(os.sched_getaffinity(0)) >= 2 and ranks == nodes:
        # one rank per node sees every CPU: more than one thread
        assert all(n >= 2 for n in used), r.stderr


@pytest.mark.parametrize("ranks,nodes,chunk", [(1, 1, None), (2, 1, None), (2, 1, "64k"),
                                               (2, 2, "1M")])
def test_one_large_shard_spanning_many_chunks(shm_chroot, tmp_path, ranks, nodes, chunk):
    """The ring of chunks: a slow worker (one big shard) and a quick one (the
    tail) must never read a buffer that is not yet, or no longer, its chunk."""
    import hashlib
    import sys
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(48 << 20)  # incompressible: 12 chunks of 4 MiB, hundreds of 64k
    (src / "data.bin").write_bytes(data)
    root = tmp_path / "pk"
    run([sys.executable, "-m", "python_mpi_bcast", "pack", "--directory", str(src), "-o", str(root),
         "-n", "big", "-q", "--level", "1"], timeout=300)
    extra = {"PYTHON_MPI_CHUNK": chunk} if chunk else {}
    env = mpi_env({"root": str(root)}, shm_chroot, cliques=nodes, packages="big.tar.zst", **extra)
    r = mpirun(ranks, ["--stage-only"], env, timeout=300)
    assert r.returncode == 0, r.stderr
    base = os.path.dirname(shm_chroot)
    trees = [os.path.join(base, d, e) for d in os.listdir(base)
             for e in os.listdir(os.path.join(base, d)) if e.startswith("env-")]
    assert len(trees) == nodes
    want = hashlib.sha256(data).hexdigest()
    for t in trees:
        with open(os.path.join(t, "data.bin"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want
