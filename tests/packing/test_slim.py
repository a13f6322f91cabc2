"""``pack --slim``: fewer files to create on every node, and never a broken
import.  A slim-packed numpy + mpi4py venv (scipy too when the test venv
has it) imports every module the full package imports, runs numpy, and runs
under MPI."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import sys

import pytest

from helpers import CLI, mpi_env, mpirun, run, tree_site

from python_mpi_bcast.packing import slim


@pytest.fixture(scope="module")
def slim_root(tmp_path_factory, demo_venv):
    root = tmp_path_factory.mktemp("slimroot")
    r1 = run(CLI + ["pack", "--slim", "--python", demo_venv, "-o", str(root), "-q"], timeout=600)
    r2 = run(CLI + ["pack", "--slim", demo_venv, "-o", str(root), "-n", "demo", "-q"], timeout=600)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return {"root": str(root), "python": f"python-{ver}.tar.zst", "env": "demo.tar.zst",
            "log": r1.stderr + r2.stderr}


def _unpack(pk, dest):
    run(CLI + ["unpack", os.path.join(pk["root"], pk["python"]),
               os.path.join(pk["root"], pk["env"]), str(dest)], timeout=300)
    return str(dest)


def test_slim_pack_says_what_it_dropped(slim_root, pkgroot):
    m = re.search(r"slim: demo: dropped (\d+) files, ([\d.]+) MB \(([^)]*)\)", slim_root["log"])
    assert m, slim_root["log"]
    assert int(m.group(1)) > 100 and "tests" in m.group(3) and "headers" in m.group(3)
    assert re.search(r"slim: python-\d+\.\d+: dropped", slim_root["log"]), slim_root["log"]
    full = run(CLI + ["inspect", os.path.join(pkgroot["root"], pkgroot["env"])]).stdout
    thin = run(CLI + ["inspect", os.path.join(slim_root["root"], slim_root["env"])]).stdout
    files = [int(re.search(r"files:\s+(\d+)", t).group(1)) for t in (full, thin)]
    assert files[1] < files[0] - 100, (files, thin)


IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, warnings
warnings.simplefilter("ignore")
failed, ok = [], []
def is_test(name):
    return any(p in ("tests", "test", "conftest") or p.startswith("test_") for p in name.split("."))
for top in sys.argv[1:]:
    try:
        pkg = importlib.import_module(top)
    except ImportError:
        continue
    names = [top] + [m.name for m in pkgutil.walk_packages(pkg.__path__, top + ".",
                                                          onerror=lambda n: failed.append(n))]
    for name in names:
        if is_test(name):
            continue
        try:
            importlib.import_module(name)
            ok.append(name)
        except BaseException as e:  # noqa: BLE001 - record, compare with the full tree
            failed.append(f"{name}: {type(e).__name__}")
sys.stdout.flush()
print("\nRESULT " + json.dumps({"ok": sorted(set(ok)),
                               "failed": sorted(set(f for f in failed if not is_test(f)))}))
"""

NUMPY_WORKS = r"""
import numpy as np
a = np.arange(12.0).reshape(3, 4)
assert np.allclose(np.linalg.pinv(a) @ a @ np.linalg.pinv(a), np.linalg.pinv(a))
assert np.allclose(np.fft.ifft(np.fft.fft(np.arange(8.0))).real, np.arange(8.0))
r = np.random.default_rng(1).normal(size=1000)
assert abs(r.mean()) < 0.2
assert np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]).sum() == 4
assert np.polynomial.Polynomial([1, 2, 3])(2.0) == 17.0
np.testing.assert_allclose(np.sort(np.array([3, 1, 2])), [1, 2, 3])
print("numpy works", np.__version__)
"""


def test_slim_env_imports_everything_the_full_one_does(slim_root, pkgroot, tmp_path, demo_venv):
    tops = ["numpy", "mpi4py", "scipy"]  # scipy when the test venv has it
    out = {}
    for name, pk in (("full", pkgroot), ("slim", slim_root)):
        tree = _unpack(pk, tmp_path / name)
        py = os.path.join(tree, "bin", "python3")
        r = run([py, "-c", IMPORT_ALL] + tops, timeout=600)
        out[name] = json.loads(r.stdout.rsplit("\nRESULT ", 1)[1])
        assert "numpy works" in run([py, "-c", NUMPY_WORKS], timeout=120).stdout
    full, thin = out["full"], out["slim"]
    # mpi4py.MPI needs the launcher's libmpi (checked under MPI below)
    assert "numpy.linalg" in full["ok"] and "mpi4py.futures" in full["ok"], full
    assert thin["ok"] == full["ok"]  # every module the full tree imports
    assert thin["failed"] == full["failed"]  # and no new failure


