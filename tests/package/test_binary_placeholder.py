"""Recorded binary placeholders (conda's technique, issue 11 part 2): both
readers replace only the recorded placeholder, keep the rest of each C
string, pad with NULs at its end, and refuse a tree path longer than the
placeholder instead of writing past it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from helpers import CLI, LAUNCHER, MPIEXEC, base_python, run

from python_mpi_bcast.source import pyinfo
from python_mpi_bcast.package import prefixes as relocate
from python_mpi_bcast.package.archive import write_package
from python_mpi_bcast.packing.collect import Staged
from python_mpi_bcast.package.format import PrefixFile

# conda's placeholder for old packages is /opt/anaconda1anaconda2anaconda3
# (32 bytes); conda-build now pads the build prefix to 255 bytes
SHORT_PH = b"/opt/anaconda1anaconda2anaconda3"
LONG_PH = b"/tmp/build/_h_env" + b"_placehold" * 23


def blob(ph: bytes) -> bytes:
    return (b"\x7fELF\0" + ph + b"/lib/python3.11\0other\0" + ph + b"\0xx"
            + ph + b"/a:" + ph + b"/b\0\xff\xfe" + b"3.11.7\0")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    out = {}
    info = pyinfo.query(base_python())
    for name, ph in (("short", SHORT_PH), ("long", LONG_PH)):
        staging = root / f"stage-{name}"
        staging.mkdir()
        (staging / "bin").mkdir()
        (staging / "bin" / "tool").write_bytes(blob(ph))
        st = Staged(root=str(staging), kind="directory", name=name, info=info)
        write_package(st, [PrefixFile("binary", "bin/tool", ph.decode())],
                      str(root / f"{name}.tar.zst"))
        out[name] = ph
    return str(root), out


def stage(pkgroot: str, pkg: str, chroot: str):
    env = dict(os.environ, PYTHON_MPI_PKGROOT=pkgroot, PYTHON_MPI_PACKAGES=pkg,
               PYTHON_MPI_CHROOT=chroot, MPIR_CVAR_NUM_CLIQUES="1")
    return run([MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=120, check=False)


def test_both_readers_patch_recorded_placeholders_in_place(packages):
    root, phs = packages
    base = tempfile.mkdtemp(prefix="pmb", dir="/tmp")
    try:
        r = stage(root, "long.tar.zst", base + "/node")
        assert r.returncode == 0, r.stderr
        tree = r.stdout.strip()
        with open(os.path.join(tree, "bin", "tool"), "rb") as f:
            staged = f.read()
        expect = relocate.replace_binary_prefix(blob(phs["long"]), phs["long"], tree.encode())
        assert staged == expect
        assert len(staged) == len(blob(phs["long"]))
        assert staged.startswith(b"\x7fELF\0" + tree.encode() + b"/lib/python3.11\0")
        assert (tree + "/a:" + tree + "/b").encode() + b"\0" in staged
        assert staged.endswith(b"\xff\xfe3.11.7\0")  # bytes after the strings never move
        dest = base + "/unpacked"
        run(CLI + ["unpack", os.path.join(root, "long.tar.zst"), dest], timeout=60)
        with open(os.path.join(dest, "bin", "tool"), "rb") as f:
            assert f.read() == relocate.replace_binary_prefix(blob(phs["long"]), phs["long"],
                                                              dest.encode())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_tree_path_longer_than_the_placeholder_is_refused(packages):
    root, _ = packages
    base = tempfile.mkdtemp(prefix="pmb", dir="/tmp")
    try:
        r = stage(root, "short.tar.zst", base + "/node")
        assert r.returncode != 0
        assert "bin/tool can hold a path of at most 32 bytes" in r.stderr, r.stderr
        assert "PYTHON_MPI_CHROOT" in r.stderr
        assert not [d for d in os.listdir(base + "/node") if d.startswith("env-")]
        dest = base + "/" + "d" * 40
        r = run(CLI + ["unpack", os.path.join(root, "short.tar.zst"), dest], timeout=60,
                check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "bin/tool can hold a path of at most 32 bytes" in r.stderr, r.stderr
        # an unpack user has no PYTHON_MPI_CHROOT to set: the line names DEST's limit
        assert "choose a destination whose path is at most 32 bytes long" in r.stderr, r.stderr
        assert "PYTHON_MPI_CHROOT" not in r.stderr and len(r.stderr.splitlines()) == 1
        assert not os.path.exists(dest)
    finally:
        shutil.rmtree(base, ignore_errors=True)
