"""Offline pip on compute nodes (issue 10, part 3): the shell code of
``python-mpi-bcast shell-init`` run for real in bash, zsh and fish, with a
real pip installing a real wheel from a wheelhouse filled by
``python-mpi-bcast wheelhouse add``.

The package index is pointed at a closed local port, so any attempt of pip
to reach an index shows up as a connection warning (and slows it down).
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from helpers import CLI, make_venv, make_wheel, private_home, run

SHELLS = [s for s in ("bash", "zsh", "fish")]
RC = {"bash": ".bashrc", "zsh": ".zshrc", "fish": ".config/fish/config.fish"}


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A fresh venv, a 'remote index' directory with a real wheel, and a
    private HOME and wheelhouse."""
    base = tmp_path_factory.mktemp("offline")
    venv = make_venv(str(base / "venv"), [])
    index = str(base / "index")
    make_wheel(index)
    return {"base": str(base), "venv": venv, "index": index}


def shell_env(site, home, wheelhouse, job: bool, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "SLURM_", "PBS_", "LSB_", "FLUX_", "COBALT_",
                                "PYTHON_MPI_BCAST_", "VIRTUAL_ENV"))}
    private_home(env, home)
    env.update({
        "PATH": os.path.join(site["venv"], "bin") + ":" + os.environ["PATH"],
        "PYTHON_MPI_BCAST_WHEELHOUSE": wheelhouse,
        "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port()}/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    })
    if job:
        env["SLURM_JOB_ID"] = "4242"
    env.update(extra)
    return env


def install_rc(shell: str, home: str, *extra: str) -> None:
    """Append the shell code to the user's rc file, as the README says."""
    rc = os.path.join(home, RC[shell])
    os.makedirs(os.path.dirname(rc), exist_ok=True)
    code = run(CLI + ["shell-init", shell] + list(extra), timeout=60).stdout
    with open(rc, "a") as f:
        f.write(code)


def in_shell(shell: str, command: str, env: dict, timeout: int = 180):
    """Run ``command`` in an interactive-style shell that read its rc file."""
    if shell == "fish":
        args = ["fish", "-c", command]  # fish reads config.fish always
    else:
        args = [shell, "-i", "-c", command]
    return run(args, env=env, timeout=timeout, check=False, stdin=subprocess_devnull())


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL


def no_index_contact(r) -> bool:
    text = r.stdout + r.stderr
    return "Retrying" not in text and "NewConnectionError" not in text and "127.0.0.1" not in text


def fresh(site, name: str) -> tuple[str, str]:
    home = os.path.join(site["base"], f"home-{name}")
    wh = os.path.join(site["base"], f"wh-{name}")
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(wh, ignore_errors=True)
    os.makedirs(home)
    return home, wh


def uninstall(site):
    run([os.path.join(site["venv"], "bin", "python"), "-m", "pip", "uninstall", "-y", "-q",
         "pmbdemo"], timeout=120, check=False)


def test_wheelhouse_add_fills_the_wheelhouse_on_a_login_node(site):
    _, wh = fresh(site, "add")
    r = run(CLI + ["wheelhouse", "add", "pmbdemo", "--wheelhouse", wh,
                   "--python", os.path.join(site["venv"], "bin", "python"),
                   "--", "--no-index", "--find-links", site["index"]], timeout=300)
    assert "added pmbdemo-1.0-py3-none-any.whl" in r.stdout
    assert os.listdir(wh) == ["pmbdemo-1.0-py3-none-any.whl"]
    r = run(CLI + ["wheelhouse", "list", "--wheelhouse", wh], timeout=60)
    assert "pmbdemo-1.0-py3-none-any.whl" in r.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_pip_in_a_job_installs_offline_from_the_wheelhouse(site, shell):
    home, wh = fresh(site, f"job-{shell}")
    os.makedirs(wh)
    shutil.copy(os.path.join(site["index"], "pmbdemo-1.0-py3-none-any.whl"), wh)
    install_rc(shell, home)
    uninstall(site)
    env = shell_env(site, home, wh, job=True)
    r = in_shell(shell, "pip install pmbdemo", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert no_index_contact(r), r.stderr
    r = run([os.path.join(site["venv"], "bin", "python"), "-c",
             "import pmbdemo; print(pmbdemo.VALUE)"], timeout=60)
    assert r.stdout.strip() == "42"


@pytest.mark.parametrize("shell", SHELLS)
def test_pip_in_a_job_never_reaches_for_an_index(site, shell):
    home, wh = fresh(site, f"noindex-{shell}")
    os.makedirs(wh)
    install_rc(shell, home)
    env = shell_env(site, home, wh, job=True)
    r = in_shell(shell, "pip install notinthewheelhouse", env)
    assert r.returncode != 0
    assert "No matching distribution found for notinthewheelhouse" in r.stderr, r.stderr
    assert no_index_contact(r), r.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_pip_download_on_a_login_node_fills_the_wheelhouse(site, shell):
    home, wh = fresh(site, f"login-{shell}")
    install_rc(shell, home)
    env = shell_env(site, home, wh, job=False)
    # the 'internet' is the index directory here
    r = in_shell(shell, f"pip download pmbdemo --no-index --find-links {site['index']}", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.listdir(wh) == ["pmbdemo-1.0-py3-none-any.whl"]
    # and pip install on the login node finds it there too
    uninstall(site)
    r = in_shell(shell, "pip install --no-index pmbdemo", env)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_other_pip_commands_pass_through_unchanged(site, shell):
    home, wh = fresh(site, f"pass-{shell}")
    install_rc(shell, home)
    env = shell_env(site, home, wh, job=True)
    r = in_shell(shell, "pip --version", env)
    assert r.returncode == 0 and r.stdout.startswith("pip "), r.stdout + r.stderr
    assert not os.path.exists(wh)


def test_missing_wheelhouse_in_a_job_says_how_to_fill_it(site):
    home, wh = fresh(site, "missing")
    install_rc("bash", home)
    uninstall(site)  # (installed, pip has nothing to fetch and succeeds offline)
    env = shell_env(site, home, wh, job=True)
    r = in_shell("bash", "pip install pmbdemo", env)
    assert r.returncode == 1
    assert f"python-mpi-bcast: no wheelhouse at {wh}; on a login node run: " \
           f"python-mpi-bcast wheelhouse add" in r.stderr


def test_compute_host_pattern_and_override(site):
    home, wh = fresh(site, "hosts")
    os.makedirs(wh)
    install_rc("bash", home, "--compute-host", socket.gethostname()[:2] + "*")
    env = shell_env(site, home, wh, job=False)
    r = in_shell("bash", "pip install notinthewheelhouse", env)
    assert "No matching distribution" in r.stderr and no_index_contact(r), r.stderr
    # PYTHON_MPI_BCAST_NODE=login overrides the host rule: pip tries the index
    env["PYTHON_MPI_BCAST_NODE"] = "login"
    r = in_shell("bash", "pip install notinthewheelhouse", env)
    assert r.returncode != 0 and not no_index_contact(r)


def test_bad_shell_and_pattern():
    r = run(CLI + ["shell-init", "tcsh"], timeout=60, check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run(CLI + ["shell-init", "bash", "--compute-host", "a;rm -rf /"], timeout=60, check=False)
    assert r.returncode == 1 and r.stderr.startswith("python-mpi-bcast: error: compute-host")
    r = run(CLI + ["wheelhouse", "add"], timeout=60, check=False)
    assert r.returncode == 1 and "nothing to add" in r.stderr


def unresolvable_index(env: dict) -> dict:
    """The network really absent for pip: an index whose name cannot resolve."""
    env = dict(env, PIP_INDEX_URL="http://index.pmb-offline.invalid/simple")
    env.pop("PIP_NO_CACHE_DIR", None)
    return env


def offline(r) -> bool:
    text = r.stdout + r.stderr
    return "pmb-offline.invalid" not in text and "Retrying" not in text and \
        "NewConnectionError" not in text


@pytest.mark.parametrize("shell", SHELLS)
def test_every_way_of_calling_pip_in_a_job_stays_offline(site, shell):
    home, wh = fresh(site, f"every-{shell}")
    os.makedirs(wh)
    shutil.copy(os.path.join(site["index"], "pmbdemo-1.0-py3-none-any.whl"), wh)
    install_rc(shell, home)
    env = unresolvable_index(shell_env(site, home, wh, job=True))
    py = os.path.join(site["venv"], "bin", "python")
    ver = run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
              timeout=60).stdout.strip()
    cache = os.path.join(site["base"], f"pipcache-{shell}")
    for how in (f"pip --cache-dir {cache} install pmbdemo",
                f"pip3.{ver.split('.')[1]} install pmbdemo",
                "python -m pip install pmbdemo",
                "python -c 'import subprocess, sys; sys.exit(subprocess.call("
                "[sys.executable, \"-m\", \"pip\", \"install\", \"pmbdemo\"]))'"):
        uninstall(site)
        r = in_shell(shell, how, env)
        assert r.returncode == 0, (how, r.stdout + r.stderr)
        assert offline(r), (how, r.stderr)
        r = run([py, "-c", "import pmbdemo; print(pmbdemo.VALUE)"], timeout=60)
        assert r.stdout.strip() == "42", how


@pytest.mark.parametrize("shell", SHELLS)
def test_a_missing_wheel_in_a_job_says_wheelhouse_add_name(site, shell):
    home, wh = fresh(site, f"hint-{shell}")
    os.makedirs(wh)
    install_rc(shell, home)
    env = unresolvable_index(shell_env(site, home, wh, job=True))
    for how in ("pip --cache-dir /tmp/x install notinthewheelhouse",
                "pip3 install notinthewheelhouse"):
        r = in_shell(shell, how, env)
        assert r.returncode == 1 and offline(r), (how, r.stderr)
        assert (f"python-mpi-bcast: notinthewheelhouse is not in the wheelhouse {wh} (pip is "
                f"offline in a job); on a login node run: python-mpi-bcast wheelhouse add "
                f"notinthewheelhouse") in r.stderr, (how, r.stderr)
    r = in_shell(shell, "python -m pip install notinthewheelhouse", env)
    assert r.returncode == 1 and offline(r), r.stderr


def test_wheelhouse_without_an_action_says_which_actions_there_are(tmp_path):
    # it raised AttributeError (a traceback): only the actions' parsers had --wheelhouse
    r = run(CLI + ["wheelhouse"], check=False, cwd=str(tmp_path))
    assert r.returncode == 1, r
    assert r.stderr == "python-mpi-bcast: error: wheelhouse: give an action: add, list or path\n"
