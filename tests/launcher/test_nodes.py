"""What stays in node memory (launcher/nodes.c): a tree a running step uses
is never removed (clean-up, ``clean``, a damaged tree restaged), and what
jobs that are over left is given back by the next start.

MPICH cliques on this machine (fast); the same promises on the real Slurm
cluster are in test_slurm.py."""

from __future__ import annotations

import glob
import os
import re
import socket
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from helpers import LATE, LAUNCHER, MPIEXEC, mpi_env, mpirun, run

# The batch jobs of the tests whose steps build on an earlier step's tree:
# a process of each lives (the batch script, between steps), or any launcher
# start of this user on the machine (another test session's) could give the
# tree back between two steps, as one of a job that is over.
EDIT_JOB, LAYERS_JOB = (f"pmbt-{what}-{uuid.uuid4().hex[:8]}" for what in ("edit", "layers"))


@pytest.fixture(scope="module", autouse=True)
def batch_scripts():
    alive = [subprocess.Popen(["sleep", "3600"], env=dict(os.environ, SLURM_JOB_ID=job))
             for job in (EDIT_JOB, LAYERS_JOB)]
    yield
    for p in alive:
        p.kill()
        p.wait(timeout=30)


def wait_for(path, timeout=300):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.05)


class Late:
    """A run that uses its tree now and imports from it again later."""

    def __init__(self, env, tmp_path, ranks=2):
        self.started, self.go = tmp_path / f"started-{uuid.uuid4().hex[:6]}", tmp_path / "go"
        self.p = subprocess.Popen([MPIEXEC, "-n", str(ranks), LAUNCHER, "-c", LATE,
                                   str(self.started), str(self.go)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)

    def __enter__(self):
        try:
            wait_for(self.started)
        except BaseException:
            self.__exit__()
            raise
        return self

    def finish(self):
        self.go.touch()
        self.out, self.err = self.p.communicate(timeout=120)
        return self.p.returncode

    def __exit__(self, *exc):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=30)


def trees(node_dir):
    return sorted(glob.glob(os.path.join(node_dir, "env-*")))


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_cleanup_keeps_the_tree_a_concurrent_run_uses(pkgroot, shm_chroot, tmp_path, mode):
    """Clean-up in either mode (exec: the shim has the launcher remove the
    tree, exec_shim.c) keeps a tree another step holds, removes a free one."""
    env = mpi_env(pkgroot, shm_chroot, cliques=1)
    node0 = shm_chroot.replace("%n", "0")
    with Late(env, tmp_path) as a:
        b = mpirun(2, ["-c", "pass"], dict(env, PYTHON_MPI_CLEANUP="1", PYTHON_MPI_MODE=mode))
        assert b.returncode == 0, b.stderr
        assert re.search(r"^python-mpi: \S+ \(rank 0\): keeping \S+/env-[0-9a-f]{32}: another job "
                         r"step on this node runs from it$", b.stderr, re.M), b.stderr
        assert len(trees(node0)) == 1
        assert a.finish() == 0, a.err
    assert a.out.count("LATE OK") == 2, a.out
    # nobody holds it now: a run with clean-up removes it, and the node directory
    c = mpirun(2, ["-c", "pass"], dict(env, PYTHON_MPI_CLEANUP="1", PYTHON_MPI_MODE=mode))
    assert c.returncode == 0 and "keeping" not in c.stderr, c.stderr
    assert not os.path.exists(node0)


def test_exec_mode_ranks_hold_their_tree_across_exec(pkgroot, shm_chroot, tmp_path):
    env = mpi_env(pkgroot, shm_chroot, cliques=1, PYTHON_MPI_MODE="exec")
    node0 = shm_chroot.replace("%n", "0")
    with Late(env, tmp_path, ranks=2) as a:
        b = mpirun(2, ["-c", "pass"], dict(env, PYTHON_MPI_MODE="embed", PYTHON_MPI_CLEANUP="1"))
        assert b.returncode == 0, b.stderr
        assert "keeping" in b.stderr and len(trees(node0)) == 1, b.stderr
        assert a.finish() == 0, a.err
    assert a.out.count("LATE OK") == 2, a.out


