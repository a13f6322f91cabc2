"""migrate (issue 10, part 2): environments leave a storage area only after
their copy checks out; nothing is lost whatever happens."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import CLI, make_venv, run
from test_cache import copy_numpy

import condaenv


@pytest.fixture
def scratch(tmp_path, demo_venv):
    """$SCRATCH/envs with a conda env, a venv with numpy, a directory that is
    no environment and a venv whose base interpreter is gone; a HOME whose
    .bashrc names two of them."""
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    root = tmp_path / "scratch"
    prefix = condaenv.build(str(root), sys.executable, [])   # root/envs/demo
    envs = os.path.dirname(prefix)
    sci = make_venv(os.path.join(envs, "sci"), [])
    copy_numpy(demo_venv, sci)
    os.makedirs(os.path.join(envs, "junk", "data"))
    broken = os.path.join(envs, "broken")
    os.makedirs(os.path.join(broken, "bin"))
    with open(os.path.join(broken, "pyvenv.cfg"), "w") as f:
        f.write("home = /nonexistent/python/bin\nversion = 3.11.0\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f"# mine\nsource {sci}/bin/activate\n"
                                  f"export DATA={envs}/demo-data\nconda activate {prefix}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_"))}
    env["HOME"] = str(home)
    return {"envs": envs, "conda": prefix, "sci": sci, "home": str(home), "env": env,
            "new": str(tmp_path / "new")}


def migrate(s, *args, check=False, **kw):
    return run(CLI + ["migrate", "-d", s["envs"]] + list(args), env=s["env"], timeout=1200,
               check=check, **kw)


def test_migrate_moves_valid_envs_and_removes_sources_only_after_checks(scratch):
    s = scratch
    r = migrate(s, "--all", "--to", s["new"], "--update-rc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid:    demo (conda)" in r.stdout and "valid:    sci (venv)" in r.stdout
    assert "INVALID:  junk" in r.stdout and "not a venv" in r.stdout
    assert "INVALID:  broken (venv)" in r.stdout and "base interpreter is gone" in r.stdout
    assert r.stdout.count("the copy matches (distributions, files, contents, imports)") == 2
    # sources gone, copies work from their new place
    assert not os.path.exists(s["sci"]) and not os.path.exists(s["conda"])
    new_sci, new_conda = os.path.join(s["new"], "sci"), os.path.join(s["new"], "demo")
    out = run([os.path.join(new_sci, "bin", "python"), "-c",
               "import numpy, sys; print(sys.prefix, numpy.eye(2).sum())"], timeout=60).stdout
    assert out.split() == [new_sci, "2.0"]
    out = run([os.path.join(new_conda, "bin", "python3"), "-c",
               "import sys, pmbdemo_py; print(sys.prefix)"], timeout=60).stdout
    assert out.strip() == new_conda
    run([os.path.join(new_conda, "bin", "pmbdemo")], timeout=60)  # the ELF with the placeholder
    assert os.path.exists(os.path.join(s["envs"], "junk"))  # invalid ones are left alone
    # specs
    specs = os.path.join(s["home"], ".local/share/python-mpi-bcast/specs")
    req = open(os.path.join(specs, "sci", "requirements.txt")).read()
    assert "\nnumpy==" in req and "\nmpi4py==" in req
    yml = open(os.path.join(specs, "demo", "environment.yml")).read()
    assert yml.startswith("name: demo\nchannels:\n  - conda-forge\ndependencies:\n")
    assert "  - conda-forge::python=" in yml and "  - conda-forge::pmbdemo=1.0=h_pmb_0" in yml
    # the shell start-up file follows, with a backup and the diff shown
    rc = open(os.path.join(s["home"], ".bashrc")).read()
    assert f"source {new_sci}/bin/activate\n" in rc and f"conda activate {new_conda}\n" in rc
    assert f"export DATA={s['envs']}/demo-data\n" in rc  # not an environment: unchanged
    backups = [f for f in os.listdir(s["home"]) if f.startswith(".bashrc.pmb-backup-")]
    assert len(backups) == 1
    assert f"-source {s['sci']}/bin/activate" in r.stdout
    assert f"+source {new_sci}/bin/activate" in r.stdout


def test_a_copy_that_differs_keeps_the_source_and_shows_why(scratch):
    s = scratch
    os.mkfifo(os.path.join(s["sci"], "control.fifo"))  # relocate copies no FIFOs
    r = migrate(s, "sci", "--to", s["new"])
    assert r.returncode == 1
    assert "sci: the copy differs from the source, so the source was kept" in r.stderr
    assert "file control.fifo is missing in the copy" in r.stderr
    assert os.path.exists(os.path.join(s["sci"], "pyvenv.cfg"))
    assert not os.path.exists(os.path.join(s["new"], "sci"))
    assert r.stderr.strip().splitlines()[-1] == ("python-mpi-bcast: error: not migrated: sci "
                                                 "(sources kept)")


def test_keep_leaves_the_source(scratch):
    s = scratch
    r = migrate(s, "sci", "--to", s["new"], "--keep")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.path.join(s["sci"], "pyvenv.cfg"))
    assert os.path.exists(os.path.join(s["new"], "sci", "pyvenv.cfg"))


def test_selection_needs_a_terminal_names_or_all(scratch):
    s = scratch
    r = migrate(s)
    assert r.returncode == 1 and "pass --all (no terminal to ask on)" in r.stderr
    r = migrate(s, "nope")
    assert r.returncode == 1 and "no valid environment named nope" in r.stderr


def test_interactive_selection_on_a_terminal(scratch):
    s = scratch
    master, slave = pty.openpty()
    p = subprocess.Popen(CLI + ["migrate", "-d", s["envs"], "--to", s["new"], "--keep"],
                         env=s["env"], stdin=slave, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    os.close(slave)
    os.write(master, b"sci\n")
    try:
        out, err = p.communicate(timeout=1200)
    finally:
        os.close(master)
    assert p.returncode == 0, err
    assert os.path.exists(os.path.join(s["new"], "sci", "pyvenv.cfg"))
    assert not os.path.exists(os.path.join(s["new"], "demo"))


def test_killed_migrate_leaves_the_source(scratch):
    s = scratch
    os.makedirs(s["new"])
    p = subprocess.Popen(CLI + ["migrate", "-d", s["envs"], "sci", "--to", s["new"]],
                         env=s["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if any(".relocate-" in f for f in os.listdir(s["new"])):
                break
            time.sleep(0.02)
        assert p.poll() is None, "migrate ended before it could be interrupted"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    assert os.path.exists(os.path.join(s["sci"], "pyvenv.cfg"))
    assert not os.path.exists(os.path.join(s["new"], "sci"))
    # and a second run completes
    r = migrate(s, "sci", "--to", s["new"])
    assert r.returncode == 0, r.stderr
    shutil.rmtree(s["new"])
