"""Never lose or break what the user has (issue 23, items 4, 5, 6, 8, 10 and
"left behind"): saved environments under real habits — a copy loaded under
another name, a small $TMPDIR (a real 2 MB tmpfs), `run`'s own packages in
the cache, two saves of one name at once, commands killed with SIGKILL at a
given phase and run again, a saved environment removed while a job uses
it, a truncated package.

A phase is reached by polling for what the command makes in it (its
temporary directory appearing), then SIGKILL: no test hook in the code.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import (BIN, CLI, LAUNCHER, MPIEXEC, make_venv, make_wheel, private_home,
                     process_group, run, wait_gone)

DATA_MB = 48  # incompressible data in the venv: the phases last long enough to catch


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's setting (private HOME, TMPDIR, cache) and a venv holding a
    data file, saved as 'science'."""
    base = tmp_path_factory.mktemp("life")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_", "SLURM_", "PIP_"))}
    private_home(env, base / "home")
    env.update({"TMPDIR": str(base / "tmp"),
                "PYTHON_MPI_BCAST_CACHE": str(base / "cache"), "PIP_NO_INDEX": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PATH": BIN + ":" + os.environ["PATH"]})
    os.makedirs(env["HOME"])
    os.makedirs(env["TMPDIR"])
    venv = make_venv(str(base / "science-venv"), [])
    os.makedirs(os.path.join(venv, "share", "data"))
    with open(os.path.join(venv, "share", "data", "input.bin"), "wb") as f:
        f.write(os.urandom(DATA_MB << 20))
    run(CLI + ["save", "science", "--venv", venv, "-q"], env=env, timeout=900)
    return {"base": str(base), "env": env, "venv": venv, "cache": env["PYTHON_MPI_BCAST_CACHE"],
            "tmp": env["TMPDIR"], "scratch": os.path.join(env["TMPDIR"], "python-mpi-bcast"),
            "journal": os.path.join(env["HOME"], ".local", "share", "python-mpi-bcast",
                                    "running")}


def cli(user, *args, check=True, timeout=300, **extra):
    return run(CLI + list(args), env=dict(user["env"], **extra), timeout=timeout, check=check)


def one_line_error(r) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python-mpi-bcast: error: "), r.stderr
    return lines[0]


@contextlib.contextmanager
def small_tmpfs(path: str, size: str = "2m", inodes: int = 0):
    """A real tmpfs of ``size`` (and ``inodes``, if given) mounted at ``path``
    (skips where mounting is not permitted); unmounted afterwards whatever
    happens."""
    os.makedirs(path, exist_ok=True)
    opts = f"size={size},mode=0777" + (f",nr_inodes={inodes}" if inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def kill_when(p: subprocess.Popen, reached, timeout: float = 600) -> None:
    """SIGKILL ``p`` as soon as ``reached()`` holds (polled every 2 ms)."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None:
            if reached():
                break
            time.sleep(0.002)
        assert p.poll() is None, "the command finished before the phase was reached"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)


def tree_bytes(path: str) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)


def no_journal_left(user) -> bool:
    return not os.path.isdir(user["journal"]) or not os.listdir(user["journal"])


# ---- 4: a copy loaded under another name ----------------------------------

def test_list_marks_a_copy_loaded_under_another_name_changed_since_saved(user):
    tree = cli(user, "load", "science", "--as", "analysis").stdout.strip()
    whl = make_wheel(os.path.join(user["base"], "wheels"))
    script = (f'source "{tree}/bin/activate" && python-mpi-bcast list && '
              f'pip install -q "{whl}" && python-mpi-bcast list')
    r = run(["bash", "-c", script], env=user["env"], timeout=300)
    before, after = r.stdout.split("name ")[1:]
    assert "changed since saved" not in before
    line = [ln for ln in after.splitlines() if ln.startswith("science ")][0]
    assert "loaded copy changed since saved" in line, r.stdout


# ---- 5, 6: a small $TMPDIR --------------------------------------------------

def test_save_and_pack_with_a_tmpdir_too_small_for_the_skeleton_say_so_in_one_line(user):
    # pack streams: TMPDIR holds the tree's directories and links (no files;
    # a 4 MB one is enough: test_pack's tiny-TMPDIR tests), so what runs out
    # there is inodes: a tmpfs with 16 of them
    with small_tmpfs(os.path.join(user["base"], "small-tmp"), inodes=16) as tmp:
        r = cli(user, "save", "cramped", "--venv", user["venv"], "-q", check=False,
                TMPDIR=tmp, timeout=600)
        err = one_line_error(r)
        assert f"no space left in {tmp}" in err and "set TMPDIR" in err, err
        assert "no free inodes" in err, err
        need = int(err.split("links of its ")[1].split(" MB")[0])
        assert need >= DATA_MB, err  # names the files the skeleton stands for
        assert os.listdir(tmp) == []  # the partial skeleton is gone
        out = os.path.join(user["base"], "packed")
        for args in (["pack", user["venv"]], ["pack", "--python", user["venv"]]):
            err = one_line_error(cli(user, *args, "-o", out, "-q", check=False, TMPDIR=tmp))
            assert f"no space left in {tmp}" in err and "set TMPDIR" in err, err
            assert os.listdir(tmp) == []
    assert not os.path.exists(os.path.join(user["cache"], "cramped.tar.zst"))
    assert no_journal_left(user)


def test_load_out_of_space_says_to_use_to_or_tmpdir_with_the_room_needed(user):
    with small_tmpfs(os.path.join(user["base"], "small-scratch")) as tmp:
        r = cli(user, "load", "science", "--as", "nospace", check=False, TMPDIR=tmp)
        err = one_line_error(r)
        assert "PYTHON_MPI_CHROOT" not in err
        assert "--to DIR" in err and "set TMPDIR" in err and " MB unpacked" in err, err
        r = cli(user, "load", "science", "--to", os.path.join(tmp, "here"), check=False)
        err = one_line_error(r)
        assert "--to DIR" in err and "TMPDIR" not in err, err
        left = [os.path.relpath(os.path.join(d, f), tmp) for d, ds, fs in os.walk(tmp)
                for f in fs + ds]
        assert left in ([], ["python-mpi-bcast"]), left  # nothing half-written


# ---- 8: run's own packages ------------------------------------------------

def test_list_hides_runs_packages_and_load_refuses_a_directory_layer(user):
    work = os.path.join(user["base"], "work")
    os.makedirs(work)
    with open(os.path.join(work, "job.py"), "w") as f:
        f.write("print('ran')\n")
    env = dict(user["env"], VIRTUAL_ENV=user["venv"])
    r = run(CLI + ["run", "--with-dir", MPIEXEC, "-n", "1", "python", "job.py"], env=env,
            cwd=work, timeout=900)
    assert "ran" in r.stdout, r.stdout + r.stderr
    made = sorted(os.listdir(user["cache"]))
    rundir = [f for f in made if f.startswith("rundir-")][0][:-len(".tar.zst")]
    assert any(f.startswith("run-") for f in made)
    out = cli(user, "list").stdout
    assert not any(ln.startswith(("run-", "rundir-")) for ln in out.splitlines()), out
    assert "2 package(s) that 'python-mpi-bcast run' made for its jobs not shown" in out
    out = cli(user, "list", "--all").stdout
    line = [ln for ln in out.splitlines() if ln.startswith(rundir)][0]
    assert "made by 'run'" in line and work in line, out
    r = cli(user, "load", rundir, check=False)
    err = one_line_error(r)
    assert "directory package" in err and "not an environment" in err, err
    assert not os.path.exists(os.path.join(user["scratch"], rundir))
    assert not glob.glob(os.path.join(user["scratch"], f".{rundir}*"))


# ---- 10: two saves of one name at once --------------------------------------

def test_two_concurrent_saves_of_one_name_exactly_one_wins(user):
    other = make_venv(os.path.join(user["base"], "other-venv"), [])
    ps = [subprocess.Popen(CLI + ["save", "race", "--venv", v, "-q"], env=user["env"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for v in (user["venv"], other)]
    outs = [p.communicate(timeout=900) for p in ps]
    codes = [p.returncode for p in ps]
    assert sorted(codes) == [0, 1], outs
    winner = (user["venv"], other)[codes.index(0)]
    loser_err = outs[codes.index(1)][1].strip().splitlines()
    assert len(loser_err) == 1 and "'race' was saved by another command" in loser_err[0], outs
    e = [x for x in json.loads(cli(user, "list", "--json").stdout) if x["name"] == "race"][0]
    assert e["source"] == winner and e["packages"] is not None
    cli(user, "verify", e["path"])
    assert not [f for f in os.listdir(user["cache"]) if f.startswith((".race", ".pmb-"))]
    assert no_journal_left(user)


# ---- left behind --------------------------------------------------------------

def staging_skeleton(tmp: str) -> list[str]:
    """The staging skeletons in $TMPDIR that reached the venv's data
    directory (a skeleton holds directories and links; files stream from
    the source into the package)."""
    return [d for d in glob.glob(os.path.join(tmp, "pmb-stage-*"))
            if glob.glob(os.path.join(glob.escape(d), "**", "share", "data"), recursive=True)]


def test_rerun_of_a_killed_save_removes_its_skeleton_in_tmpdir(user):
    p = subprocess.Popen(CLI + ["save", "killed", "--venv", user["venv"], "-q"],
                         env=user["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(p, lambda: staging_skeleton(user["tmp"]))
    left = glob.glob(os.path.join(user["tmp"], "pmb-stage-*"))
    assert left  # what the killed save left in $TMPDIR
    r = cli(user, "save", "killed", "--venv", user["venv"], "-q", timeout=900)
    assert f"removed {left[0]}, left by a killed 'save'" in r.stderr, r.stderr
    assert not glob.glob(os.path.join(user["tmp"], "pmb-stage-*"))
    assert no_journal_left(user)


def test_rerun_of_a_killed_load_removes_its_partial_copy(user):
    def partial():
        return glob.glob(os.path.join(user["scratch"], ".slow.unpack-*"))
    p = subprocess.Popen(CLI + ["load", "science", "--as", "slow"], env=user["env"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    kill_when(p, lambda: any(tree_bytes(d) > (1 << 20) for d in partial()))
    wait_gone(process_group(p.pid))  # the unpacker child ends with its parent
    left = partial()
    assert left and not os.path.exists(os.path.join(user["scratch"], "slow"))
    r = cli(user, "load", "science", "--as", "slow")
    assert f"removed {left[0]}, left by a killed 'load'" in r.stderr, r.stderr
    assert not partial()
    assert os.path.getsize(os.path.join(r.stdout.strip(), "share", "data", "input.bin")) == \
        DATA_MB << 20


def test_killed_migrate_leaves_the_source_and_clean_removes_the_hidden_copy(user):
    area = os.path.join(user["base"], "scratch-area")
    home = os.path.join(user["base"], "home-area")
    os.makedirs(home)
    src = os.path.join(area, "mig")
    shutil.copytree(user["venv"], src, symlinks=True)
    before = tree_bytes(src)

    def hidden():
        return [d for d in glob.glob(os.path.join(home, ".mig.relocate-*"))
                if tree_bytes(d) > (DATA_MB << 19)]
    p = subprocess.Popen(CLI + ["migrate", "-d", area, "--to", home, "mig"], env=user["env"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(p, hidden)
    left = glob.glob(os.path.join(home, ".mig*"))
    assert left and tree_bytes(src) == before  # the source is whole
    r = cli(user, "clean", "-n", os.path.join(user["base"], "no-node-dir"))
    assert all(f"would remove {d} (left by a killed 'migrate'" in r.stdout for d in left), r.stdout
    r = cli(user, "clean", os.path.join(user["base"], "no-node-dir"))
    assert not glob.glob(os.path.join(home, ".mig*")), r.stdout
    assert tree_bytes(src) == before
    assert no_journal_left(user)


@pytest.mark.parametrize("mode", ["embed", "exec"])
def test_rm_refuses_a_saved_env_a_running_job_uses(user, shm_chroot, mode):
    shutil.copy(os.path.join(user["cache"], "science.tar.zst"),
                os.path.join(user["cache"], "inuse.tar.zst"))
    env = dict(user["env"], PYTHON_MPI_PKGROOT=user["cache"], PYTHON_MPI_MODE=mode,
               PYTHON_MPI_PACKAGES="inuse.tar.zst", PYTHON_MPI_CHROOT=shm_chroot)
    ready = os.path.join(user["base"], f"job-ready-{mode}")
    # waits for the go; without one in 600 s it fails (it used to end as
    # if told to after 60 s, and rm then found nothing in use)
    prog = (f"import os, sys, time; open({ready!r}, 'w').close()\n"
            f"deadline = time.time() + 600\n"
            f"while not os.path.exists({ready!r} + '.go'):\n"
            f"    if time.time() > deadline: sys.exit('no go within 600 s')\n"
            f"    time.sleep(0.05)\n")
    p = subprocess.Popen([MPIEXEC, "-n", "2", LAUNCHER, "-c", prog], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not os.path.exists(ready) and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(ready), p.communicate(timeout=60)
        err = one_line_error(cli(user, "rm", "inuse", check=False))
        assert "in use by a running job" in err, err
        assert os.path.exists(os.path.join(user["cache"], "inuse.tar.zst"))
    finally:
        open(ready + ".go", "w").close()
        out = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "removed" in cli(user, "rm", "inuse").stdout  # the job is over


def test_list_marks_a_truncated_package_damaged(user):
    with open(os.path.join(user["cache"], "science.tar.zst"), "rb") as f:
        data = f.read()
    with open(os.path.join(user["cache"], "cut.tar.zst"), "wb") as f:
        f.write(data[:len(data) // 2])
    try:
        out = cli(user, "list").stdout
        line = [ln for ln in out.splitlines() if ln.startswith("cut ")][0]
        assert "damaged: truncated" in line and "rm cut" in line, out
    finally:
        os.unlink(os.path.join(user["cache"], "cut.tar.zst"))


def test_a_save_killed_around_its_rename_never_shows_another_source(user):
    """Killed as soon as the package is renamed into place or its record
    changes: the entry shows the source of the package it holds (the record
    is written before the rename), never the base interpreter."""
    first = make_venv(os.path.join(user["base"], "first-venv"), [])
    cli(user, "save", "swap", "--venv", first, "-q", timeout=900)
    side = os.path.join(user["cache"], "swap.json")
    old = json.load(open(side))["content_hash"]

    package = os.path.join(user["cache"], "swap.tar.zst")
    ino = os.stat(package).st_ino

    def renamed_or_recorded():  # whichever comes first
        try:
            if os.stat(package).st_ino != ino:
                return True
            return json.load(open(side))["content_hash"] != old
        except (OSError, ValueError, KeyError):
            return False
    p = subprocess.Popen(CLI + ["save", "swap", "-f", "--venv", user["venv"], "-q"],
                         env=user["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(p, renamed_or_recorded)
    e = [x for x in json.loads(cli(user, "list", "--json").stdout) if x["name"] == "swap"][0]
    assert e["source"] == (first if e["content_hash"] == old else user["venv"]), e
    assert e["packages"] is not None