def test_clean_all_keeps_the_tree_a_running_job_uses(pkgroot, shm_chroot, tmp_path):
    env = mpi_env(pkgroot, shm_chroot, cliques=1)
    node0 = shm_chroot.replace("%n", "0")
    cli = [sys.executable, "-m", "python_mpi_bcast", "clean", "--all", node0]
    with Late(env, tmp_path) as a:
        (tree,) = trees(node0)
        r = run(cli)
        assert r.stdout == f"kept {tree}: a running job step uses it\n", r.stdout
        assert trees(node0) == [tree]
        assert a.finish() == 0, a.err
    assert a.out.count("LATE OK") == 2, a.out
    r = run(cli)
    assert r.stdout == f"removed {tree}\n", r.stdout
    assert not os.path.exists(node0)


def test_damaged_tree_a_running_step_uses_is_staged_anew_beside_it(pkgroot, shm_chroot, tmp_path):
    env = mpi_env(pkgroot, shm_chroot, cliques=1, PYTHON_MPI_VERBOSE=2)
    node0 = shm_chroot.replace("%n", "0")
    with Late(env, tmp_path) as a:
        (tree,) = trees(node0)
        with open(os.path.join(tree, "stray.txt"), "w") as f:  # anything written into it
            f.write("x")
        # (one write per rank: print() writes its pieces apart, and the ranks' interleave)
        b = mpirun(2, ["-c", "import sys, numpy; sys.stdout.write('B %s\\n' % sys.prefix)"], env)
        assert b.returncode == 0, b.stderr
        # the line says where, as every launcher line: "python-mpi: HOST (rank R): "
        host = socket.gethostname().split(".")[0]
        assert re.search(rf"^python-mpi: {re.escape(host)} \(rank 0\): staged tree {tree}: "
                         rf"{tree}(/stray.txt)? was changed after staging; "
                         "staging a new tree beside it", b.stderr, re.M), b.stderr
        assert b.stdout.count(f"B {tree}.1\n") == 2, b.stdout
        assert trees(node0) == [tree, tree + ".1"]
        assert a.finish() == 0, a.err
    assert a.out.count(f"LATE OK {tree} 3") == 2, a.out  # still the old tree, untouched
    # nobody holds the damaged one now: the next run removes it and reuses the new one
    c = mpirun(2, ["-c", "import sys; sys.stdout.write('C %s\\n' % sys.prefix)"], env)
    assert c.returncode == 0, c.stderr
    assert re.search(rf"staged tree {tree}: .* was changed after staging; staging it again",
                     c.stderr) and "nothing read or sent" in c.stderr, c.stderr
    assert c.stdout.count(f"C {tree}.1\n") == 2, c.stdout
    assert trees(node0) == [tree + ".1"]


def test_the_next_job_gives_back_the_trees_of_jobs_that_are_over(pkgroot, tmp_path):
    """Batch jobs as the launcher sees them (SLURM_JOB_ID / PBS_JOBID in the
    ranks' environment), each with its own node directory: a job's tree
    stays while any process of that job lives on the node, and goes with the
    next start once none does."""
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:8]
    jobs = {"s1": ("SLURM_JOB_ID", f"{tag}1"), "s2": ("SLURM_JOB_ID", f"{tag}2"),
            "p1": ("PBS_JOBID", f"{tag}3.pbs"), "next": ("SLURM_JOB_ID", f"{tag}9")}

    def env(name):
        var, value = jobs[name]
        return mpi_env(pkgroot, f"{base}/{name}", cliques=1, PYTHON_MPI_VERBOSE=2, **{var: value})
    # a process of each job lives on the node (the batch script, between steps)
    alive = {name: subprocess.Popen(["sleep", "300"], env=dict(os.environ, **{var: value}))
             for name, (var, value) in jobs.items() if name != "next"}
    try:
        for name in ("s1", "s2", "p1"):
            r = mpirun(2, ["-c", "import numpy"], env(name))
            assert r.returncode == 0, r.stderr
            assert "reclaimed" not in r.stderr, r.stderr
        assert sorted(os.listdir(base)) == ["p1", "s1", "s2"]
        for name in ("s1", "p1"):  # these jobs end; s2 is between two steps
            alive[name].kill()
            alive[name].wait(timeout=30)
        r = mpirun(2, ["-c", "import numpy"], env("next"))
        assert r.returncode == 0, r.stderr
        assert "reclaimed 2 tree(s) of jobs that are over" in r.stderr, r.stderr
        assert sorted(os.listdir(base)) == ["next", "s2"]
        assert len(trees(f"{base}/s2")) == 1
        alive["s2"].kill()
        alive["s2"].wait(timeout=30)
        r = mpirun(2, ["-c", "import numpy"], env("next"))
        assert r.returncode == 0, r.stderr
        assert "reclaimed 1 tree(s)" in r.stderr and "nothing read or sent" in r.stderr, r.stderr
        assert sorted(os.listdir(base)) == ["next"]
    finally:
        for p in alive.values():
            p.kill()
            p.wait(timeout=30)
        run(["rm", "-rf", base], check=False)


