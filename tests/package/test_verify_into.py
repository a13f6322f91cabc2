"""``verify --into DIR``: the same checks as ``verify``, and the tree it
unpacked is kept at DIR (prefix-bearing files naming DIR), made the way
``unpack`` makes it; DIR must not exist, and a package that fails the
checks leaves no DIR."""

from __future__ import annotations

import os

from helpers import CLI, run
from python_mpi_bcast.package.format import read_manifest


def _package(tmp_path) -> str:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    (src / "conf.txt").write_text(f"data = {src}/x\n")  # names its own location
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "d", "-q"], timeout=120)
    return str(tmp_path / "d.tar.zst")


def test_verify_into_keeps_the_checked_tree_where_told_and_refuses_an_existing_dir(tmp_path):
    pkg = _package(tmp_path)
    m = read_manifest(pkg)[0]
    assert [p.path for p in m.prefix_files] == ["conf.txt"]
    into = tmp_path / "kept"
    r = run(CLI + ["verify", pkg, "--into", str(into)], timeout=120)
    assert "OK (2 files" in r.stdout, r.stdout
    assert (into / "sub" / "a.txt").read_text() == "alpha\n"
    assert (into / "conf.txt").read_text() == f"data = {into}/x\n"  # relocated to DIR
    # a second verify into the same DIR: one line, DIR as it was
    before = sorted(os.listdir(into))
    r = run(CLI + ["verify", pkg, "--into", str(into)], timeout=120, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "already exists" in r.stderr and sorted(os.listdir(into)) == before
    # unpack --force may replace a tree verify --into made (it carries unpack's record)
    run(CLI + ["unpack", pkg, str(into), "--force"], timeout=120)


def test_verify_into_of_a_damaged_package_leaves_no_dir(tmp_path):
    pkg = _package(tmp_path)
    m, start = read_manifest(pkg)
    data = bytearray(open(pkg, "rb").read())
    data[start + m.shards[0].csize // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(data))
    into = tmp_path / "kept"
    r = run(CLI + ["verify", str(bad), "--into", str(into)], timeout=120, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert not into.exists()
    assert [e for e in os.listdir(tmp_path) if e.startswith(".kept")] == []
