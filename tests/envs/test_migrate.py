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

from helpers import (CLI, PRIVATE, UNSHARE_MOUNT, can_hide, copy_numpy, make_ana, make_venv,
                     private_home, run, user_env)

from support import condaenv


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
    private_home(env, home)
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


@pytest.fixture
def dotfiles(tmp_path):
    """scratch/ana (a venv reading scratch/ana-data) and a HOME whose
    ~/.zshrc is a symlink into a dotfiles repository, naming both."""
    ana = make_ana(str(tmp_path / "scratch"))
    env = user_env(tmp_path)
    home = env["HOME"]
    repo = os.path.join(home, "dotfiles")
    os.makedirs(repo)
    text = f"source {ana['venv']}/bin/activate\nexport DATA={ana['data']}/input.csv\n"
    with open(os.path.join(repo, "zshrc"), "w") as f:
        f.write(text)
    os.symlink("dotfiles/zshrc", os.path.join(home, ".zshrc"))
    return dict(ana, env=env, home=home, repo=repo, text=text, scratch=str(tmp_path / "scratch"),
                new=str(tmp_path / "new"))


def zsh_start(d) -> subprocess.CompletedProcess:
    """What a new zsh does with the user's ~/.zshrc: activate, run the script."""
    return run(["zsh", "-c", 'source "$HOME/.zshrc" && analyse && echo "$VIRTUAL_ENV"'],
               env=d["env"], timeout=60, check=False)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_update_rc_edits_the_target_of_a_symlinked_dotfile(dotfiles):
    d = dotfiles
    r = run(CLI + ["migrate", "-d", d["scratch"], "ana", "--to", d["new"], "--update-rc"],
            env=d["env"], timeout=1200, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    new = os.path.join(d["new"], "ana")
    rc = os.path.join(d["home"], ".zshrc")
    # still the link into the repository; the file it points at was edited
    assert os.readlink(rc) == "dotfiles/zshrc"
    assert open(rc).read() == (f"source {new}/bin/activate\n"
                               f"export DATA={d['data']}/input.csv\n")
    backups = [f for f in os.listdir(d["repo"]) if f.startswith("zshrc.pmb-backup-")]
    assert len(backups) == 1
    assert open(os.path.join(d["repo"], backups[0])).read() == d["text"]
    assert not [f for f in os.listdir(d["home"]) if ".pmb-backup-" in f]
    assert not os.path.exists(d["venv"])  # removed only after the start-up file was updated
    z = zsh_start(d)
    assert z.returncode == 0 and z.stdout == f"x,y\n1,42\n{new}\n", z.stdout + z.stderr


@pytest.mark.skipif(not can_hide(), reason="needs root and unshare for a read-only mount")
def test_update_rc_keeps_the_source_while_a_start_up_file_still_names_it(dotfiles):
    """The dotfiles repository is on a read-only mount: the start-up file
    cannot be edited, so the source stays (and zsh still starts)."""
    d = dotfiles
    r = run(UNSHARE_MOUNT + [
        PRIVATE + 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
        d["repo"]] + CLI + ["migrate", "-d", d["scratch"], "ana", "--to", d["new"],
                            "--update-rc"], env=d["env"], timeout=1200, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    rc = os.path.join(d["home"], ".zshrc")
    assert f"cannot update {rc} (-> {d['repo']}/zshrc): Read-only file system" in r.stdout
    err = r.stderr.strip().splitlines()
    assert err[0] == (f"python-mpi-bcast: error: ana: {rc} still names {d['venv']}, so the "
                      f"source was kept (the copy is {d['new']}/ana); edit that file, then "
                      f"remove the source")
    assert err[-1] == ("python-mpi-bcast: error: copied, sources kept while a start-up file "
                       "names them: ana")
    assert "Traceback" not in r.stderr
    assert open(rc).read() == d["text"]
    assert os.path.exists(os.path.join(d["venv"], "pyvenv.cfg"))
    z = zsh_start(d)
    assert z.returncode == 0 and z.stdout == f"x,y\n1,42\n{d['venv']}\n", z.stdout + z.stderr


def test_without_update_rc_migrate_says_which_start_up_file_still_names_the_source(dotfiles):
    d = dotfiles
    r = run(CLI + ["migrate", "-d", d["scratch"], "ana", "--to", d["new"]],
            env=d["env"], timeout=1200, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    rc = os.path.join(d["home"], ".zshrc")
    assert (f"note: {rc} still name {d['venv']}; change that to {d['new']}/ana "
            f"(--update-rc does it, after a backup)") in r.stdout.splitlines()
    assert open(rc).read() == d["text"] and os.path.islink(rc)


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