def test_a_run_outside_a_batch_job_keeps_its_tree_for_the_next_run(pkgroot, shm_chroot):
    env = mpi_env(pkgroot, shm_chroot, cliques=1)
    env.pop("SLURM_JOB_ID", None)
    env.pop("PBS_JOBID", None)
    other = mpi_env(pkgroot, shm_chroot.replace("node-%n", "other"), cliques=1, SLURM_JOB_ID="1")
    assert mpirun(1, ["-c", "pass"], env).returncode == 0
    r = mpirun(1, ["-c", "pass"], other)  # another start: the plain tree is not over
    assert r.returncode == 0, r.stderr
    node0 = shm_chroot.replace("%n", "0")
    assert len(trees(node0)) == 1
    tree = trees(node0)[0]
    jobs = os.path.join(os.path.dirname(tree), ".pmb-jobs-" + os.path.basename(tree))
    with open(jobs) as f:  # beside the tree: a ready tree is never written
        assert f.read() == "none\n"


def test_an_edited_directory_layer_replaces_the_jobs_earlier_tree(pkgroot, shm_chroot, tmp_path):
    """``run --with-dir`` after an edit: the same layers, then a new
    directory layer.  The job keeps one tree per node: the earlier one goes
    when nobody holds it."""
    root = tmp_path / "pk"
    shutil.copytree(pkgroot["root"], root)
    src = tmp_path / "d"
    src.mkdir()
    for version in ("1", "2"):
        (src / "data.txt").write_text(version)
        run([sys.executable, "-m", "python_mpi_bcast", "pack", "--directory", str(src), "-o",
             str(root), "-n", f"data{version}", "-q"], timeout=300)
    base = dict(pkgroot, root=str(root))
    node0 = shm_chroot.replace("%n", "0")
    read = ["-c", "import os, sys; sys.stdout.write('DATA %s\\n' % "
            "open(os.environ['PYTHON_MPI_TREE'] + '/data.txt').read())"]
    env1 = mpi_env(base, shm_chroot, cliques=1, PYTHON_MPI_VERBOSE=1, SLURM_JOB_ID=EDIT_JOB,
                   packages=f"{pkgroot['python']}:{pkgroot['env']}:data1.tar.zst")
    env2 = dict(env1, PYTHON_MPI_PACKAGES=f"{pkgroot['python']}:{pkgroot['env']}:data2.tar.zst")
    r = mpirun(2, read, env1)
    assert r.returncode == 0 and r.stdout.count("DATA 1") == 2, r.stdout + r.stderr
    (first,) = trees(node0)
    with Late(env2, tmp_path) as a:  # version 2: version 1's tree is unheld, so it goes
        (second,) = trees(node0)
        assert second != first
        # version 1 again, while version 2 runs: staged again; version 2's tree is held, so it stays
        r = mpirun(2, read, env1)
        assert r.returncode == 0 and r.stdout.count("DATA 1") == 2, r.stdout + r.stderr
        assert trees(node0) == sorted([first, second])
        assert a.finish() == 0, a.err
    assert f"removed {first} (these layers before the last one changed)" in a.err, a.err
    assert a.out.count("LATE OK") == 2


# ---- an edited directory layer: only that layer travels (issue 25 item 4) ----

