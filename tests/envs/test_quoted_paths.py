"""A destination with a quote in its path (issue 23, item 7): ``load --to
"…/it's web"``, a ``PYTHON_MPI_CHROOT`` holding a quote, and ``relocate`` to
such a place give environments whose pip, sysconfig, modules and activation
scripts work, because paths written into Python source are written as Python
literals (and into shell code shell-quoted)."""

from __future__ import annotations

import os
import re
import uuid
import shutil

import pytest

from helpers import CLI, check_ana_copy, config_prefix, make_ana, mpi_env, mpirun, run, user_env

QUOTED = "it's \"web\" \\ caf\u00e9"

SYSCONFIG = ("import sysconfig, sys; p = sysconfig.get_paths(); "
             "print(p['purelib']); print(sysconfig.get_config_var('prefix')); print(sys.prefix)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = tmp_path_factory.mktemp("quoted")
    ana = make_ana(str(base / "envs"))
    env = user_env(base)
    run(CLI + ["save", "ana", "--venv", ana["venv"], "-q"], env=env, timeout=900)
    return dict(ana, env=env, base=str(base))


def works_from(tree: str, data: str, env: dict) -> None:
    py = os.path.join(tree, "bin", "python3")
    r = run([os.path.join(tree, "bin", "pip"), "--version"], env=env, timeout=120, check=False)
    # (Debian's python in /usr keeps packages in local/lib/python3.X/dist-packages)
    assert r.returncode == 0 and re.search(rf"from {re.escape(tree)}/(local/)?lib/python",
                                           r.stdout), r.stdout + r.stderr
    r = run([py, "-m", "pip", "list"], env=env, timeout=120, check=False)
    assert r.returncode == 0 and "pip " in r.stdout, r.stderr
    out = run([py, "-c", SYSCONFIG], env=env, timeout=60).stdout.splitlines()
    assert re.match(rf"{re.escape(tree)}/(local/)?lib/python", out[0]), out
    assert out[1:] == [config_prefix(tree), tree], out
    check_ana_copy(tree, data)


def test_load_to_a_path_with_quotes_gives_a_working_env(saved, tmp_path):
    dest = str(tmp_path / QUOTED)
    r = run(CLI + ["load", "ana", "--to", dest], env=saved["env"], timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == dest
    works_from(dest, saved["data"], saved["env"])
    # the hint it prints can be pasted into a shell as it is, and activates
    hint = r.stderr.split("activate with: ", 1)[1].split("   (fish:")[0]
    fish_hint = r.stderr.split("(fish: ", 1)[1].rsplit(")", 1)[0]
    for shell, cmd in (("bash", hint), ("zsh", hint), ("fish", fish_hint)):
        if shutil.which(shell) is None:
            continue
        out = run([shell, "-c", f'{cmd}; echo "$PYTHON_MPI_BCAST_LOADED"; command -v python3'],
                  env=saved["env"], timeout=60).stdout.splitlines()
        assert out == [dest, dest + "/bin/python3"], (shell, out)


def test_a_staged_tree_under_a_chroot_with_quotes_runs_pip_and_sysconfig(saved):
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    chroot = f"{base}/{QUOTED}-%n"
    try:
        env = mpi_env({"root": saved["env"]["PYTHON_MPI_BCAST_CACHE"]}, chroot, cliques=2,
                      packages="ana.tar.zst")
        r = mpirun(2, ["-c", SYSCONFIG], env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        trees = sorted({ln for ln in lines if not ln.endswith(("site-packages", "dist-packages"))
                        and ln != config_prefix(None)})
        assert len(trees) == 2 and all(t.startswith(f"{base}/{QUOTED}-") for t in trees), lines
        r = mpirun(2, ["-m", "pip", "--version"], env=env, timeout=300)
        assert r.returncode == 0 and r.stdout.count(f"{base}/{QUOTED}-") == 2, r.stdout + r.stderr
        r = mpirun(1, ["-c", "import anamod; print(anamod.read(), end='')"], env=env, timeout=300)
        assert r.returncode == 0 and r.stdout == "x,y\n1,42\n", r.stdout + r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_relocate_to_a_path_with_a_quote(saved, tmp_path):
    """The venv's own activate scripts quote the path in double quotes (as
    python -m venv writes them), so a single quote is safe there."""
    dest = str(tmp_path / "it's web caf\u00e9" / "ana")
    r = run(CLI + ["relocate", saved["venv"], "-o", dest], timeout=900, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    check_ana_copy(dest, saved["data"])  # anamod.py names the venv: a literal now
    for shell, script in (("bash", "activate"), ("zsh", "activate"), ("fish", "activate.fish")):
        if shutil.which(shell) is None:
            continue
        src = 'source "$P"' if shell != "fish" else "source $P"
        out = run([shell, "-c", f'{src}; echo "$VIRTUAL_ENV"; command -v python'],
                  env=dict(os.environ, P=f"{dest}/bin/{script}"), timeout=60).stdout.splitlines()
        assert out == [dest, dest + "/bin/python"], (shell, out)


SHELLY = "it's \"web\" $HOME `id` \\ caf\u00e9"


@pytest.mark.parametrize("shell,script", [("bash", "activate"), ("zsh", "activate"),
                                          ("dash", "activate"), ("fish", "activate.fish")])
def test_relocated_activate_scripts_work_with_dollar_backquote_and_double_quote(
        tmp_path, shell, script):
    """relocate to a DEST holding '"', '$', '`' and '\\': sourcing the
    relocated bin/activate (bash, zsh, dash) or activate.fish sets
    VIRTUAL_ENV to DEST exactly and puts its python first, running nothing
    the path spells; deactivate restores PATH."""
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    import sys
    src = str(tmp_path / "src")
    run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", src], timeout=300)
    dest = str(tmp_path / SHELLY / "venv")
    r = run(CLI + ["relocate", src, "-o", dest], timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    source = {"fish": "source $P"}.get(shell, '. "$P"')
    out = run([shell, "-c", f'{source}; echo "$VIRTUAL_ENV"; command -v python; deactivate; '
                            f'echo "$PATH"'],
              env=dict(os.environ, P=f"{dest}/bin/{script}"), timeout=60, check=False)
    assert out.returncode == 0 and "uid=" not in out.stdout, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines == [dest, dest + "/bin/python", os.environ["PATH"]], (lines, out.stderr)
