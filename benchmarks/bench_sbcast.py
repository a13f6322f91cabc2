"""Benchmark section 9: Slurm's own broadcast as the comparison point.

On the real Slurm cluster of the test suite (tests/support/slurm.py: one slurmd per
node, each node with its own /dev/shm), the same packages are staged into
node-local memory three ways, in one run, repeats interleaved:

  sbcast + tar     sbcast of each package to /dev/shm on every node, then
                   one task per node: tar --zstd -xf each, remove the copies
                   (what a careful user does without python-mpi-bcast)
  sbcast + unpack  the same copies, then python-mpi-bcast unpack per node
                   (the same tree, fixed up, as python-mpi stages)
  python-mpi       srun --mpi=pmi2 python-mpi --stage-only, 1 and 2 ranks
                   per node (rank 0 reads, MPI broadcasts, every rank unpacks)

next to an empty step (srun true: what Slurm's step launch alone costs),
and, in one extra traced run per method, the file-related system calls on
the package root: strace on the submitting commands (sbcast, srun) and
strace attached to every node's slurmd (following the step daemons and the
tasks they start).

    bash benchmarks/run.sh --only 9 [--quick]
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import time
import uuid

import filecalls  # benchmarks/filecalls.py: strace parsing
from helpers import BIN  # tests/helpers.py
from support import slurm  # tests/support/slurm.py: the cluster

from python_mpi_bcast.package import format as pkgformat, prefixes as relocate  # noqa: E402

TAR = "sbcast + tar --zstd -xf"
UNPACK = "sbcast + python-mpi-bcast unpack"
LAUNCH = "(srun true: step launch alone)"


def pmb(r: int) -> str:
    return f"python-mpi --stage-only, {r} rank{'s' if r > 1 else ''}/node"


def ranks(how: str) -> int:
    """Ranks per node of a python-mpi method (pmb's label)."""
    return int(how.split(", ")[1].split()[0])


def _rng(v: list[float]) -> str:
    return f"{statistics.median(v):.2f} [{min(v):.2f}–{max(v):.2f}]"


class Bench:
    """Allocations on a running cluster and the three ways of staging."""

    def __init__(self, cluster, pkgroot: str, packages: str, rpn: list[int], tmp: str):
        self.c = cluster
        self.pkgroot = pkgroot
        self.pkgs = packages.split(":")
        self.rpn = rpn
        self.tmp = tmp
        self.env = {"PATH": f"{BIN}:{os.environ['PATH']}"}
        self.jobs: dict[int, tuple[str, list[str]]] = {}  # nodes -> (job id, node names)

    # -- allocations ------------------------------------------------------
    def allocate(self, n: int):
        r = self.c.run(["salloc", "-N", str(n), f"--ntasks-per-node={max(self.rpn)}",
                        "--no-shell", "-J", f"bench{n}"], timeout=60, env=self.env)
        m = re.search(r"allocation (\d+)", r.stderr)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"salloc -N {n} failed: {r.stderr.strip()}")
        job = m.group(1)
        info = self.c.run(["scontrol", "-o", "show", "job", job], timeout=30).stdout
        nodelist = re.search(r" NodeList=(\S+)", info).group(1)
        names = self.c.run(["scontrol", "show", "hostnames", nodelist], timeout=30).stdout.split()
        self.jobs[n] = (job, names)

    def release(self):
        for job, _ in self.jobs.values():
            self.c.run(["scancel", job], timeout=30)
        self.jobs = {}

    # -- helpers ----------------------------------------------------------
    def run(self, args, env=None, prefix=()):
        r = self.c.run([*prefix, *args], timeout=600, env=dict(self.env, **(env or {})))
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-1500:]}")
        return r

    def timed(self, args, env=None) -> float:
        t0 = time.perf_counter()
        self.run(args, env=env)
        return time.perf_counter() - t0

    def srun(self, n: int, per_node: int, mpi: str = "none") -> list[str]:
        job, _ = self.jobs[n]
        return ["srun", "--jobid", job, "-N", str(n), f"--ntasks-per-node={per_node}",
                f"--mpi={mpi}", "-K"]

    def copies(self, tag: str) -> list[str]:
        return [f"/dev/shm/{tag}-{p}" for p in self.pkgs]

    def sbcast_cmds(self, n: int, tag: str) -> list[list[str]]:
        job, _ = self.jobs[n]
        return [["sbcast", "-j", job, "-f", os.path.join(self.pkgroot, p), dst]
                for p, dst in zip(self.pkgs, self.copies(tag))]

    def extract_cmd(self, n: int, tag: str, how: str) -> list[str]:
        dest = f"/dev/shm/{tag}"
        cps = [shlex.quote(c) for c in self.copies(tag)]
        if how == TAR:
            script = f"mkdir {dest} && " + " && ".join(
                f"tar --zstd -xf {c} -C {dest}" for c in cps)
        else:
            script = f"python-mpi-bcast unpack {' '.join(cps)} {dest}"
        script += f" && rm -f {' '.join(cps)}"
        return self.srun(n, 1) + ["sh", "-c", script]

    def stage_cmd(self, n: int, r: int, tag: str) -> tuple[list[str], dict]:
        env = {"PYTHON_MPI_PKGROOT": self.pkgroot, "PYTHON_MPI_PACKAGES": ":".join(self.pkgs),
               "PYTHON_MPI_CHROOT": f"/dev/shm/{tag}"}
        return self.srun(n, r, "pmi2") + ["python-mpi", "--stage-only"], env

    def tree(self, node: str, tag: str, how: str) -> str:
        path = self.c.node_path(node, f"/dev/shm/{tag}")
        if how.startswith("python-mpi"):  # the node directory holds one tree (and
            # beside it its records: .pmb-mpi-, .pmb-jobs-, .pmb-layers-<tree>)
            entries = [e for e in os.listdir(path) if not e.startswith(".")]
            assert len(entries) == 1, (node, os.listdir(path))
            path = os.path.join(path, entries[0])
        return path

    def clean(self, n: int, tag: str):
        for node in self.jobs[n][1]:
            base = self.c.node_path(node, "/dev/shm")
            for e in os.listdir(base):
                if e.startswith(tag):
                    p = os.path.join(base, e)
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

    # -- one measurement --------------------------------------------------
    def stage(self, n: int, how: str, tag: str) -> dict:
        """Stage with one method into /dev/shm/<tag> on the n nodes; seconds."""
        if how in (TAR, UNPACK):
            t_b = sum(self.timed(cmd) for cmd in self.sbcast_cmds(n, tag))
            t_x = self.timed(self.extract_cmd(n, tag, how))
            return {"total": t_b + t_x, "sbcast": t_b, "step": t_x}
        cmd, env = self.stage_cmd(n, ranks(how), tag)
        t = self.timed(cmd, env=env)
        return {"total": t, "step": t}

    # -- system calls on the package root -----------------------------------
    def traced(self, n: int, how: str, tag: str) -> dict:
        """Stage once with strace on the submitting commands and attached to
        every node's slurmd: calls on the package root and bytes read."""
        job, names = self.jobs[n]
        pids = self.c.slurmd_pids()
        label = f"tr{uuid.uuid4().hex[:8]}"
        trace = ["strace", "-ff", "-qq", "-y", "-e", "trace=%file,read,pread64,mmap", "-o"]
        tracers = []
        try:
            for node in names:
                p = subprocess.Popen(trace + [os.path.join(self.tmp, f"{label}-{node}"),
                                              "-p", str(pids[node])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                tracers.append(p)
                deadline = time.monotonic() + 10
                while not any(f.startswith(f"{label}-{node}.") for f in os.listdir(self.tmp)):
                    if time.monotonic() > deadline or p.poll() is not None:
                        raise RuntimeError(f"strace could not attach to the slurmd of {node}")
                    time.sleep(0.02)
            time.sleep(0.2)  # every thread attached
            client = trace + [os.path.join(self.tmp, f"{label}-client")]
            if how in (TAR, UNPACK):
                for cmd in self.sbcast_cmds(n, tag):
                    self.run(cmd, prefix=client)
                self.run(self.extract_cmd(n, tag, how), prefix=client)
            else:
                cmd, env = self.stage_cmd(n, ranks(how), tag)
                self.run(cmd, env=env, prefix=client)
        finally:
            for p in tracers:
                p.send_signal(signal.SIGINT)  # detach
            for p in tracers:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=30)
        roots = {self.pkgroot, os.path.realpath(self.pkgroot)}
        out = {}
        for who in ["client"] + names:
            out[who] = count_trace(self.tmp, f"{label}-{who}.", roots)
        return out


def count_trace(tmp: str, prefix: str, roots) -> tuple[int, int]:
    """(file calls naming a path under roots, bytes read or mapped from files
    under roots) over the strace -ff files tmp/prefix*, which are removed;
    parsed by filecalls (an execve's argument list is not a call on the
    paths it names; sbcast maps the file it sends instead of reading it)."""
    tasks = {}
    for name in sorted(os.listdir(tmp)):
        if name.startswith(prefix):
            path = os.path.join(tmp, name)
            task = filecalls.parse_file(path, None)
            tasks[task.tid] = task
            os.unlink(path)
    # strace -y names a traced process's descriptor by its path as the
    # tracer sees it; when the two are in a chroot and in different mount
    # namespaces (a node of the test cluster under ../shared/tools/fresh-debian)
    # that path is the file's location outside the chroot: cut it back
    for t in tasks.values():
        for ev in t.events:
            if not isinstance(ev, tuple):
                ev.paths = [_inside(p, roots) for p in ev.paths]
    calls, _, nbytes = filecalls.count_roots(tasks, roots)
    return calls, nbytes


def _inside(path: str, roots) -> str:
    for r in roots:
        at = path.find(r.rstrip("/") + "/")
        if at > 0:
            return path[at:]
    return path


# what python-mpi adds at the top of a staged tree, and 'unpack' at the top
# of the tree it made (its record: what 'unpack --force' may replace)
MARKERS = (".pmb-ready", ".python-mpi-bcast-unpack.json")


def file_list(tree: str) -> list[str]:
    """Every path of tree, relative, sorted; our own markers left out."""
    out = []
    for d, dirs, files in os.walk(tree):
        rel = os.path.relpath(d, tree)
        out += [os.path.normpath(os.path.join(rel, e)) for e in dirs + files]
    return sorted(p for p in out if p not in MARKERS)


def placeholders(tree: str) -> list[str]:
    """Files of tree still holding the pack-time prefix placeholder."""
    out = []
    for d, _, files in os.walk(tree):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p) and os.path.isfile(p):
                with open(p, "rb") as fh:
                    if relocate.PLACEHOLDER in fh.read():
                        out.append(os.path.relpath(p, tree))
    return sorted(out)