SENT = re.compile(r"python-mpi: stage: (\d+) package\(s\), ([\d.]+) MB sent, ([\d.]+) MB unpacked")
EARLIER = "copied on each node from its earlier tree"
# every rank: the edited data, and the environment's packages work
# (one write per rank: print() writes its pieces apart and mpiexec may interleave them)
READ = ("import os, sys, numpy; sys.stdout.write('DATA %s %d\\n' % (open(os.environ['PYTHON_MPI_TREE']"
        " + '/data.txt').read(), numpy.arange(4).sum()))")


def data_layers(pkgroot, tmp_path, versions=("1", "2")):
    """pkgroot plus one directory layer per version of data.txt (pack
    --directory, as a layer that changes between runs)."""
    root = tmp_path / "pk"
    shutil.copytree(pkgroot["root"], root)
    src = tmp_path / "d"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "same.txt").write_text("unchanged\n")
    for version in versions:
        (src / "data.txt").write_text(version)
        run([sys.executable, "-m", "python_mpi_bcast", "pack", "--directory", str(src), "-o",
             str(root), "-n", f"data{version}", "-q"], timeout=300)
    return dict(pkgroot, root=str(root))


def layered_env(base, chroot, version, **extra):
    return mpi_env(base, chroot, cliques=2, PYTHON_MPI_VERBOSE=1, SLURM_JOB_ID=LAYERS_JOB,
                   packages=f"{base['python']}:{base['env']}:data{version}.tar.zst", **extra)


def sent(stderr):
    m = SENT.search(stderr)
    assert m, stderr
    return float(m.group(2)), float(m.group(3))


