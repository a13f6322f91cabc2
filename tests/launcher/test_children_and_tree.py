"""Interpreters started from the staged tree behave as the ranks do, and the
tree is only read (issue 24 items 3, 4, 5; issue 25 item 5).

- Children through ``sys.executable`` (``MPI.COMM_SELF.Spawn``,
  ``MPIPoolExecutor``, ``subprocess``) and the staged ``bin/python3`` run
  directly in a second job step map exactly the launcher's MPI library (read
  from ``/proc/self/maps``) and run from the staged tree, in embed and exec
  mode, with no setting and no ``LD_LIBRARY_PATH``.  Debian's Open MPI is on
  the default loader path here: a child that looked for "a libmpi" found it
  and hung.  With Debian's MPICH the launcher's library is named
  ``libmpich.so.12`` while the PyPI mpi4py wheel asks for ``libmpi.so.12``:
  the same holds there.
- ``-O``, ``-OO``, ``sysconfig`` and ``pip`` write nothing under the tree
  (strace of every process, and the tree's file list and times), and a
  second step then reuses the tree as it is.
- A ``numpy`` in a fake ``$HOME/.local`` does not shadow the packed one: a
  venv has no user site, and neither has the tree packed from it; a tree of
  the interpreter package alone keeps the user site, as ``python`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest

from helpers import LAUNCHER, MPIEXEC, base_python, config_prefix, mpi_env, run, tree_stat

import filecalls

VER = f"{sys.version_info[0]}.{sys.version_info[1]}"

# every process reports itself as one line "PROC {json}"
ME = r'''
import json, os, re, sys
def me(role):
    import mpi4py
    from mpi4py import MPI
    maps = {ln.split()[-1] for ln in open("/proc/self/maps") if "/" in ln}
    libs = sorted({os.path.realpath(p) for p in maps
                   if re.match(r"libmpi(ch)?(_[a-z]+)?\.so", os.path.basename(p))})
    return json.dumps({"role": role, "pid": os.getpid(), "exe": sys.executable,
                       "prefix": sys.prefix, "mpi4py": mpi4py.__file__, "libs": libs,
                       "mpi": MPI.Get_library_version().splitlines()[0]})
def say(*words):  # one write: lines of several processes never mix
    os.write(1, (" ".join(words) + "\n").encode())
'''

SPAWNED = ME + r'''
from mpi4py import MPI
parent = MPI.Comm.Get_parent()
parent.send(me("spawned"), dest=0)
parent.Disconnect()
'''

SPAWN = ME + r'''
from mpi4py import MPI

def pool_task(i):
    import time
    time.sleep(0.2)
    return me("pool")

if __name__ == "__main__":
    from mpi4py.futures import MPIPoolExecutor
    say("PROC", me("rank"))
    kids = MPI.COMM_SELF.Spawn(sys.executable, args=[__file__.replace("spawn.py", "spawned.py")],
                               maxprocs=2)
    for i in range(2):
        say("PROC", kids.recv(source=i))
    kids.Disconnect()
    with MPIPoolExecutor(max_workers=2) as ex:
        for line in ex.map(pool_task, range(6)):
            say("PROC", line)
'''

# a rank starts sys.executable as a program of its own (without the rank's
# PMI connection, as for any program a rank starts that initialises MPI)
SUBPROCESS = ME + r'''
import subprocess
if len(sys.argv) > 1:
    from mpi4py import MPI
    assert MPI.COMM_WORLD.size == 1
    say("PROC", me("subprocess"))
    sys.exit(0)
from mpi4py import MPI
env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPIR_", "OMPI_", "PMIX_", "PRTE_"))}
r = subprocess.run([sys.executable, __file__, "child"], env=env, capture_output=True,
                   text=True, timeout=120)
os.write(1, r.stdout.encode())
sys.stderr.write(r.stderr)
say("PROC", me("rank"))
sys.exit(r.returncode)
'''

ALLREDUCE = ME + r'''
import numpy
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(float(numpy.arange(10.0).sum()) * (c.rank + 1))
say("PROC", me("step2"))
if c.rank == 0:
    say("TOTAL", str(c.size), str(total))
'''


def launcher_mpi(launcher: str = LAUNCHER) -> str:
    r = run([launcher, "--pmb-info"], timeout=60)
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("mpi_file: ")]
    return os.path.realpath(line.split(": ", 1)[1])


def procs(out: str) -> list[dict]:
    return [json.loads(ln[5:]) for ln in out.splitlines() if ln.startswith("PROC ")]


def check_procs(out: str, lib: str, roles: dict):
    """Every process: the launcher's MPI library and nothing else, the staged
    interpreter and the staged mpi4py; as many of each role as expected."""
    ps = procs(out)
    assert ps, out
    trees = {p["prefix"] for p in ps}
    assert len(trees) == 1, trees
    (tree,) = trees
    assert tree.startswith("/dev/shm/") and os.path.basename(tree).startswith("env-"), tree
    for p in ps:
        assert p["libs"] == [lib], p
        assert re.fullmatch(rf"{re.escape(tree)}/bin/python(3|{VER})", p["exe"]), p
        assert p["mpi4py"].startswith(tree + "/"), p
    for role, n in roles.items():
        got = len({p["pid"] for p in ps if p["role"] == role})
        assert (got == n) if isinstance(n, int) else (got in n), (role, got, ps)
    return tree


def no_linker_path(env: dict) -> dict:
    env = dict(env)
    env.pop("LD_LIBRARY_PATH", None)
    env.pop("MPI4PY_LIBMPI", None)
    return env


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_spawned_children_and_pool_workers_use_the_launchers_mpi(pkgroot, shm_chroot, tmp_path,
                                                                 mode):
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN)
    (tmp_path / "spawned.py").write_text(SPAWNED)
    env = no_linker_path(mpi_env(pkgroot, shm_chroot, PYTHON_MPI_MODE=mode))
    r = run([MPIEXEC, "-n", "1", LAUNCHER, str(script)], env=env, timeout=240, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "suspicious MPI execution environment" not in r.stderr, r.stderr
    check_procs(r.stdout, launcher_mpi(), {"rank": 1, "spawned": 2, "pool": (1, 2)})
    assert all(p["mpi"].startswith("MPICH Version:") for p in procs(r.stdout)), r.stdout


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_a_subprocess_of_sys_executable_uses_the_launchers_mpi(pkgroot, shm_chroot, tmp_path,
                                                               mode):
    script = tmp_path / "sub.py"
    script.write_text(SUBPROCESS)
    env = no_linker_path(mpi_env(pkgroot, shm_chroot, PYTHON_MPI_MODE=mode))
    r = run([MPIEXEC, "-n", "2", LAUNCHER, str(script)], env=env, timeout=240, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    check_procs(r.stdout, launcher_mpi(), {"rank": 2, "subprocess": 2})


def test_second_step_runs_the_staged_python_with_the_launchers_mpi(pkgroot, shm_chroot,
                                                                   tmp_path):
    """jobscripts/two-step-job.sh: stage only, then the staged bin/python3 as
    the program of a second mpiexec, without LD_LIBRARY_PATH."""
    script = tmp_path / "step2.py"
    script.write_text(ALLREDUCE)
    env = no_linker_path(mpi_env(pkgroot, shm_chroot))
    r = run([MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=240)
    tree = r.stdout.strip()
    assert os.path.isdir(tree), r.stdout
    r = run([MPIEXEC, "-n", "3", f"{tree}/bin/python3", str(script)], env=env, timeout=240,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TOTAL 3 270.0" in r.stdout, r.stdout
    assert check_procs(r.stdout, launcher_mpi(), {"step2": 3}) == tree, r.stdout


def test_a_tree_used_without_a_launcher_leaves_mpi4py_to_itself(pkgroot, shm_chroot):
    """The record of the launcher's MPI goes with its tree: 'clean --all'
    removes both, and a tree whose record is gone imports mpi4py as a plain
    Python would (here: not the launcher's library)."""
    env = no_linker_path(mpi_env(pkgroot, shm_chroot))
    tree = run([MPIEXEC, "-n", "1", LAUNCHER, "--stage-only"], env=env, timeout=240).stdout.strip()
    node = os.path.dirname(tree)
    record = os.path.join(node, ".pmb-mpi-" + os.path.basename(tree))
    assert os.path.isfile(record), os.listdir(node)
    os.rename(record, record + ".away")
    r = run([f"{tree}/bin/python3", "-c", "import mpi4py; mpi4py.rc.initialize = False\n"
             "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"],
            env=env, timeout=120, check=False)
    assert "MPICH Version:" not in r.stdout, r.stdout + r.stderr
    os.rename(record + ".away", record)
    # (the test's own data home: no leftovers of other tests' killed commands)
    r = run([sys.executable, "-m", "python_mpi_bcast", "clean", "--all", node], timeout=120)
    assert r.stdout.splitlines() == [f"removed {tree}"], r.stdout
    assert not os.path.exists(node), os.listdir(node)


# ---- the tree is only read -------------------------------------------------

OPT = """
import sys, json, decimal, fractions, email.parser, xml.dom.minidom, csv
import numpy as np, numpy.linalg
from mpi4py import MPI
assert sys.flags.optimize == LEVEL, sys.flags.optimize
x = np.linalg.solve(np.eye(8) * 2, np.ones(8))
assert MPI.COMM_WORLD.allreduce(float(x.sum())) == 4.0 * MPI.COMM_WORLD.size
sys.stdout.write(f"TREE {sys.prefix}\\n")
"""

SYSCONFIG = """
import sys, sysconfig, subprocess
p = sysconfig.get_paths()
for k in ("stdlib", "purelib", "platlib", "scripts", "data"):
    assert (p[k] + "/").startswith(sys.prefix + "/"), (k, p[k], sys.prefix)
want = CONFIG_PREFIX or sys.prefix
for k in ("prefix", "exec_prefix", "LIBDIR", "BINDIR"):
    v = sysconfig.get_config_var(k)
    assert v and v.startswith(want), (k, v, want)
import importlib
d = importlib.import_module("_sysconfigdata_{abi}_{platform}_{multiarch}")
assert d.build_time_vars["prefix"] == want, (d.build_time_vars["prefix"], want)
# pip, as a rank (or a job step) would run it: reads sysconfig too
r = subprocess.run([sys.executable, "-m", "pip", "list", "--disable-pip-version-check",
                    "--no-index", "--format", "freeze"], capture_output=True, text=True,
                   timeout=120)
assert r.returncode == 0 and "numpy==" in r.stdout, r.stdout + r.stderr
sys.stdout.write(f"TREE {sys.prefix}\\n")
"""


def traced_run(args: list[str], env: dict, tmp_path) -> tuple[str, list[str], str]:
    tasks = filecalls.trace([MPIEXEC, "-n", "2", LAUNCHER] + args, env=env,
                            workdir=str(tmp_path), timeout=400)
    r = tasks[None]
    assert r.returncode == 0, r.stdout + r.stderr
    trees = set(re.findall(r"TREE (/\S+)", r.stdout))
    assert len(trees) == 1 and r.stdout.count("TREE ") == 2, r.stdout + r.stderr
    (tree,) = trees
    return tree, filecalls.writes_under(tasks, os.path.realpath(tree)), r.stderr


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed")
def test_optimize_flags_sysconfig_and_pip_write_nothing_into_the_tree(pkgroot, shm_chroot,
                                                                       tmp_path):
    env = no_linker_path(mpi_env(pkgroot, shm_chroot, HOME=str(tmp_path / "home")))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    r = run([MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=300)
    tree = r.stdout.strip()
    before = tree_stat(tree)
    # -O/-OO byte code is shipped only for what start-up imports before the
    # tree's start-up hook runs (and the hook): the rest compiles in memory
    opt = [p for p in before if re.search(r"\.opt-[12]\.pyc$", p)]
    assert len(opt) < 200 and f"lib/python{VER}/encodings/__pycache__/__init__.cpython-" \
        f"{VER.replace('.', '')}.opt-2.pyc" in opt, opt
    sysdata = [p for p in before if re.match(rf"lib/python{VER}/_sysconfigdata_.*\.py$", p)]
    assert sysdata, "no _sysconfigdata in the tree"
    # where the unpacker patched its source, a .pyc made at pack time would be
    # stale: none is shipped (Debian's python in /usr: nothing to patch, its
    # .pyc stays valid and is shipped)
    for sd in sysdata:
        with open(os.path.join(tree, sd), "rb") as f:
            patched = tree.encode() in f.read()
        pyc = f"{os.path.dirname(sd)}/__pycache__/{os.path.basename(sd)[:-3]}."
        assert not (patched and [p for p in before if p.startswith(pyc)]), (sd, sysdata)
    mod = os.path.basename(sysdata[0])[:-3]
    # the build's variables name the tree, except for Debian's python in /usr:
    # /usr there, as in any venv of it (a system prefix is never rewritten)
    prog_sys = SYSCONFIG.replace("_sysconfigdata_{abi}_{platform}_{multiarch}", mod) \
        .replace("CONFIG_PREFIX", repr(config_prefix(None)))
    cases = [["-O", "-c", OPT.replace("LEVEL", "1")], ["-OO", "-c", OPT.replace("LEVEL", "2")],
             ["-c", prog_sys]]
    for args in cases:
        ran_in, writes, err = traced_run(args, env, tmp_path)
        assert ran_in == tree, (ran_in, tree)
        assert writes == [], f"{args[:1]}: " + "\n".join(writes[:20])
    assert tree_stat(tree) == before
    # the next step takes the tree as it is
    r = run([MPIEXEC, "-n", "2", LAUNCHER, "-c", "import sys; sys.stdout.write(f'TREE {sys.prefix}\\n')"],
            env=dict(env, PYTHON_MPI_VERBOSE="1"), timeout=120)
    assert r.stdout.count(f"TREE {tree}\n") == 2, r.stdout
    assert "already staged on all 1 node(s)" in r.stderr, r.stderr
    assert tree_stat(tree) == before


def test_user_code_outside_the_tree_is_still_byte_compiled(pkgroot, shm_chroot, tmp_path):
    """Only the tree is kept from writes: a user's module in the working
    directory gets its __pycache__ as under python."""
    (tmp_path / "mymod.py").write_text("X = 42\n")
    env = mpi_env(pkgroot, shm_chroot)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    r = run([MPIEXEC, "-n", "1", LAUNCHER, "-c", "import mymod; print(mymod.X)"], env=env,
            timeout=120, cwd=str(tmp_path))
    assert r.stdout.strip() == "42"
    assert [f for f in os.listdir(tmp_path / "__pycache__") if f.startswith("mymod.")]


# ---- sys.path as the source had it ---------------------------------------

SYSPATH = """
import json, os, site, sys, subprocess
import numpy
child = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.path))"],
                       capture_output=True, text=True, timeout=60)
os.write(1, ("PATHS " + json.dumps({"numpy": numpy.__file__, "path": sys.path,
                                    "user": site.ENABLE_USER_SITE, "prefix": sys.prefix,
                                    "child": json.loads(child.stdout)}) + "\\n").encode())
"""


def fake_home(tmp_path) -> str:
    home = tmp_path / "home"
    shadow = home / ".local" / "lib" / f"python{VER}" / "site-packages" / "numpy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the numpy of ~/.local was imported')\n")
    return str(home)


def paths(out: str) -> list[dict]:
    return [json.loads(ln[6:]) for ln in out.splitlines() if ln.startswith("PATHS ")]


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_user_site_does_not_shadow_a_packed_venv(pkgroot, demo_venv, shm_chroot, tmp_path, mode):
    home = fake_home(tmp_path)
    # the source: the venv, with that HOME, has no user site
    src = run([os.path.join(demo_venv, "bin", "python"), "-c",
               "import json, site, sys; print(json.dumps([site.ENABLE_USER_SITE, sys.path[1:]]))"],
              env=dict(os.environ, HOME=home), timeout=60)
    user, src_path = json.loads(src.stdout)
    assert user is False and home not in src.stdout, src.stdout
    base_prefix = os.path.dirname(os.path.dirname(os.path.realpath(base_python())))
    env = mpi_env(pkgroot, shm_chroot, HOME=home, PYTHON_MPI_MODE=mode)
    r = run([MPIEXEC, "-n", "2", LAUNCHER, "-c", SYSPATH], env=env, timeout=180, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    ps = paths(r.stdout)
    assert len(ps) == 2, r.stdout
    for p in ps:
        tree = p["prefix"]
        assert p["numpy"].startswith(tree + "/"), p
        assert p["user"] is False, p
        assert not [d for d in p["path"] + p["child"] if d.startswith(home)], p
        assert p["child"] == p["path"], p
        # the venv's sys.path, moved to the tree; its site-packages is where the
        # tree's interpreter looks for packages (Debian's python in /usr:
        # local/lib/pythonX.Y/dist-packages)
        venv = os.path.realpath(demo_venv)
        moves = ((os.path.join(venv, "lib", f"python{VER}", "site-packages"),
                  os.path.dirname(os.path.dirname(p["numpy"]))), (venv, tree), (base_prefix, tree))

        def moved(d):
            for old, new in moves:
                if d == old or d.startswith(old + "/"):
                    return new + d[len(old):]
            return d
        assert p["path"][1:] == [moved(d) for d in src_path], (p, src_path)


def test_a_bare_interpreter_tree_keeps_the_user_site_as_python_does(pkgroot, shm_chroot,
                                                                    tmp_path):
    home = fake_home(tmp_path)
    src = run([base_python(), "-c", "import site; print(site.ENABLE_USER_SITE)"],
              env=dict(os.environ, HOME=home), timeout=60)
    assert src.stdout.strip() == "True"
    env = mpi_env(pkgroot, shm_chroot, HOME=home, packages=pkgroot["python"])
    r = run([MPIEXEC, "-n", "1", LAUNCHER, "-c",
             "import site, sys; print('USER', site.ENABLE_USER_SITE, site.getusersitepackages() "
             "in sys.path)"], env=env, timeout=120)
    assert "USER True True" in r.stdout, r.stdout + r.stderr


# ---- an MPI library under another name than mpi4py asks for --------------

def test_children_use_a_launcher_mpi_named_otherwise_than_mpi4py_asks(debian_mpich_launcher,
                                                                      pkgroot, shm_chroot,
                                                                      tmp_path):
    """A subprocess of a rank and a second step's staged python.  (Debian's
    MPICH 4.0 cannot MPI_Comm_spawn at all here, not even /bin/true.)"""
    (tmp_path / "sub.py").write_text(SUBPROCESS)
    (tmp_path / "step2.py").write_text(ALLREDUCE)
    debian_mpich = debian_mpich_launcher  # the launcher built against Debian's MPICH 4
    lib = launcher_mpi(debian_mpich)
    assert os.path.basename(lib).startswith("libmpich.so.12"), lib
    env = no_linker_path(mpi_env(pkgroot, shm_chroot))
    mpiexec = ["mpiexec.mpich", "-launcher", "fork"]
    r = run(mpiexec + ["-n", "2", debian_mpich, str(tmp_path / "sub.py")], env=env, timeout=240,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    tree = check_procs(r.stdout, lib, {"rank": 2, "subprocess": 2})
    r = run(mpiexec + ["-n", "2", debian_mpich, "--stage-only"], env=env, timeout=240)
    assert r.stdout.strip() == tree
    r = run(mpiexec + ["-n", "2", f"{tree}/bin/python3", str(tmp_path / "step2.py")], env=env,
            timeout=240, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TOTAL 2 135.0" in r.stdout, r.stdout
    check_procs(r.stdout, lib, {"step2": 2})


# ---- Open MPI 5 (PyPI) ------------------------------------------------------

def ompi_env(pkgroot, chroot, **extra) -> dict:
    from helpers import env_file
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "MPIR_", "LD_LIBRARY_PATH", "MPI4PY_"))}
    env.update(env_file("env.openmpi"))
    env.update(PYTHON_MPI_PKGROOT=pkgroot["root"],
               PYTHON_MPI_PACKAGES=f"{pkgroot['python']}:{pkgroot['env']}",
               PYTHON_MPI_CHROOT=chroot)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_spawned_children_use_the_launchers_open_mpi(ompi, pkgroot, shm_chroot, tmp_path, mode):
    (tmp_path / "spawn.py").write_text(SPAWN)
    (tmp_path / "spawned.py").write_text(SPAWNED)
    env = ompi_env(pkgroot, shm_chroot, PYTHON_MPI_MODE=mode)
    launcher = os.path.join(ompi, "bin", "python-mpi")
    r = run([os.path.join(ompi, "bin", "mpiexec"), "-n", "1", launcher,
             str(tmp_path / "spawn.py")], env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lib = os.path.realpath(os.path.join(ompi, "lib", "libmpi.so.40"))
    check_procs(r.stdout, lib, {"rank": 1, "spawned": 2, "pool": (1, 2)})
    assert all(p["mpi"].startswith("Open MPI v5") for p in procs(r.stdout)), r.stdout


def test_second_step_runs_the_staged_python_with_the_launchers_open_mpi(ompi, pkgroot, shm_chroot,
                                                                        tmp_path):
    """(Open MPI's own mpiexec puts its lib on the ranks' LD_LIBRARY_PATH.)"""
    script = tmp_path / "step2.py"
    script.write_text(ALLREDUCE)
    env = ompi_env(pkgroot, shm_chroot)
    mpiexec = os.path.join(ompi, "bin", "mpiexec")
    tree = run([mpiexec, "-n", "2", os.path.join(ompi, "bin", "python-mpi"), "--stage-only"],
               env=env, timeout=300).stdout.strip()
    r = run([mpiexec, "-n", "3", f"{tree}/bin/python3", str(script)], env=env, timeout=300,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TOTAL 3 270.0" in r.stdout, r.stdout
    lib = os.path.realpath(os.path.join(ompi, "lib", "libmpi.so.40"))
    assert check_procs(r.stdout, lib, {"step2": 3}) == tree, r.stdout
