"""``python-mpi-bcast run LAUNCHER... python SCRIPT ARGS`` as a user runs it:
the env is packed into the cache only when its content changed, the line
runs with python-mpi (real MPI, numpy and mpi4py on every rank), --with-dir
stages the script's directory, --keep never removes what a running job
uses, and the line's exit status comes back."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from helpers import (BIN, CLI, FAKESSH, SBATCH_SIZE, copy_numpy, make_venv, make_wheel,
                     process_tree, read_line, readme_blocks, run, wait_gone)

SCRIPT = """import sys, numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
x = c.allreduce(float(np.arange(10.0).sum()))
if c.rank == 0:
    print(f"ran: {c.size} ranks, total {x}, prefix {sys.prefix}, args {sys.argv[1:]}")
"""


@pytest.fixture(scope="module")
def science(tmp_path_factory, demo_venv):
    """The module's venv with numpy + mpi4py, for the tests that do not
    change it (a venv costs seconds to make)."""
    venv = make_venv(str(tmp_path_factory.mktemp("venv") / "science"), [])
    copy_numpy(demo_venv, venv)
    return venv


@pytest.fixture(scope="module")
def shared_user(tmp_path_factory, science):
    """``user`` for the tests that leave its project as it is and need no
    empty cache: the venv is packed once here, the tests use that package
    (packing a venv with numpy costs seconds each time).  Its data home is
    its own too (a module fixture is set up before own_user_data)."""
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    tmp = tmp_path_factory.mktemp("shared-user")
    user = make_user(tmp, science, base + "/node-%n")
    user["env"]["XDG_DATA_HOME"] = str(tmp / "data")
    pmb_run(user, "-q", "mpiexec", "-n", "1", "python", "-c", "pass")
    yield user
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def user(tmp_path, science, shm_chroot):
    """A user of the module's venv (activated: VIRTUAL_ENV and PATH) with an
    empty cache of its own and a script in a project directory of its own."""
    return make_user(tmp_path, science, shm_chroot)


@pytest.fixture
def venv_user(tmp_path, demo_venv, shm_chroot):
    """``user`` with a venv of its own, for the tests that change it."""
    venv = make_venv(str(tmp_path / "science"), [])
    copy_numpy(demo_venv, venv)
    return make_user(tmp_path, venv, shm_chroot)


@pytest.fixture
def packed_user(user, shared_user):
    """``user`` whose cache already holds the venv's package (a copy of
    shared_user's: same venv, same content key), for the tests of what comes
    after packing (--with-dir)."""
    (e,) = entries(shared_user)
    os.makedirs(user["cache"])
    shutil.copyfile(os.path.join(shared_user["cache"], e), os.path.join(user["cache"], e))
    return user


def make_user(tmp_path, venv, chroot):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "x.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_", "SLURM_"))}
    env.update(VIRTUAL_ENV=venv, PATH=f"{venv}/bin:{BIN}:{env['PATH']}",
               PYTHON_MPI_BCAST_CACHE=str(tmp_path / "cache"), PYTHON_MPI_CHROOT=chroot,
               MPIR_CVAR_NUM_CLIQUES="2", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return {"venv": venv, "proj": str(proj), "env": env, "cache": str(tmp_path / "cache"),
            "tmp": tmp_path}


def pmb_run(user, *args, check=True, timeout=600, cwd=None):
    r = run(CLI + ["run", *args], env=user["env"], timeout=timeout, check=False,
            cwd=cwd or user["proj"])
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def entries(user, prefix="run-"):
    try:
        return sorted(f for f in os.listdir(user["cache"]) if f.startswith(prefix)
                      and f.endswith(".tar.zst"))
    except FileNotFoundError:
        return []


def ident(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def test_unchanged_env_is_not_repacked_and_a_changed_one_is(venv_user):
    user = venv_user
    r = pmb_run(user, "mpiexec", "-n", "2", "python", "x.py", "--its", "args")
    assert "ran: 2 ranks, total 90.0" in r.stdout and "args ['--its', 'args']" in r.stdout
    assert "/dev/shm/" in r.stdout  # sys.prefix: the staged tree, not the venv
    assert re.search(r"packing .*science into .*run-science-[0-9a-f]{16}\.tar\.zst", r.stderr)
    (first,) = entries(user)
    path = os.path.join(user["cache"], first)
    before = ident(path)
    # unchanged: not packed again (the same file, untouched)
    r = pmb_run(user, "mpiexec", "-n", "2", "python", "x.py")
    assert f"using cached package {path}" in r.stderr and "packing" not in r.stderr
    assert ident(path) == before and entries(user) == [first]
    # pip install: packed again, the new package is in the staged tree
    whl = make_wheel(str(user["tmp"] / "wheels"))
    run([os.path.join(user["venv"], "bin", "pip"), "install", "-q", whl], env=user["env"],
        timeout=300)
    # (one write per rank: print() writes its pieces apart, and the ranks' interleave)
    r = pmb_run(user, "mpiexec", "-n", "2", "python", "-c",
                "import pmbdemo, sys; sys.stdout.write('value %s %s\\n' % (pmbdemo.VALUE, sys.prefix))")
    assert "packing" in r.stderr and len(entries(user)) == 2
    assert r.stdout.count("value 42 /dev/shm/") == 2
    # uninstall: back to the first content, so the first package is used again
    run([os.path.join(user["venv"], "bin", "pip"), "uninstall", "-q", "-y", "pmbdemo"],
        env=user["env"], timeout=300)
    r = pmb_run(user, "mpiexec", "-n", "2", "python", "x.py")
    assert f"using cached package {path}" in r.stderr and ident(path) == before
    # an edited .pth file changes the key
    site = os.path.join(user["venv"], "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")
    with open(os.path.join(site, "extra.pth"), "w") as f:
        f.write("# nothing\n")
    r = pmb_run(user, "mpiexec", "-n", "2", "python", "x.py")
    assert "packing" in r.stderr and len(entries(user)) == 3


def test_repack_writes_the_package_again(shared_user):
    user = shared_user
    pmb_run(user, "mpiexec", "-n", "1", "python", "-c", "pass")
    (e,) = entries(user)
    before = ident(os.path.join(user["cache"], e))
    r = pmb_run(user, "--repack", "mpiexec", "-n", "1", "python", "-c", "pass")
    assert "packing" in r.stderr and entries(user) == [e]
    assert ident(os.path.join(user["cache"], e)) != before


def test_run_packs_at_the_level_given_and_says_how_far_it_is(user):
    """stderr is not a terminal (a batch job): packing says how far it is
    (a line when it starts, every few seconds, when it ends); -q: nothing.
    --level 1 and --level 10 of one environment: different sizes."""
    r = pmb_run(user, "--level", "1", "mpiexec", "-n", "1", "python", "-c", "pass")
    (e,) = entries(user)
    path = os.path.join(user["cache"], e)
    name = e[:-len(".tar.zst")]
    assert re.search(rf"^packing {name}: 0\.0 of about [\d.]+ MB, 0 of \d+ files", r.stderr,
                     re.M), r.stderr
    assert re.search(rf"^packing {name}: done, [\d.]+ MB, \d+ files in \d+ s", r.stderr,
                     re.M), r.stderr
    fast = os.path.getsize(path)
    r = pmb_run(user, "-q", "--repack", "--level", "10", "mpiexec", "-n", "1", "python", "-c",
                "pass")
    assert r.stderr == "" and entries(user) == [e]
    assert os.path.getsize(path) < fast * 0.95, (os.path.getsize(path), fast)


def test_with_dir_stages_the_scripts_directory(packed_user):
    user = packed_user
    proj = user["proj"]
    with open(os.path.join(proj, "helper.py"), "w") as f:
        f.write("WORD = 'from the helper'\n")
    with open(os.path.join(proj, "data.txt"), "w") as f:
        f.write("data next to the script\n")
    with open(os.path.join(proj, "main.py"), "w") as f:
        f.write("import os, sys, helper\nfrom mpi4py import MPI\n"
                "here = os.path.dirname(os.path.abspath(__file__))\n"
                "data = open(os.path.join(here, 'data.txt')).read().strip()\n"
                # one write per rank: with -u, print() writes each piece apart
                # and the two ranks' output could interleave
                "out = (MPI.COMM_WORLD.rank, helper.WORD, data, "
                "__file__.startswith(os.environ['PYTHON_MPI_TREE'] + '/pmb-run/proj/'),"
                " helper.__file__.startswith(os.environ['PYTHON_MPI_TREE']), sys.argv[1:])\n"
                "sys.stdout.write(' '.join(map(str, out)) + '\\n')\n")
    # from another directory, the script named by an absolute path
    r = pmb_run(user, "--with-dir", "mpiexec", "-n", "2", "python", "-u",
                os.path.join(proj, "main.py"), "a1", cwd=str(user["tmp"]))
    for rank in (0, 1):
        assert f"{rank} from the helper data next to the script True True ['a1']" in r.stdout, \
            r.stdout + r.stderr
    (d,) = entries(user, "rundir-proj-")
    # unchanged directory: not packed again; a changed file: packed again
    r = pmb_run(user, "--with-dir=" + proj, "mpiexec", "-n", "1", "python", "main.py")
    assert f"using cached package {os.path.join(user['cache'], d)}" in r.stderr
    time.sleep(0.01)
    with open(os.path.join(proj, "data.txt"), "w") as f:
        f.write("changed data\n")
    r = pmb_run(user, "--with-dir", "mpiexec", "-n", "1", "python", "main.py")
    assert "0 from the helper changed data True True []" in r.stdout
    assert len(entries(user, "rundir-proj-")) == 2
    r = pmb_run(user, "--with-dir", "mpiexec", "-n", "1", "python", "-c", "pass", check=False)
    assert r.returncode == 1 and "--with-dir needs a script" in r.stderr
    # exec mode (MPICH 5 allows it) runs the staged script too
    r = run(CLI + ["run", "--with-dir", "mpiexec", "-n", "2", "python", "main.py"],
            env=dict(user["env"], PYTHON_MPI_MODE="exec"), timeout=600, cwd=proj)
    assert r.stdout.count("from the helper changed data True True []") == 2, r.stdout + r.stderr


def test_an_edit_under_with_dir_sends_only_the_directory_layer(packed_user):
    """Two simulated nodes: after one data file of the script's directory
    is edited, the next run sends only the new directory layer (each node
    copies the environment from its earlier tree), every rank reads the
    edit with the environment's numpy, and each node keeps one tree."""
    user = packed_user
    proj = user["proj"]
    with open(os.path.join(proj, "data.txt"), "w") as f:
        f.write("first\n")
    with open(os.path.join(proj, "main.py"), "w") as f:
        f.write("import os, sys, numpy\nhere = os.path.dirname(os.path.abspath(__file__))\n"
                "data = open(os.path.join(here, 'data.txt')).read().strip()\n"
                "sys.stdout.write('read %s %d\\n' % (data, numpy.arange(4).sum()))\n")
    user["env"]["PYTHON_MPI_VERBOSE"] = "1"
    sent = re.compile(r"python-mpi: stage: 2 package\(s\), ([\d.]+) MB sent")
    r = pmb_run(user, "--with-dir", "mpiexec", "-n", "4", "python", "main.py")
    assert r.stdout.count("read first 6") == 4 and float(sent.search(r.stderr)[1]) > 5, r.stderr
    time.sleep(0.01)
    with open(os.path.join(proj, "data.txt"), "w") as f:
        f.write("edited\n")
    r = pmb_run(user, "--with-dir", "mpiexec", "-n", "4", "python", "main.py")
    assert r.stdout.count("read edited 6") == 4, r.stdout + r.stderr
    assert float(sent.search(r.stderr)[1]) < 0.1, r.stderr
    assert "the first 1 layer(s) (" in r.stderr and "copied on each node from its earlier tree" \
        in r.stderr, r.stderr
    chroot = user["env"]["PYTHON_MPI_CHROOT"]
    for n in (0, 1):
        node = chroot.replace("%n", str(n))
        assert len([e for e in os.listdir(node) if e.startswith("env-")]) == 1, os.listdir(node)