def test_slim_packages_run_numpy_and_mpi4py_under_mpi(slim_root, shm_chroot):
    code = ("import numpy as np; from mpi4py import MPI; c = MPI.COMM_WORLD\n"
            "s = c.allreduce(float(np.ones(10).sum()))\n"
            "if c.rank == 0: print('sum', s)")
    r = mpirun(2, ["-c", code], mpi_env(slim_root, shm_chroot), timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sum 20.0", (r.stdout, r.stderr)


def _write(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_tests_kept_only_when_the_package_imports_them(tmp_path):
    root = tmp_path / "env"
    site = root / "lib" / "python3.11" / "site-packages"
    _write(site / "used" / "__init__.py", "from used.tests.helpers import fixture\n")
    _write(site / "used" / "tests" / "helpers.py", "fixture = 1\n")
    _write(site / "rel" / "__init__.py", "from .tests import data\n")
    _write(site / "rel" / "tests" / "data.py")
    _write(site / "plain" / "__init__.py", "x = 1\n")
    _write(site / "plain" / "sub" / "tests" / "test_x.py", "import plain.sub.tests\n")
    _write(site / "plain" / "testing" / "__init__.py", "y = 2\n")  # not a tests dir
    _write(site / "plain" / "core" / "include" / "plain" / "api.h", "int f(void);\n")
    _write(site / "plain" / "extra.h", "int g(void);\n")
    _write(site / "plain" / "doc" / "index.txt", "docs\n")
    _write(site / "plain" / "docmod" / "doc" / "ufuncs.py", "d = 1\n")  # a module: kept
    _write(root / "include" / "site" / "python3.11" / "x.h")
    _write(root / "share" / "man" / "man1" / "tool.1", "manual\n")
    _write(root / "share" / "jupyter" / "kernel.json", "{}\n")  # not a document: kept
    d = slim.slim_environment(str(root), "lib/python3.11/site-packages")
    assert (site / "used" / "tests" / "helpers.py").exists()
    assert (site / "rel" / "tests" / "data.py").exists()
    assert not (site / "plain" / "sub" / "tests").exists()
    assert (site / "plain" / "testing" / "__init__.py").exists()
    assert not (site / "plain" / "core" / "include").exists()
    assert not (site / "plain" / "extra.h").exists()
    assert not (site / "plain" / "doc").exists()
    assert (site / "plain" / "docmod" / "doc" / "ufuncs.py").exists()
    assert not (root / "include").exists() and not (root / "share" / "man").exists()
    assert (root / "share" / "jupyter" / "kernel.json").exists()
    assert d.by_reason["tests"][0] == 1 and d.by_reason["headers"][0] == 3
    assert d.by_reason["docs"][0] == 2


def test_no_strip_program_keeps_debug_info_with_a_note(tmp_path, monkeypatch):
    lib = tmp_path / "lib" / "libx.so"
    os.makedirs(lib.parent)
    shutil.copy(sys.executable, lib)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    d = slim.strip_interpreter(str(tmp_path))
    assert d.bytes == 0 and "debug info kept" in d.summary("python-3.11")


def test_slim_interpreter_package_holds_its_binaries_without_debug_info(slim_root, tmp_path):
    """pack --slim --python: libpython (here built with debug info) is
    stripped of it in the package (packing streams from the sources: the
    binaries strip rewrites are the ones copied into TMPDIR), and the
    stripped interpreter runs."""
    import sysconfig
    lib = os.path.join(sysconfig.get_config_var("LIBDIR"),
                       sysconfig.get_config_var("INSTSONAME") or "")
    if not os.path.isfile(lib) or not shutil.which("strip"):
        pytest.skip("needs a shared libpython and strip")
    with open(lib, "rb") as f:
        if b".debug_info" not in f.read():
            pytest.skip("this libpython has no debug info to drop")
    tree = tmp_path / "t"
    run(CLI + ["unpack", os.path.join(slim_root["root"], slim_root["python"]), str(tree)],
        timeout=300)
    slim_lib = tree / "lib" / os.path.basename(lib)
    with open(slim_lib, "rb") as f:
        data = f.read()
    assert b".debug_info" not in data and len(data) < os.path.getsize(lib), len(data)
    r = run([str(tree / "bin" / "python3"), "-c", "import json, ssl; print('ran')"],
            timeout=120)
    assert r.stdout.strip() == "ran"


def test_slim_pack_keeps_the_tests_a_package_imports(tmp_path):
    """pack --slim of a venv (streamed from the sources): a package that
    imports its own tests keeps them, another's tests go."""
    from helpers import make_venv
    venv = make_venv(str(tmp_path / "v"), [])
    site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")
    _write(os.path.join(site, "used", "__init__.py"), "from used.tests.helpers import fixture\n")
    _write(os.path.join(site, "used", "tests", "__init__.py"))
    _write(os.path.join(site, "used", "tests", "helpers.py"), "fixture = 1\n")
    _write(os.path.join(site, "plain", "__init__.py"), "x = 1\n")
    _write(os.path.join(site, "plain", "tests", "test_x.py"), "import plain\n")
    out = tmp_path / "out"
    run(CLI + ["pack", "--slim", venv, "-n", "e", "-o", str(out), "-q"], timeout=600)
    tree = tmp_path / "t"
    run(CLI + ["unpack", str(out / "e.tar.zst"), str(tree)], timeout=300)
    tsite = pathlib.Path(tree_site(str(tree)))  # (Debian's python: local/.../dist-packages)
    assert (tsite / "used" / "tests" / "helpers.py").read_text() == "fixture = 1\n"
    assert (tsite / "plain" / "__init__.py").exists()
    assert not (tsite / "plain" / "tests").exists()
