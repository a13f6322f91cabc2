"""Saved environments (issue 10, part 1): save / list / load / activate /
rm / create as a user runs them, a saved environment launched straight from
the cache with python-mpi, and the failure paths (interrupted save, unknown
name, existing entry)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import (CLI, LAUNCHER, MPIEXEC, SBATCH_SIZE, copy_numpy, make_venv, make_wheel,
                     private_home, readme_blocks, run)

VER = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def user(tmp_path_factory, demo_venv):
    """A user's setting: private HOME, cache, scratch, and a venv with numpy
    that gets saved and then moved away."""
    base = tmp_path_factory.mktemp("cacheuser")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_", "SLURM_"))}
    private_home(env, base / "home")
    env.update({"TMPDIR": str(base / "scratch"),
                "PYTHON_MPI_BCAST_CACHE": str(base / "cache"), "PIP_NO_INDEX": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    os.makedirs(env["HOME"])
    os.makedirs(env["TMPDIR"])
    venv = make_venv(str(base / "myvenv"), [])
    copy_numpy(demo_venv, venv)
    run(CLI + ["save", "science", "--venv", venv, "-q"], env=env, timeout=900)
    away = str(base / "moved-away")
    os.rename(venv, away)
    yield {"base": str(base), "env": env, "venv": venv, "cache": env["PYTHON_MPI_BCAST_CACHE"],
           "scratch": os.path.join(env["TMPDIR"], "python-mpi-bcast"), "wheels": str(base / "wh")}
    os.rename(away, venv)


def cli(user, *args, check=True, timeout=300, **extra):
    env = dict(user["env"], **extra)
    return run(CLI + list(args), env=env, timeout=timeout, check=check)


def test_list_shows_saved_environments(user):
    r = cli(user, "list")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("science ")][0]
    assert f" {VER} " in line and line.rstrip().endswith(user["venv"])
    e = json.loads(cli(user, "list", "--json").stdout)[0]
    assert e["name"] == "science" and e["python"] == VER and e["source"] == user["venv"]
    assert e["packages"] >= 3 and e["size"] == os.path.getsize(e["path"])


def test_load_under_new_name_runs_numpy_with_the_original_gone(user):
    r = cli(user, "load", "science", "--as", "analysis")
    tree = r.stdout.strip()
    assert tree == os.path.join(user["scratch"], "analysis")
    code = ("import numpy, sys; print(sys.prefix, round(numpy.linalg.det(numpy.eye(3) * 2), 9))")
    out = run(["bash", "-c", f'source "{tree}/bin/activate" && python3 -c "{code}"'],
              env=user["env"], timeout=120).stdout.split()
    assert out == [tree, "8.0"]


def test_saved_env_launches_from_the_cache_on_two_nodes(user, shm_chroot):
    env = dict(user["env"], PYTHON_MPI_PKGROOT=user["cache"],
               PYTHON_MPI_PACKAGES="science.tar.zst", PYTHON_MPI_CHROOT=shm_chroot,
               MPIR_CVAR_NUM_CLIQUES="2")
    prog = ("from mpi4py import MPI; import numpy, sys; c = MPI.COMM_WORLD; "
            "sys.stdout.write('%d\\n' % c.allreduce(int(numpy.ones(3).sum())))")
    r = run([MPIEXEC, "-n", "4", LAUNCHER, "-c", prog], env=env, timeout=180, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["12"] * 4


def test_activate_prints_code_for_eval_and_the_prompt_marks_changes(user):
    tree = cli(user, "load", "science", "--as", "act").stdout.strip()
    code = cli(user, "activate", "act").stdout
    assert code == f"source '{tree}/bin/activate'\n"
    site = json.load(open(os.path.join(tree, ".python-mpi-bcast-load.json")))["site_dir"]
    script = (f'PS1="$ "; eval "$(python-mpi-bcast activate act)"; echo "[${{PS1@P}}]"; '
              f'mkdir "{tree}/{site}/x-1.dist-info"; echo "[${{PS1@P}}]"; '
              f'deactivate; echo "[${{PS1@P}}]"')
    env = dict(user["env"], PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])
    time.sleep(1.1)  # the marker compares the site directory's mtime in seconds
    out = run(["bash", "-c", script], env=env, timeout=120).stdout.splitlines()
    assert out == ["[(act) $ ]", "[(act*) $ ]", "[$ ]"]


def test_installing_into_a_loaded_env_marks_it_dirty_until_saved(user):
    tree = cli(user, "load", "science", "--as", "dirty").stdout.strip()
    whl = make_wheel(user["wheels"])
    run([os.path.join(tree, "bin", "python3"), "-m", "pip", "install", "-q", whl],
        env=user["env"], timeout=300)
    r = cli(user, "list", PYTHON_MPI_BCAST_LOADED=tree, PYTHON_MPI_BCAST_NAME="science")
    assert "loaded copy changed since saved" in r.stdout
    # saving the loaded tree (the active environment) stores the change ...
    r = cli(user, "save", "science2", "-q", PYTHON_MPI_BCAST_LOADED=tree, timeout=900)
    assert "saved " + tree in r.stdout
    # ... and a copy loaded from the new entry has the new package
    t2 = cli(user, "load", "science2").stdout.strip()
    r = run([os.path.join(t2, "bin", "python3"), "-c", "import pmbdemo, numpy; print(pmbdemo.VALUE)"],
            env=user["env"], timeout=60)
    assert r.stdout.strip() == "42"
    e = {x["name"]: x for x in json.loads(cli(user, "list", "--json").stdout)}
    assert e["science2"]["packages"] == e["science"]["packages"] + 1


def test_save_refuses_to_replace_without_force(user):
    r = cli(user, "save", "science", "--venv", user["base"] + "/moved-away", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("python-mpi-bcast: error: a saved environment 'science' already "
                               "exists") and "-f" in r.stderr


def test_killed_save_leaves_the_previous_entry_intact(user, demo_venv, tmp_path):
    path = os.path.join(user["cache"], "science.tar.zst")
    with open(path, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    env = dict(user["env"])
    p = subprocess.Popen(CLI + ["save", "science", "-f", "-q", "--venv", demo_venv], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            # the package's temporary file (the shards go straight into it)
            if any(f.startswith(".science.tar.zst.") for f in os.listdir(user["cache"])):
                break
            time.sleep(0.005)
        assert p.poll() is None, "save finished before it could be interrupted"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    r = cli(user, "list")
    assert "science " in r.stdout and "damaged" not in r.stdout
    # the killed save's partial file is not an entry
    assert all(not ln.startswith(".") for ln in r.stdout.splitlines())
    # the next command that sweeps (here clean, of an empty node directory)
    # removes what the killed save left, and says so: no later test sees it
    r = cli(user, "clean", str(tmp_path))
    assert "(left by a killed 'save'" in r.stdout, r.stdout
    assert not [f for f in os.listdir(user["cache"]) if f.startswith(".science.tar.zst.")]


def test_load_of_an_unknown_name_lists_the_saved_ones(user):
    r = cli(user, "load", "nope", check=False)
    assert r.returncode == 1
    assert "no saved environment 'nope'" in r.stderr and "science" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_load_into_an_existing_copy_is_refused(user):
    cli(user, "load", "science", "--as", "twice")
    r = cli(user, "load", "science", "--as", "twice", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr and "--as" in r.stderr


def test_load_force_never_replaces_a_directory_load_did_not_make(user, tmp_path):
    """load --to DIR --force with DIR holding someone's work (never an
    environment): refused in one line, the first refusal suggests nothing
    destructive, and the work is untouched.  A copy load made is replaced."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{Results}\n")
    for extra in ([], ["--force"]):
        r = cli(user, "load", "science", "--to", str(thesis), *extra, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip() == (f"python-mpi-bcast: error: {thesis} already exists and is "
                                    f"not an environment loaded by python-mpi-bcast; it was left "
                                    f"as it is: choose a --to that does not exist yet")
        assert os.listdir(thesis) == ["thesis.tex"]
        assert (thesis / "thesis.tex").read_text() == "\\chapter{Results}\n"
    # a file, a link to a directory, and a name in scratch that load did not make
    (tmp_path / "notes.txt").write_text("mine\n")
    os.symlink(thesis, tmp_path / "link")
    for target in ("notes.txt", "link"):
        r = cli(user, "load", "science", "--to", str(tmp_path / target), "--force", check=False)
        assert r.returncode == 1 and "not an environment loaded by" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and os.path.islink(tmp_path / "link")
    os.makedirs(os.path.join(user["scratch"], "mine"))
    open(os.path.join(user["scratch"], "mine", "data.h5"), "w").close()
    r = cli(user, "load", "science", "--as", "mine", "--force", check=False)
    assert r.returncode == 1 and "load under another name with --as" in r.stderr
    assert os.listdir(os.path.join(user["scratch"], "mine")) == ["data.h5"]
    # what load made, --force replaces
    copy = str(tmp_path / "copy")
    cli(user, "load", "science", "--to", copy)
    open(os.path.join(copy, "added-by-me"), "w").close()
    r = cli(user, "load", "science", "--to", copy, check=False)
    assert r.returncode == 1 and "--force" in r.stderr
    cli(user, "load", "science", "--to", copy, "--force")
    assert not os.path.exists(os.path.join(copy, "added-by-me"))
    assert run([os.path.join(copy, "bin", "python"), "-c", "import numpy"], timeout=60)


def test_save_force_never_replaces_what_is_not_a_saved_package(user, tmp_path):
    """save NAME --force where the cache holds NAME.tar.zst that is a
    directory or no package: refused in one line, untouched."""
    os.makedirs(os.path.join(user["cache"], "dirname.tar.zst"))
    open(os.path.join(user["cache"], "dirname.tar.zst", "keep"), "w").close()
    with open(os.path.join(user["cache"], "notes.tar.zst"), "w") as f:
        f.write("mine\n")
    for name in ("dirname", "notes"):
        r = cli(user, "save", name, "--venv", user["base"] + "/moved-away", "-f", "-q",
                check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "not a python-mpi-bcast package" in r.stderr and "left as it is" in r.stderr
        tmpdir = os.path.dirname(user["scratch"])  # a refused save leaves no temporary
        assert not [n for n in os.listdir(tmpdir) if n.startswith("pmb-stage-")], os.listdir(tmpdir)
    assert os.listdir(os.path.join(user["cache"], "dirname.tar.zst")) == ["keep"]
    assert open(os.path.join(user["cache"], "notes.tar.zst")).read() == "mine\n"
    shutil.rmtree(os.path.join(user["cache"], "dirname.tar.zst"))
    os.remove(os.path.join(user["cache"], "notes.tar.zst"))


def test_rm_removes_an_entry(user):
    shutil.copy(os.path.join(user["cache"], "science.tar.zst"),
                os.path.join(user["cache"], "gone.tar.zst"))
    assert "removed" in cli(user, "rm", "gone").stdout
    assert not os.path.exists(os.path.join(user["cache"], "gone.tar.zst"))
    r = cli(user, "rm", "gone", check=False)
    assert r.returncode == 1 and "no saved environment 'gone'" in r.stderr


def test_create_makes_a_venv_in_scratch(user):
    r = cli(user, "create", VER, "fresh")
    assert r.stdout.strip() == os.path.join(user["scratch"], "fresh")
    assert os.path.exists(os.path.join(user["scratch"], "fresh", "pyvenv.cfg"))
    r = cli(user, "create", "3.99", "nothere", check=False)
    assert r.returncode == 1 and "python3.99 is not on PATH" in r.stderr
    r = cli(user, "create", "3.11", "bad/name", check=False)
    assert r.returncode == 1 and "invalid environment name" in r.stderr


def test_save_without_an_active_environment(user):
    r = cli(user, "save", "x", check=False)
    assert r.returncode == 1 and "no active environment" in r.stderr


def test_cache_and_wheelhouse_locations_follow_the_documented_precedence(tmp_path):
    """default < config file < environment variable < flag."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_BCAST_", "XDG_"))}
    env["HOME"] = str(home)
    where = lambda *a: run(CLI + list(a), env=env, timeout=60).stdout.strip()  # noqa: E731
    assert where("list") == f"no saved environments in {home}/.local/share/python-mpi-bcast/envs"
    assert where("wheelhouse", "path") == f"{home}/.local/share/python-mpi-bcast/wheelhouse"
    cfg = home / ".config" / "python-mpi-bcast" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[cache]\ndir = "/proj/a/envs"\n[shell]\ncompute_hosts = ["nid*"]\n')
    assert where("list") == "no saved environments in /proj/a/envs"
    assert where("wheelhouse", "path") == "/proj/a/wheelhouse"
    assert "nid*) return 0" in where("shell-init", "bash")
    env["PYTHON_MPI_BCAST_CACHE"] = "/proj/b/envs"
    assert where("list") == "no saved environments in /proj/b/envs"
    assert where("list", "--cache", "/proj/c") == "no saved environments in /proj/c"
    cfg.write_text('[cache]\ndir = "relative"\n')
    del env["PYTHON_MPI_BCAST_CACHE"]
    r = run(CLI + ["list"], env=env, timeout=60, check=False)
    assert r.returncode == 1 and "must be an absolute path" in r.stderr


def test_readme_saved_environments_and_migrate(sandbox, demo_venv, tmp_path):
    save, mig = readme_blocks("sh", "Saved environments: ``save``", "``pip`` on compute nodes")
    scratch = tmp_path / "scratch"
    venv = make_venv(str(scratch / "envs" / "old"), [])
    copy_numpy(demo_venv, venv)
    env = dict(sandbox["env"], VENV=demo_venv, SCRATCH=str(scratch),
               TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(env["TMPDIR"])
    script = sandbox["tmp"] / "readme-save-job.sh"   # run as a batch job on the test cluster
    script.write_text("#!/bin/bash\nset -euo pipefail\ncd \"$PROJECT\"\n" + save + "\n")
    state, code, out = sandbox["cluster"].sbatch(str(script), SBATCH_SIZE, env=env,
                                                 cwd=str(sandbox["tmp"]), timeout=1200)
    assert (state, code) == ("COMPLETED", 0), out
    lines = out.strip().splitlines()
    assert any(ln.startswith("saved ") for ln in lines)
    assert any(ln.startswith("science ") for ln in lines)
    assert "my_script: 4 ranks, total 4.0" in out
    assert lines[-1][:1].isdigit()  # numpy's version, from the loaded copy
    r = run(["bash", "-c", "set -euo pipefail\n" + mig], env=env, timeout=1200, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.exists(os.path.join(sandbox["home"], "envs", "old", "pyvenv.cfg"))
    assert not os.path.exists(venv)


def test_readme_offline_pip(sandbox, tmp_path):
    (block,) = readme_blocks("sh", "``pip`` on compute nodes", "Start modes\n---")
    steps = [ln.split("  #")[0].strip() for ln in block.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(steps) == 3
    user_venv = make_venv(str(tmp_path / "uv"), [])
    env = dict(sandbox["env"], PATH=os.path.join(user_venv, "bin") + ":" + sandbox["env"]["PATH"],
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    outs = []
    for step in steps:   # login node, login node, then a job (SLURM_JOB_ID is set there)
        e = dict(env) if step.startswith("bash -ic") else {
            k: v for k, v in env.items() if k != "SLURM_JOB_ID"}
        r = run(["bash", "-c", step], env=e, timeout=900, check=False,
                stdin=subprocess.DEVNULL)
        assert r.returncode == 0, step + "\n" + r.stdout + r.stderr
        outs.append(r.stdout + r.stderr)
    wheelhouse = os.path.join(sandbox["home"], ".local/share/python-mpi-bcast/wheelhouse")
    assert [f for f in os.listdir(wheelhouse) if f.startswith("mpi4py-")]
    assert "Looking in indexes" not in outs[2] and "Looking in links" in outs[2]
    run([os.path.join(user_venv, "bin", "python"), "-c", "import mpi4py"], timeout=60)