def test_keep_prunes_old_packages_but_not_one_a_running_job_holds(venv_user):
    user = venv_user
    site = os.path.join(user["venv"], "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")

    def change(i):  # a new size each time: a new key even where mtimes are coarse
        with open(os.path.join(site, "extra.pth"), "w") as f:
            f.write(f"# state {i}" + " " * i + "\n")

    change(0)
    # a job that runs for a while from the first package
    job = subprocess.Popen(CLI + ["run", "mpiexec", "-n", "1", "python", "-c",
                                  "import time; print('job up', flush=True); time.sleep(900)"],
                           env=user["env"], cwd=user["proj"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert read_line(job.stdout).startswith("running:")
        assert read_line(job.stdout).strip() == "job up"
        (held,) = entries(user)
        r = run(CLI + ["rm", held[:-len(".tar.zst")]], env=user["env"], timeout=60, check=False)
        assert r.returncode == 1 and "in use by a running job" in r.stderr
        for i in (1, 2, 3):
            change(i)
            time.sleep(0.01)
            pmb_run(user, "--keep", "2", "mpiexec", "-n", "1", "python", "-c", "pass")
        left = entries(user)
        assert held in left and len(left) == 3, left  # the 2 newest + the held one
    finally:
        ranks = process_tree(job.pid)
        os.killpg(job.pid, signal.SIGKILL)  # mpiexec: its proxy then ends the ranks
        job.communicate(timeout=60)
        wait_gone(ranks)  # the ranks' hold on the package goes with them
    change(4)
    r = pmb_run(user, "--keep", "1", "mpiexec", "-n", "1", "python", "-c", "pass")
    assert len(entries(user)) == 1 and "removed old package" in r.stderr


def test_dry_run_prints_the_line_and_the_exports_and_does_nothing(user):
    r = pmb_run(user, "--dry-run", "--with-dir", "mpiexec", "-n", "4", "python", "-u",
                "x.py", "--steps", "3")
    line = r.stdout.strip()
    m = re.fullmatch(r"would run: PYTHON_MPI_PACKAGES=run-science-[0-9a-f]{16}\.tar\.zst:"
                     r"rundir-proj-[0-9a-f]{16}\.tar\.zst PYTHON_MPI_PKGROOT=(\S+) "
                     r"PYTHON_MPI_TREE_ARG=2 mpiexec -n 4 (\S+) -u pmb-run/proj/x.py --steps 3",
                     line)
    assert m, line
    assert m.group(1) == user["cache"] and m.group(2) == os.path.join(BIN, "python-mpi")
    assert "would pack" in r.stderr and "environment: " + user["venv"] in r.stderr
    assert entries(user) == [] and entries(user, "rundir-") == []


def test_exit_status_passes_through_and_refusals_are_one_line(shared_user):
    user = shared_user
    r = pmb_run(user, "mpiexec", "-n", "1", "python", "-c", "import sys; sys.exit(3)",
                check=False)
    assert r.returncode == 3, r.stdout + r.stderr
    r = pmb_run(user, "mpiexec", "-n", "1", "python", "-c", "pass", check=False)
    assert r.returncode == 0
    for line, msg in ((["srun", "-n", "4", "./a.out"], "srun starts './a.out', not python"),
                      (["mpiexec", "-n", "2", "python", "x.py", ":", "-n", "2", "python", "y.py"],
                       "MPMD"),
                      (["bash", "-c", "python x.py"], "'bash' is not a launcher")):
        r = pmb_run(user, *line, check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr


def test_env_of_a_python_named_by_path_wins_over_the_active_one(user, tmp_path):
    other = make_venv(str(tmp_path / "other"), [])
    r = pmb_run(user, "--dry-run", "mpiexec", "-n", "1", os.path.join(other, "bin", "python3"),
                "x.py")
    assert f"environment: {other} (from the python named on the line" in r.stderr
    assert "run-other-" in r.stdout
    env = dict(user["env"])
    del env["VIRTUAL_ENV"]
    r = run(CLI + ["run", "--dry-run", "mpiexec", "-n", "1", "python3", "x.py"], env=env,
            timeout=120, cwd=user["proj"])
    assert f"environment: {user['venv']} (from python3 on PATH" in r.stderr
    env["PATH"] = f"{BIN}:/usr/bin:/bin"
    env["VIRTUAL_ENV"] = other
    r = run(CLI + ["run", "--dry-run", "mpiexec", "-n", "1", "python3", "x.py"], env=env,
            timeout=120, cwd=user["proj"])
    assert f"environment: {other} (from $VIRTUAL_ENV)" in r.stderr


def test_a_python_version_the_env_does_not_have_is_refused(shared_user):
    user = shared_user
    r = pmb_run(user, "--dry-run", "mpiexec", "-n", "1", "python3.99", "x.py", check=False)
    assert r.returncode == 1 and "the line asks for python3.99 but" in r.stderr
    assert r.stderr.count("\n") == 1


def test_launcher_tree_arg_bad_value_is_one_line(shared_user):
    user = shared_user
    from helpers import LAUNCHER, MPIEXEC
    env = dict(user["env"], PYTHON_MPI_TREE_ARG="x")
    r = run([MPIEXEC, "-n", "1", LAUNCHER, "-c", "pass"], env=env, timeout=120, check=False)
    assert r.returncode != 0 and "PYTHON_MPI_TREE_ARG='x' is not valid" in r.stderr


def test_conda_env(user, conda_env, shm_chroot):
    env = dict(user["env"], CONDA_PREFIX=conda_env, PATH=f"{conda_env}/bin:{BIN}:/usr/bin:/bin")
    del env["VIRTUAL_ENV"]
    r = run(CLI + ["run", "mpiexec", "-n", "2", "python", "x.py"], env=env, timeout=900,
            cwd=user["proj"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"environment: {conda_env} (from $CONDA_PREFIX)" in r.stderr
    assert "ran: 2 ranks, total 90.0" in r.stdout
    r = run(CLI + ["run", "mpiexec", "-n", "1", "python", "-c", "pass"], env=env, timeout=300,
            cwd=user["proj"])
    assert "using cached package" in r.stderr and "run-demo-" in r.stderr


def test_srun_on_the_slurm_cluster(shared_user, slurm_cluster):
    user = shared_user
    chroot = f"/dev/shm/pmbrun-{uuid.uuid4().hex[:10]}"
    env = dict(user["env"], PYTHON_MPI_CHROOT=chroot)
    try:
        for _ in range(2):
            r = slurm_cluster.run(CLI + ["run", "--with-dir", "srun", "-K", "-N", "2",
                                         "--ntasks-per-node=2", "python", "x.py", "--n", "1"],
                                  env=env, timeout=600, cwd=user["proj"])
            assert r.returncode == 0, r.stdout + r.stderr
            assert "ran: 4 ranks, total 180.0" in r.stdout and "args ['--n', '1']" in r.stdout
        assert "using cached package" in r.stderr
        staged = [n for n in slurm_cluster.names
                  if os.path.isdir(slurm_cluster.node_path(n, chroot))]
        assert len(staged) == 2
    finally:
        for n in slurm_cluster.names:
            shutil.rmtree(slurm_cluster.node_path(n, chroot), ignore_errors=True)


def test_an_edit_under_with_dir_in_a_slurm_job_sends_only_that_layer(packed_user, slurm_cluster):
    """A batch job on the Slurm cluster (2 nodes, each its own /dev/shm):
    run --with-dir, edit a data file, run again.  The second step sends
    only the directory layer, every rank reads the edit, and each node
    keeps one tree."""
    import shlex
    user = packed_user
    chroot = f"/dev/shm/pmbrun-{uuid.uuid4().hex[:10]}"
    proj = user["proj"]
    with open(os.path.join(proj, "main.py"), "w") as f:
        f.write("import os, sys, numpy\nhere = os.path.dirname(os.path.abspath(__file__))\n"
                "data = open(os.path.join(here, 'data.txt')).read().strip()\n"
                "sys.stdout.write('read %s %d\\n' % (data, numpy.arange(4).sum()))\n")
    cli = shlex.join(CLI + ["run", "--with-dir", "srun", "-K", "python", "main.py"])
    job = user["tmp"] / "edit-job.sh"
    job.write_text("#!/bin/bash\n#SBATCH -N 2 --ntasks-per-node=2\nset -e\n"
                   f"cd {shlex.quote(proj)}\necho first > data.txt\n{cli}\n"
                   f"echo edited > data.txt\n{cli}\n")
    env = dict(user["env"], PYTHON_MPI_CHROOT=chroot, PYTHON_MPI_VERBOSE="1")
    try:
        state, code, out = slurm_cluster.sbatch(str(job), env=env, timeout=600, cwd=proj)
        assert state == "COMPLETED" and code == 0, out
        assert out.count("read first 6") == 4 and out.count("read edited 6") == 4, out
        sent = [float(x) for x in re.findall(r"stage: 2 package\(s\), ([\d.]+) MB sent", out)]
        assert len(sent) == 2 and sent[0] > 5 and sent[1] < 0.1, out
        assert "the first 1 layer(s) (" in out and "copied on each node from its earlier tree" in out
        staged = {n: [e for e in os.listdir(slurm_cluster.node_path(n, chroot)) if e.startswith("env-")]
                  for n in slurm_cluster.names if os.path.isdir(slurm_cluster.node_path(n, chroot))}
        assert len(staged) == 2 and all(len(v) == 1 for v in staged.values()), staged
    finally:
        for n in slurm_cluster.names:
            shutil.rmtree(slurm_cluster.node_path(n, chroot), ignore_errors=True)


def test_two_runs_of_one_env_at_once_pack_it_once(user):
    procs = [subprocess.Popen(CLI + ["run", "mpiexec", "-n", "1", "python", "-c", "pass"],
                              env=user["env"], cwd=user["proj"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    errs = sorted(e for _, e in outs)
    assert sum("packing" in e for e in errs) == 1 and sum("using cached" in e for e in errs) == 1
    assert len(entries(user)) == 1


def test_readme_run_examples(sandbox, demo_venv):
    """The README's block as a batch job on the test cluster (2 nodes x 2)."""
    (block,) = readme_blocks("sh", "Without packing by hand: ``run``", "Configuration\n---")
    venv = make_venv(str(sandbox["home"] / "envs" / "science"), [])
    copy_numpy(demo_venv, venv)
    script = sandbox["tmp"] / "readme-run-job.sh"
    script.write_text("#!/bin/bash\nset -euo pipefail\ncd \"$PROJECT\"\n" + block + "\n")
    state, code, out = sandbox["cluster"].sbatch(str(script), SBATCH_SIZE, env=sandbox["env"],
                                                 cwd=str(sandbox["tmp"]), timeout=1200)
    assert (state, code) == ("COMPLETED", 0), out
    assert out.count("my_script: 4 ranks, total 4.0") == 3, out
    # the env once, the --with-dir layer once (each with its progress lines)
    assert len(re.findall(r"^packing \S+ into ", out, re.M)) == 2, out
    assert out.count("using cached package") >= 2
    assert re.search(r"would run: .* aprun -n 4096 -N 32 \S+/python-mpi my_script.py "
                     r"--its-args", out), out


@pytest.mark.parametrize("limit", [[], ["-genvnone"]])
def test_settings_reach_ranks_started_through_ssh(shared_user, limit):
    """Nodes started through (fake) ssh get a login's environment, not the
    caller's; hydra passes the caller's on, unless -genvnone: then run adds
    its settings as -genv pairs, and the job still stages and runs."""
    from support import slurm
    if os.geteuid() != 0 or slurm.mount_propagation() is None:
        pytest.skip("fakessh mounts a tmpfs per node: needs root and a private mount namespace")
    user = dict(shared_user, env=dict(shared_user["env"], PMB_FAKESSH_ENV="login"))
    r = pmb_run(user, "mpiexec", *limit, "-launcher", "ssh", "-launcher-exec", FAKESSH,
                "-iface", "lo", "-hosts", "a:2,b:2", "-n", "4", "python", "x.py", timeout=300)
    assert "ran: 4 ranks, total 180.0" in r.stdout, r.stdout + r.stderr
    if limit:
        assert re.search(r"running: .* mpiexec -genv PYTHON_MPI_BCAST_CACHE \S+ -genv "
                         r"PYTHON_MPI_CHROOT \S+ -genv PYTHON_MPI_PACKAGES run-\S+ -genv "
                         r"PYTHON_MPI_PKGROOT \S+ -genvnone", r.stdout), r.stdout


def test_quiet_run_says_nothing_before_the_line_even_when_it_cannot_reuse(user):
    """run -q says nothing before the line runs: also not the notes about
    the package's shard index (here: a file of its name that is not one,
    so the package gets none); warnings and errors still show."""
    pmb_run(user, "-q", "mpiexec", "-n", "1", "python", "-c", "pass")
    (e,) = entries(user)
    with open(os.path.join(user["cache"], e + ".shards"), "w") as f:
        f.write("not a shard index\n")
    r = pmb_run(user, "-q", "--repack", "mpiexec", "-n", "1", "python", "-c", "print('ran')")
    assert r.stderr == "" and r.stdout.splitlines()[-1] == "ran", (r.stdout, r.stderr)
    r = pmb_run(user, "--repack", "mpiexec", "-n", "1", "python", "-c", "pass")
    assert "cannot reuse its shards" in r.stderr, r.stderr  # without -q: the note