def snapshot(tree):
    """Every entry of a tree: type, mode, mtime and content (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                what = ("l", os.readlink(p))
            elif os.path.isdir(p):
                what = ("d", st.st_mode)
            else:
                with open(p, "rb") as f:
                    what = ("f", st.st_mode, st.st_mtime_ns, f.read())
            out[os.path.relpath(p, tree)] = what
    return out


def test_an_edited_directory_layer_is_the_only_layer_sent(pkgroot, shm_chroot, tmp_path):
    """Two nodes run the data's first version, the data is edited, the next
    run sends only the new directory layer: each node builds the rest from
    its earlier tree, the ranks see the edit and the environment works, and
    each node keeps one tree."""
    base = data_layers(pkgroot, tmp_path)
    nodes = [shm_chroot.replace("%n", str(i)) for i in (0, 1)]
    r = mpirun(4, ["-c", READ], layered_env(base, shm_chroot, "1"))
    assert r.returncode == 0 and r.stdout.count("DATA 1 6") == 4, r.stdout + r.stderr
    full, _ = sent(r.stderr)
    assert full > 5, r.stderr  # the interpreter and numpy travel the first time
    first = [trees(n) for n in nodes]
    r = mpirun(4, ["-c", READ], layered_env(base, shm_chroot, "2"))
    assert r.returncode == 0 and r.stdout.count("DATA 2 6") == 4, r.stdout + r.stderr
    assert sent(r.stderr)[0] < 0.1, r.stderr  # only data2's few bytes
    assert re.search(r"the first 2 layer\(s\) \([\d.]+ MB\) " + EARLIER, r.stderr), r.stderr
    for node, before in zip(nodes, first):
        (tree,) = trees(node)
        assert [tree] != before
    # back to version 1: the same again, in the other direction
    r = mpirun(4, ["-c", READ], layered_env(base, shm_chroot, "1"))
    assert r.returncode == 0 and r.stdout.count("DATA 1 6") == 4, r.stdout + r.stderr
    assert sent(r.stderr)[0] < 0.1 and EARLIER in r.stderr, r.stderr
    assert [trees(n) for n in nodes] == first


def test_a_tree_built_from_the_earlier_tree_equals_one_staged_whole(pkgroot, shm_chroot, tmp_path):
    """Every file, link and directory (content, mode, mtime; the paths the
    packages patch name the new tree) is what staging all layers writes."""
    base = data_layers(pkgroot, tmp_path)
    node0 = shm_chroot.replace("%n", "0")
    assert mpirun(2, ["-c", "pass"], layered_env(base, shm_chroot, "1")).returncode == 0
    (old,) = trees(node0)
    # (Debian's python in /usr: its layers may name no tree path at all)
    named = any(old.encode() in v[-1] for v in snapshot(old).values() if v[0] == "f")
    r = mpirun(2, ["-c", READ], layered_env(base, shm_chroot, "2"))
    assert r.returncode == 0 and EARLIER in r.stderr, r.stderr
    (tree,) = trees(node0)
    built = snapshot(tree)
    assert built["data.txt"][-1] == b"2" and built[os.path.join("sub", "same.txt")][0] == "f"
    contents = [v[-1] for v in built.values() if v[0] == "f"]
    assert any(tree.encode() in c for c in contents) == named  # patched paths name the new tree
    assert not any(old.encode() in c for c in contents)
    for n in (0, 1):  # nothing to build from now: the next run stages every layer
        shutil.rmtree(shm_chroot.replace("%n", str(n)))
    r = mpirun(2, ["-c", READ], layered_env(base, shm_chroot, "2"))
    assert r.returncode == 0 and EARLIER not in r.stderr and sent(r.stderr)[0] > 5, r.stderr
    assert trees(node0) == [tree]
    staged = snapshot(tree)
    assert built.keys() == staged.keys()
    # the stamp holds the moment of staging; a patched file's mtime is when it was patched
    patched = {k for k, v in built.items() if v[0] == "f" and tree.encode() in v[-1]}
    assert [k for k in built if k != ".pmb-ready" and
            (built[k] if k not in patched else built[k][:2] + built[k][3:]) !=
            (staged[k] if k not in patched else staged[k][:2] + staged[k][3:])] == []


def test_a_node_without_the_earlier_tree_makes_every_layer_travel(pkgroot, shm_chroot, tmp_path):
    """One node lost its tree (or never had it): nobody builds locally, all
    layers are sent, and the result is the same on both nodes."""
    base = data_layers(pkgroot, tmp_path)
    nodes = [shm_chroot.replace("%n", str(i)) for i in (0, 1)]
    assert mpirun(4, ["-c", "pass"], layered_env(base, shm_chroot, "1")).returncode == 0
    shutil.rmtree(trees(nodes[1])[0])
    r = mpirun(4, ["-c", READ], layered_env(base, shm_chroot, "2"))
    assert r.returncode == 0 and r.stdout.count("DATA 2 6") == 4, r.stdout + r.stderr
    assert sent(r.stderr)[0] > 5 and EARLIER not in r.stderr, r.stderr
    assert [len(trees(n)) for n in nodes] == [1, 1]
    # the records beside the removed tree went with the next start; clean takes the rest
    for node in nodes:
        left = [e for e in os.listdir(node) if e.startswith(".pmb-") and "-env-" in e]
        assert left and all(os.path.isdir(os.path.join(node, e[e.index("env-"):])) for e in left), left
        assert any(e.startswith(".pmb-base-env-") for e in left), left
        r = run([sys.executable, "-m", "python_mpi_bcast", "clean", "--all", node])
        assert not os.path.exists(node), r.stdout + r.stderr


def test_the_earlier_tree_a_running_step_uses_stays_untouched(pkgroot, shm_chroot, tmp_path):
    """A step still runs from version 1's tree while version 2's is built
    from it: that step imports from it afterwards, and the tree is still
    intact (a later version-1 run reuses it, nothing sent)."""
    base = data_layers(pkgroot, tmp_path)
    node0 = shm_chroot.replace("%n", "0")
    env1 = layered_env(base, shm_chroot, "1")
    with Late(env1, tmp_path, ranks=4) as a:
        (first,) = trees(node0)
        r = mpirun(4, ["-c", READ], layered_env(base, shm_chroot, "2"))
        assert r.returncode == 0 and r.stdout.count("DATA 2 6") == 4, r.stdout + r.stderr
        assert sent(r.stderr)[0] < 0.1 and EARLIER in r.stderr, r.stderr
        assert first in trees(node0) and len(trees(node0)) == 2
        r = mpirun(4, ["-c", READ], env1)
        assert r.returncode == 0 and r.stdout.count("DATA 1 6") == 4, r.stdout + r.stderr
        assert "already staged on all 2 node(s)" in r.stderr, r.stderr
        assert a.finish() == 0, a.err
    assert a.out.count("LATE OK") == 4, a.out