def measure(rep, cluster, pkgroot: str, packages: str, tmp: str, nodes=(1, 2, 4), reps: int = 5,
            rpn=(1, 2), trace=True) -> dict:
    """Section 9 on a running cluster; writes into rep (benchmarks/run.py's
    Report) and returns the figures, the file lists of each method's tree on
    every node and the placeholders plain tar leaves.  trace: True (every
    method), False or the methods to trace."""
    b = Bench(cluster, pkgroot, packages, list(rpn), tmp)
    methods = [TAR, UNPACK] + [pmb(r) for r in rpn]
    times = {(n, m): [] for n in nodes for m in methods + [LAUNCH]}
    lists: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
    left: dict[str, list[str]] = {}
    calls: dict[str, dict] = {}
    try:
        for n in nodes:
            b.allocate(n)
        for i in range(reps):  # interleaved: every node count and method once per repeat
            for n in nodes:
                for k, m in enumerate(methods):
                    tag = f"pmb-sbc-{uuid.uuid4().hex[:8]}"
                    try:
                        times[(n, m)].append(b.stage(n, m, tag))
                        if i == 0:
                            for node in b.jobs[n][1]:
                                lists[m][f"{n}:{node}"] = file_list(b.tree(node, tag, m))
                            if m in (TAR, UNPACK) and n == nodes[0]:
                                left[m] = placeholders(b.tree(b.jobs[n][1][0], tag, m))
                    finally:
                        b.clean(n, tag)
                t = b.timed(b.srun(n, 1) + ["true"])
                times[(n, LAUNCH)].append({"total": t, "step": t})
            print(f"  sbcast comparison, repeat {i + 1}/{reps}", flush=True)
        if trace and shutil.which("strace"):
            n = max(nodes)
            for m in methods if trace is True else trace:
                tag = f"pmb-sbc-{uuid.uuid4().hex[:8]}"
                try:
                    calls[m] = b.traced(n, m, tag)
                finally:
                    b.clean(n, tag)
    finally:
        b.release()

    # -- report -------------------------------------------------------------
    sizes = [os.path.getsize(os.path.join(pkgroot, p)) for p in b.pkgs]
    manifests = [pkgformat.read_manifest(os.path.join(pkgroot, p))[0] for p in b.pkgs]
    usize = sum(m.unpacked_size for m in manifests)
    nfiles = sum(m.files for m in manifests)
    kinds = [pf.mode for m in manifests for pf in m.prefix_files]
    rep.h("9. Slurm's sbcast + tar vs python-mpi on a Slurm cluster")
    rep.p(f"A real Slurm {slurm_version()} cluster on this machine (tests/support/slurm.py: "
          f"{len(cluster.names)} slurmd, each node with its own /dev/shm; all nodes share the "
          f"machine's {os.cpu_count()} cores and memory, so 'nodes' add work, not hardware). "
          f"Packages: {', '.join(b.pkgs)} ({sum(sizes) / 1e6:.1f} MB zstd, "
          f"{usize / 1e6:.1f} MB and {nfiles} files unpacked), from {pkgroot}. Staged into "
          f"/dev/shm of every node of one allocation per node count, median [min–max] of "
          f"{reps} interleaved repeats, wall seconds of the commands a user runs: "
          f"'{TAR}' = one `sbcast -f PKG /dev/shm/...` per package, then "
          f"`srun --ntasks-per-node=1 sh -c 'mkdir D && tar --zstd -xf ... && rm copies'`; "
          f"'{UNPACK}' = the same sbcast, then `python-mpi-bcast unpack` of the copies per node; "
          f"python-mpi = `srun --mpi=pmi2 --ntasks-per-node=R python-mpi --stage-only` "
          f"(includes starting the ranks and MPI). Every srun step also pays Slurm's step "
          f"launch, measured alone in the last row of each node count.\n")
    rows = []
    for n in nodes:
        ref = statistics.median(t["total"] for t in times[(n, pmb(rpn[0]))])
        for m in methods + [LAUNCH]:
            ts = times[(n, m)]
            tot = [t["total"] for t in ts]
            rows.append([n, m, _rng(tot),
                         _rng([t["sbcast"] for t in ts]) if "sbcast" in ts[0] else "",
                         _rng([t["step"] for t in ts]),
                         "" if m == LAUNCH else f"{statistics.median(tot) / ref:.2f}"])
    rep.table(["nodes", "method", "total s", "sbcast s", "srun step s",
               f"time / {pmb(rpn[0])}"], rows)
    same = len({tuple(v) for d in lists.values() for v in d.values()}) == 1
    rep.p(f"Same file list in every method's tree on every node: {'yes' if same else 'NO'} "
          f"(python-mpi adds its marker {', '.join(MARKERS)}, not counted).\n")
    if calls:
        n = max(nodes)
        names = sorted(k for k in next(iter(calls.values())) if k != "client")
        rows = []
        for m, c in calls.items():
            rows.append([m, f"{c['client'][0]} ({c['client'][1] / 1e6:.1f} MB)"]
                        + [f"{c[x][0]} ({c[x][1] / 1e6:.1f} MB)" for x in names])
        rep.p(f"Load on the package root, one traced run on {n} nodes: file-related system "
              f"calls (`strace -e trace=%file`) naming a path under the package root, and "
              f"MB read from it (read, or mapped: sbcast maps the file it sends). 'submit host' = the commands run there (sbcast, srun, under "
              f"`strace -ff`); per node = everything under that node's slurmd (`strace -ff -p`: "
              f"the step daemons, sbcast's file writer and the tasks).\n")
        rep.table(["method", "submit host"] + [f"node {x}" for x in names], rows)
    text = sum(k == "text" for k in kinds)
    binary = sum(k == "binary" for k in kinds)
    tar_left, fixed_left = left.get(TAR, []), left.get(UNPACK, [])
    pycs = all(p.endswith(".pyc") for p in fixed_left)
    rep.p(f"What plain `tar --zstd -xf` leaves: the manifests list {len(kinds)} file(s) whose "
          f"content holds the pack-time prefix placeholder ({text} text, {binary} binary), "
          f"to be replaced by the tree's location when it is unpacked. After tar, "
          f"{len(tar_left)} file(s) still hold it"
          + (f" ({', '.join(tar_left[:3])}{', ...' if len(tar_left) > 3 else ''})"
             if tar_left else "")
          + f"; after `python-mpi-bcast unpack`, {len(fixed_left)}"
          + (" (byte-code of a listed file, written with a checked hash: Python recompiles it "
             "because its source changed)" if fixed_left and pycs else "")
          + ". The interpreter finds its modules from its own location, so imports from a "
            "plain-tar tree work, but whatever reads a listed file gets a path that does not "
            "exist (here sysconfig: prefix, LIBDIR, compiler flags, which pip builds use); "
            "binary placeholders (conda packages: libraries and executables) are left "
            "unfixed too. The tree from plain tar has the same files but is not the tree "
            "python-mpi stages: before sysconfig, pip or (conda) binaries can use it, it needs "
            "the fixup that `python-mpi-bcast unpack` and python-mpi do.\n")
    return {"times": times, "lists": lists, "placeholders": left, "calls": calls,
            "methods": methods, "same": same}


def slurm_version() -> str:
    try:
        out = subprocess.run([shutil.which("slurmd") or "/usr/sbin/slurmd", "-V"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def bench(rep, pkgroot: str, packages: str, tmp: str, reps: int = 5, nodes=(1, 2, 4)) -> dict | None:
    """Section 9 for benchmarks/run.py: bring up the cluster, measure, tear down."""
    why = slurm.missing() or (None if shutil.which("sbcast") else "sbcast not installed")
    if why:
        rep.p(f"(section 9 skipped: no Slurm cluster: {why})")
        return None
    with slurm.Cluster(nodes=max(nodes), shm="2g") as cluster:
        return measure(rep, cluster, pkgroot, packages, tmp, nodes=nodes, reps=reps)
