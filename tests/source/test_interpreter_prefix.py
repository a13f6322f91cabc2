"""An interpreter package runs from any path with the original install
hidden, and no binary of it is rewritten (issue 11).

CPython finds its prefix from where its executable and libpython are; the
prefix compiled into libpython is only a fallback.  Rewriting it in place is
unsafe: linkers store CPython's version string ("3.11.7") as the tail of the
prefix string when the prefix ends in the version (pyenv's
``~/.pyenv/versions/3.11.7``), and a padded rewrite of the prefix cut
``sys.version`` short.  These tests pack the interpreter that runs the suite
(on this project's machines pyenv's 3.11.7, whose prefix ends in its version)
and check it from trees shorter than, as long as and longer than its prefix.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile

import pytest

from helpers import PRIVATE, UNSHARE_MOUNT, CLI, LAUNCHER, MPIEXEC, base_python, mpi_env, run

from python_mpi_bcast.packing.collect import SYSTEM_PREFIXES
from python_mpi_bcast.package.format import read_manifest

OLD_PREFIX = os.path.realpath(os.path.dirname(os.path.dirname(base_python())))
VERSION = platform.python_version()
RELOCATED = "system" if OLD_PREFIX in SYSTEM_PREFIXES else "relocated"

CHECK = r"""
import platform, sqlite3, ssl, sys, sysconfig
tree = sys.argv[1]
assert sys.version.startswith(platform.python_version() + " "), sys.version
assert platform.python_version() == sys.argv[2], (platform.python_version(), sys.argv[2])
for name in ("prefix", "exec_prefix", "base_prefix", "base_exec_prefix"):
    assert getattr(sys, name) == tree, (name, getattr(sys, name), tree)
for key, path in sysconfig.get_paths().items():
    assert path == tree or path.startswith(tree + "/"), (key, path)
# the build-time prefix is rewritten unless it is a system one (/usr: on every node)
if sys.argv[3] == "relocated":
    assert sysconfig.get_config_var("prefix") == tree, sysconfig.get_config_var("prefix")
ssl.create_default_context()
sqlite3.connect(":memory:").execute("select 1")
sys.stdout.write("OK %s\n" % sys.version.split()[0])  # one write: ranks interleave print()'s pieces
"""


def hidden(cmd: list[str]) -> list[str]:
    """Run ``cmd`` with the original interpreter install hidden under an
    empty tmpfs (a private mount namespace), where that can be done."""
    if os.geteuid() != 0 or not shutil.which("unshare") or OLD_PREFIX.startswith("/usr") \
            or OLD_PREFIX in SYSTEM_PREFIXES:
        return cmd
    return UNSHARE_MOUNT + [PRIVATE + 'mount -t tmpfs pmb-hide "$0" && exec "$@"',
                            OLD_PREFIX] + cmd


def short_base() -> str:
    """A short private directory: /tmp/pmbXXXXXXXX (17 bytes)."""
    return tempfile.mkdtemp(prefix="pmb", dir="/tmp")


def test_no_binary_of_an_interpreter_or_venv_package_is_rewritten(pkgroot):
    for name in (pkgroot["python"], pkgroot["env"]):
        m = read_manifest(os.path.join(pkgroot["root"], name))[0]
        assert [p.path for p in m.prefix_files if p.mode == "binary"] == []


def test_compiled_in_prefix_and_version_strings_are_untouched(pkgroot, tmp_path):
    m = read_manifest(os.path.join(pkgroot["root"], pkgroot["python"]))[0]
    dest = str(tmp_path / "t")
    run(CLI + ["unpack", os.path.join(pkgroot["root"], pkgroot["python"]), dest])
    with open(os.path.join(dest, m.libpython), "rb") as f:
        staged = f.read()
    import sysconfig
    soname = os.path.basename(m.libpython)
    orig = None
    for d in (sysconfig.get_config_var("LIBDIR"), os.path.join(OLD_PREFIX, "lib")):
        if d and os.path.exists(os.path.join(d, soname)):
            orig = os.path.join(d, soname)
            break
    if orig is None:
        pytest.skip(f"{soname} of the running Python not found")
    with open(orig, "rb") as f:
        original = f.read()
    # the compiled-in prefix (with the version string as its tail) is intact;
    # patchelf may only have rewritten an RPATH ("<prefix>/lib")
    old = OLD_PREFIX.encode()
    if OLD_PREFIX.endswith("/" + VERSION):
        assert original.count(old + b"\0") >= 1  # the case of issue 11 is really here
    assert staged.count(old + b"\0") == original.count(old + b"\0")
    assert staged.count(VERSION.encode() + b"\0") == original.count(VERSION.encode() + b"\0")


@pytest.mark.parametrize("delta", [-5, 0, 8], ids=["shorter", "equal", "longer"])
def test_unpacked_interpreter_works_at_any_path_length(pkgroot, delta):
    want = len(OLD_PREFIX) + delta
    base = short_base()
    try:
        if want < len(base) + 2:
            if delta <= 0:
                pytest.skip(f"the interpreter's prefix {OLD_PREFIX} is too short to unpack "
                            f"into a shorter or equal path here")
            want = len(base) + 2 + delta
        dest = base + "/" + "d" * (want - len(base) - 1)
        assert len(dest) == want
        run(CLI + ["unpack", os.path.join(pkgroot["root"], pkgroot["python"]),
                   os.path.join(pkgroot["root"], pkgroot["env"]), dest])
        r = run(hidden([os.path.join(dest, "bin", "python3"), "-c", CHECK, dest, VERSION,
                        RELOCATED]), timeout=120)
        assert r.stdout.strip() == f"OK {VERSION}"
        r = run(hidden([os.path.join(dest, "bin", "pip"), "--version"]), timeout=120)
        assert r.stdout.startswith("pip ") and dest + "/" in r.stdout, r.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("long_chroot", [False, True], ids=["short-chroot", "long-chroot"])
def test_staged_interpreter_keeps_sys_version(pkgroot, long_chroot):
    """The launcher's tree is <chroot>/env-<32 hex>; at its shortest here
    (/tmp/pmbXXXXXXXX/env-...) and with a long chroot."""
    base = short_base()
    chroot = base + ("/" + "c" * 40 if long_chroot else "")
    try:
        env = mpi_env(pkgroot, chroot, cliques=2)
        prog = CHECK.replace("tree = sys.argv[1]", "import os; tree = os.environ['PYTHON_MPI_TREE']")
        r = run(hidden([MPIEXEC, "-n", "2", LAUNCHER, "-c", prog, "-", VERSION, RELOCATED]),
                env=env,
                timeout=180, check=False)
        assert r.returncode == 0, r.stderr
        # one "OK VERSION" per rank, in any order and however mpiexec joins them
        assert r.stdout.count("OK " + VERSION) == 2, r.stdout
        assert r.stdout.replace("OK " + VERSION, "").split() == [], r.stdout
        r = run(hidden([MPIEXEC, "-n", "2", LAUNCHER, "-m", "pip", "--version"]), env=env,
                timeout=180, check=False)
        assert r.returncode == 0, r.stderr
        # each rank's message and its newline may reach mpiexec's stdout as
        # separate writes, so the two ranks' lines can interleave
        where = re.findall(r"pip \S+ from (\S+)", r.stdout)
        assert len(where) == 2 and all(w.startswith(chroot + "/env-") for w in where), r.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
