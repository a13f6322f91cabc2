"""pack / unpack / inspect / verify on a real venv with real wheels."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import (CLI, allocated, base_python, config_prefix, copy_numpy, disk_peaks,
                     make_venv, run, tree_digest)

from python_mpi_bcast.package.format import read_manifest


@pytest.fixture(scope="module")
def moved_venv(tmp_path_factory, demo_venv):
    """A private copy of the demo venv (with an extra console script) that
    the test can pack and then rename away."""
    base = tmp_path_factory.mktemp("moved")
    venv = str(base / "orig-venv")
    make_venv(venv, [])
    copy_numpy(demo_venv, venv)  # the cached wheels' numpy/mpi4py
    dst_site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                            "site-packages")
    # console scripts as pip writes them (absolute shebang into this venv)
    for script, body in (("f2py", "from numpy.f2py.f2py2e import main\nimport sys\nsys.exit(main())"),
                         ("show-prefix", "import sys\nprint(sys.prefix)")):
        p = os.path.join(venv, "bin", script)
        with open(p, "w") as f:
            f.write(f"#!{venv}/bin/python\n{body}\n")
        os.chmod(p, 0o755)
    # a .pth file with an absolute path into the venv
    os.makedirs(os.path.join(dst_site, "extra_dir"))
    with open(os.path.join(dst_site, "extra_dir", "extra_mod.py"), "w") as f:
        f.write("VALUE = 42\n")
    with open(os.path.join(dst_site, "extra.pth"), "w") as f:
        f.write(f"{dst_site}/extra_dir\n")
    out = base / "pkgs"
    run(CLI + ["pack", "--python", venv, "-o", str(out), "-q"], timeout=600)
    run(CLI + ["pack", venv, "-o", str(out), "-n", "env", "-q"], timeout=600)
    away = str(base / "renamed-away")
    os.rename(venv, away)
    ver_s = f"{sys.version_info[0]}.{sys.version_info[1]}"
    yield {"venv": venv, "away": away, "out": str(out),
           "python": str(out / f"python-{ver_s}.tar.zst"), "env": str(out / "env.tar.zst"),
           "base_prefix": os.path.dirname(os.path.dirname(base_python()))}
    if os.path.exists(away):
        os.rename(away, venv)


@pytest.fixture(scope="module")
def unpacked(moved_venv, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("dest") / "somewhere" / "else")
    run(CLI + ["unpack", moved_venv["python"], moved_venv["env"], dest], timeout=300)
    return dest


def test_numpy_runs_from_unpacked_tree_after_venv_is_gone(unpacked, moved_venv):
    assert not os.path.exists(moved_venv["venv"])
    py = os.path.join(unpacked, "bin", "python3")
    code = ("import sys, numpy as np, extra_mod\n"
            "a = np.arange(12.0).reshape(3, 4)\n"
            "print(sys.prefix, float((a @ a.T).trace()), np.linalg.det(np.eye(3) * 2), extra_mod.VALUE)")
    r = run([py, "-c", code], timeout=120, env={"PATH": "/usr/bin:/bin"})
    prefix, trace, det, value = r.stdout.split()
    assert prefix == unpacked
    assert float(trace) == 506.0 and abs(float(det) - 8.0) < 1e-12 and value == "42"


def test_console_scripts_run_from_unpacked_tree(unpacked):
    r = run([os.path.join(unpacked, "bin", "show-prefix")], timeout=60)
    assert r.stdout.strip() == unpacked
    r = run([os.path.join(unpacked, "bin", "f2py"), "-v"], timeout=60)
    numpy_version = run([os.path.join(unpacked, "bin", "python3"), "-c",
                         "import numpy; print(numpy.__version__)"], timeout=60).stdout.strip()
    assert r.stdout.strip() == numpy_version
    r = run([os.path.join(unpacked, "bin", "pip"), "--version"], timeout=60)
    assert unpacked in r.stdout


def test_no_old_prefix_bytes_left_outside_listed_files(unpacked, moved_venv):
    listed, kept = set(), []
    for pkg in (moved_venv["python"], moved_venv["env"]):
        listed |= {p.path for p in read_manifest(pkg)[0].prefix_files}
    old = [moved_venv["venv"].encode(), os.path.realpath(moved_venv["venv"]).encode()]
    base = moved_venv["base_prefix"]
    if base not in ("/usr", "/usr/local"):
        old.append(base.encode())
    bad = []
    for dirpath, dirnames, filenames in os.walk(unpacked):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, unpacked)
            if os.path.islink(full) or rel in listed:
                continue
            with open(full, "rb") as f:
                data = f.read()
            if any(o in data for o in old):
                # an ELF file may keep a compiled-in fallback path (libpython's
                # PREFIX); it is never rewritten (issue 11), nothing else may
                (kept if data[:4] == b"\x7fELF" else bad).append(rel)
    assert bad == []
    assert all("libpython" in k for k in kept), kept


def test_record_entries_resolve_inside_the_tree(pkgroot, tmp_path):
    """pip's RECORD (used by uninstall) still names real files, including the
    ../ entries for console scripts, whatever depth the site dir has."""
    import glob
    unpacked = str(tmp_path / "tree")
    run(CLI + ["unpack", os.path.join(pkgroot["root"], pkgroot["python"]),
               os.path.join(pkgroot["root"], pkgroot["env"]), unpacked], timeout=300)
    records = glob.glob(os.path.join(unpacked, "**", "numpy-*.dist-info", "RECORD"), recursive=True)
    assert len(records) == 1
    site = os.path.dirname(os.path.dirname(records[0]))
    missing = []
    scripts = 0
    for line in open(records[0]).read().splitlines():
        path = line.split(",")[0]
        if not path or "__pycache__" in path:
            continue
        scripts += path.startswith("../")
        if not os.path.lexists(os.path.normpath(os.path.join(site, path))):
            missing.append(path)
    assert missing == [] and scripts >= 1


def test_elf_rpaths_do_not_point_to_old_locations(unpacked, moved_venv):
    from python_mpi_bcast.packing import elf
    for dirpath, dirnames, filenames in os.walk(unpacked):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            with open(full, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            for entry in elf.get_rpath(full):
                assert not entry.startswith(moved_venv["venv"]), (full, entry)
                assert not entry.startswith(moved_venv["base_prefix"] + "/") or \
                    moved_venv["base_prefix"] in ("/usr",), (full, entry)


def test_everything_byte_compiled_unchecked(unpacked):
    import importlib.util
    missing = []
    flags_seen = set()
    for sub in ("lib",):
        for dirpath, dirnames, filenames in os.walk(os.path.join(unpacked, sub)):
            if "__pycache__" in dirpath:
                continue
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                tag = sys.implementation.cache_tag
                pyc = os.path.join(dirpath, "__pycache__", f"{name[:-3]}.{tag}.pyc")
                if not os.path.exists(pyc):
                    missing.append(os.path.join(dirpath, name))
                    continue
                with open(pyc, "rb") as f:
                    head = f.read(8)
                assert head[:4] == importlib.util.MAGIC_NUMBER
                flags_seen.add(int.from_bytes(head[4:8], "little"))
    # files with syntax errors for this Python (test data) may lack a pyc
    assert len(missing) < 20, missing[:20]
    assert 0b01 in flags_seen  # hash-based, not checked


def test_tar_zstd_extracts_the_same_tree(moved_venv, unpacked, tmp_path):
    """Standard tools read the format: tar --zstd, and zstd -dc | tar -x."""
    if not shutil.which("zstd"):
        pytest.skip("zstd command not installed")
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for pkg in (moved_venv["python"], moved_venv["env"]):
        run(["tar", "--zstd", "-xf", pkg, "-C", str(a)], timeout=120)
        run(["sh", "-c", f"zstd -dcq '{pkg}' | tar -x -C '{b}'"], timeout=120)
    ref = str(tmp_path / "ref")
    run(CLI + ["unpack", moved_venv["python"], moved_venv["env"], ref], timeout=300)
    # prefix-bearing files differ on purpose (they are patched for ref)
    listed = set()
    for pkg in (moved_venv["python"], moved_venv["env"]):
        listed |= {p.path for p in read_manifest(pkg)[0].prefix_files}
    # (unpack's record of the tree it made is not in the package)
    dr = tree_digest(ref, skip=(".python-mpi-bcast-unpack.json",))
    da, db = tree_digest(str(a)), tree_digest(str(b))
    assert da == db
    assert set(da) == set(dr)
    diff = [k for k in da if da[k] != dr[k] and k not in listed]
    assert diff == []


def test_inspect_shows_manifest(moved_venv):
    r = run(CLI + ["inspect", "--json", moved_venv["env"]], timeout=60)
    m = json.loads(r.stdout)
    assert m["kind"] == "environment" and m["name"] == "env" and m["format_version"] == 2
    assert m["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert m["files"] > 1000 and m["unpacked_size"] > 10_000_000
    assert len(m["shards"]) >= 3
    r = run(CLI + ["inspect", moved_venv["python"]], timeout=60)
    assert "kind:          interpreter" in r.stdout and "libpython" in r.stdout


def test_shards_are_independent_zstd_frames_balanced_by_size(moved_venv):
    import io
    import tarfile
    import zstandard
    m, start = read_manifest(moved_venv["env"])
    with open(moved_venv["env"], "rb") as f:
        data = f.read()
    sizes = []
    for s in m.shards[:-1]:
        raw = zstandard.ZstdDecompressor().decompress(data[start + s.offset:start + s.offset + s.csize],
                                                      max_output_size=s.usize)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:  # whole members only
            assert sum(1 for ti in tf if ti.isreg()) == s.nfiles
        sizes.append(s.usize)
    big = max(sizes)
    # balanced: no shard is far above the mean unless one file is that big
    assert big <= 3 * (sum(sizes) / len(sizes)) or big > 8 << 20


def test_verify_ok_and_detects_corruption(moved_venv, tmp_path):
    r = run(CLI + ["verify", moved_venv["env"]], timeout=120)
    assert "OK" in r.stdout
    bad = tmp_path / "bad.tar.zst"
    data = bytearray(open(moved_venv["env"], "rb").read())
    data[-5000] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = run(CLI + ["verify", str(bad)], timeout=120, check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("python-mpi-bcast: error: ") and "corrupt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_verify_reports_binaries_that_keep_a_compiled_in_path(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    # a binary file (NUL byte) holding the source path is kept as it is (a
    # padded rewrite can cut merged strings, issue 11); verify names it
    (src / "blob.bin").write_bytes(b"\0" + str(src).encode() + b"\0")
    (src / "conf.txt").write_text(f"data = {src}/x\n")
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "d", "-q"], timeout=120)
    pkg = str(tmp_path / "d.tar.zst")
    m = read_manifest(pkg)[0]
    assert [(p.mode, p.path) for p in m.prefix_files] == [("text", "conf.txt")]
    out = run(CLI + ["verify", pkg], timeout=60).stdout
    assert "1 binary file(s) keep a compiled-in path" in out and "blob.bin" in out
    assert "OK" in out


def test_unpack_refuses_existing_dest(moved_venv, tmp_path):
    d = tmp_path / "exists"
    d.mkdir()
    r = run(CLI + ["unpack", moved_venv["env"], str(d)], timeout=60, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr


# -- bad input: one line, exit 1 ---------------------------------------------

def one_line_error(r, *needles):
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("python-mpi-bcast: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_not_a_venv(tmp_path):
    (tmp_path / "plain").mkdir()
    r = run(CLI + ["pack", str(tmp_path / "plain"), "-o", str(tmp_path)], check=False)
    one_line_error(r, "is not a venv", "pyvenv.cfg")
    r = run(CLI + ["pack", "--python", str(tmp_path / "plain"), "-o", str(tmp_path)], check=False)
    one_line_error(r, "neither a venv", "nor a Python installation (no bin/python3)")


def test_missing_venv(tmp_path):
    r = run(CLI + ["pack", str(tmp_path / "nope"), "-o", str(tmp_path)], check=False)
    one_line_error(r, "nope")


def test_venv_whose_base_interpreter_is_gone(tmp_path):
    v = tmp_path / "v"
    make_venv(str(v), [])
    cfg = (v / "pyvenv.cfg").read_text()
    (v / "pyvenv.cfg").write_text("\n".join(
        "home = /nonexistent/python/bin" if line.startswith("home") else line
        for line in cfg.splitlines()))
    r = run(CLI + ["pack", str(v), "-o", str(tmp_path)], check=False)
    one_line_error(r, "base interpreter is gone", "/nonexistent/python/bin")


def test_output_dir_not_writable(tmp_path, demo_venv):
    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file cannot be created
        (tmp_path / "file").write_text("x")
        r = run(CLI + ["pack", demo_venv, "-o", str(tmp_path / "file" / "sub")], check=False)
        one_line_error(r, "output directory")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        r = run(CLI + ["pack", demo_venv, "-o", str(ro)], check=False)
        one_line_error(r, "not writable")


def test_name_clash(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    (src / "f").write_text("x")
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "x", "-q"])
    r = run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "x", "-q"], check=False)
    one_line_error(r, "already exists", "--force")
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "x", "-q", "--force"])


@pytest.fixture
def venv_with_huge_file(tmp_path):
    """A venv holding a 4 TB (sparse) data file: reading it would take hours."""
    v = tmp_path / "big"
    make_venv(str(v), [])
    site = next((v / "lib").glob("python*/site-packages"))
    with open(site / "huge.dat", "wb") as f:
        f.truncate(4 << 40)
    return v


def test_packing_into_an_existing_name_fails_before_reading_the_source(tmp_path,
                                                                       venv_with_huge_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.tar.zst").write_bytes(b"someone's data")
    stage = tmp_path / "stage"
    stage.mkdir()
    env = dict(os.environ, TMPDIR=str(stage))
    t0 = time.monotonic()
    r = run(CLI + ["pack", str(venv_with_huge_file), "-o", str(out), "-q"], env=env, timeout=60,
            check=False)
    one_line_error(r, "already exists", "--force")
    assert time.monotonic() - t0 < 30  # refused at once, not after copying
    assert (out / "big.tar.zst").read_bytes() == b"someone's data"
    assert os.listdir(stage) == [] and sorted(os.listdir(out)) == ["big.tar.zst"]


def test_an_output_directory_without_room_for_the_package_is_refused_up_front(
        tmp_path, venv_with_huge_file):
    out = tmp_path / "out"
    out.mkdir()
    stage = tmp_path / "stage"
    stage.mkdir()
    env = dict(os.environ, TMPDIR=str(stage))
    r = run(CLI + ["pack", str(venv_with_huge_file), "-o", str(out), "-q"], env=env, timeout=60,
            check=False)
    one_line_error(r, "no space left in", str(out), "MB are free")
    assert os.listdir(stage) == [] and os.listdir(out) == []


def test_pack_force_replaces_only_a_package(tmp_path):
    """pack --force where NAME.tar.zst is a directory or a file that is no
    package: refused in one line, untouched; a package is replaced."""
    src = tmp_path / "d"
    src.mkdir()
    (src / "f").write_text("x")
    out = tmp_path / "out"
    (out / "x.tar.zst").mkdir(parents=True)
    (out / "x.tar.zst" / "results.csv").write_text("1,2\n")
    (out / "y.tar.zst").write_text("my notes\n")
    for name in ("x", "y"):
        r = run(CLI + ["pack", "--directory", str(src), "-o", str(out), "-n", name, "-q",
                       "--force"], check=False)
        one_line_error(r, f"{out}/{name}.tar.zst", "not a python-mpi-bcast package",
                       "left as it is")
    assert (out / "x.tar.zst" / "results.csv").read_text() == "1,2\n"
    assert (out / "y.tar.zst").read_text() == "my notes\n"
    run(CLI + ["pack", "--directory", str(src), "-o", str(out), "-n", "z", "-q"])
    (src / "f").write_text("changed")
    run(CLI + ["pack", "--directory", str(src), "-o", str(out), "-n", "z", "-q", "--force"])
    assert sorted(os.listdir(out)) == ["x.tar.zst", "y.tar.zst", "z.tar.zst", "z.tar.zst.shards"]


def test_unpack_force_never_replaces_what_unpack_did_not_make(tmp_path):
    """unpack PKG DEST --force with DEST someone's directory: refused in one
    line naming what to do, untouched; a tree unpack made is replaced."""
    src = tmp_path / "d"
    src.mkdir()
    (src / "f").write_text("x")
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "p", "-q"])
    pkg = str(tmp_path / "p.tar.zst")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{Results}\n")
    for extra in ([], ["--force"]):
        r = run(CLI + ["unpack", pkg, str(thesis)] + extra, check=False)
        one_line_error(r, f"{thesis} already exists")
    one_line_error(r, "not a tree unpacked by python-mpi-bcast", "left as it is",
                   "choose a DEST that does not exist yet")
    assert os.listdir(thesis) == ["thesis.tex"]
    assert (thesis / "thesis.tex").read_text() == "\\chapter{Results}\n"
    dest = tmp_path / "tree"
    run(CLI + ["unpack", pkg, str(dest)])
    (dest / "added").write_text("")
    r = run(CLI + ["unpack", pkg, str(dest)], check=False)
    one_line_error(r, "already exists", "--force")
    run(CLI + ["unpack", pkg, str(dest), "--force"])
    assert not (dest / "added").exists() and (dest / "f").read_text() == "x"


def test_out_of_room_lines_name_what_an_unpack_user_can_change(tmp_path):
    """unpack into a tmpfs with room for few files: one line, saying what is
    short and naming no launcher setting (PYTHON_MPI_CHROOT means nothing to
    its users).  verify with TMPDIR there needs no room: it writes nothing
    (tests/package/test_verify_stream.py)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    src = tmp_path / "d"
    src.mkdir()
    for i in range(60):
        (src / f"f{i}").write_text(str(i))
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "p", "-q"])
    small = tmp_path / "small"
    small.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=30", "tmpfs", str(small)],
            check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        r = run(CLI + ["unpack", str(tmp_path / "p.tar.zst"), str(small / "t")], check=False)
        one_line_error(r, f"no space left in {small} for {small}/t: it needs 60 files",
                       "choose a DEST with more room")
        assert "PYTHON_MPI_CHROOT" not in r.stderr
        assert os.listdir(small) == []
        r = run(CLI + ["verify", str(tmp_path / "p.tar.zst")],
                env=dict(os.environ, TMPDIR=str(small)))
        assert "OK (60 files" in r.stdout and os.listdir(small) == []
    finally:
        run(["umount", str(small)], check=False)


def test_editable_install_is_refused(tmp_path):
    v = tmp_path / "v"
    make_venv(str(v), [])
    proj = tmp_path / "proj"
    (proj / "edpkg").mkdir(parents=True)
    (proj / "edpkg" / "__init__.py").write_text("X = 1\n")
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "edpkg"\nversion = "0.1"\n')
    r = run([str(v / "bin" / "pip"), "install", "-q", "-e", str(proj)], timeout=600, check=False)
    if r.returncode != 0:
        pytest.skip("could not make an editable install here: " + r.stderr[-200:])
    r = run(CLI + ["pack", str(v), "-o", str(tmp_path), "--refuse-editable"], check=False)
    one_line_error(r, "editable", "edpkg", "without -e")


def test_full_disk(tmp_path, demo_venv):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        r = run(CLI + ["pack", demo_venv, "-o", str(small), "-q"], timeout=300, check=False)
        one_line_error(r, "no space left")
        assert [p for p in os.listdir(small) if not p.startswith(".")] == []
        assert os.listdir(small) == []
    finally:
        run(["umount", str(small)], check=False)


def test_interrupted_pack_leaves_no_half_file(tmp_path, demo_venv):
    out = tmp_path / "out"
    out.mkdir()
    for delay in (0.5, 1.5, 3.0):
        p = subprocess.Popen(CLI + ["pack", demo_venv, "-o", str(out), "-n", "big", "-q", "-f",
                                    "--level", "19"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        final = out / "big.tar.zst"
        if final.exists():  # it finished: then it must be whole
            assert "OK" in run(CLI + ["verify", str(final)], timeout=120).stdout
            final.unlink()
    assert not (out / "big.tar.zst").exists()


def test_bad_option_values(tmp_path):
    r = run(CLI + ["pack", "--directory", str(tmp_path), "--level", "99"], check=False)
    assert r.returncode == 2 and "zstd level" in r.stderr
    r = run(CLI + ["inspect", str(tmp_path / "none.tar.zst")], check=False)
    one_line_error(r, "none.tar.zst")
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(100))
    r = run(CLI + ["inspect", str(junk)], check=False)
    one_line_error(r, "not a python-mpi-bcast package")


# --- stream, don't copy -------------------------------------------------------

@pytest.fixture(scope="module")
def relocation_venv(tmp_path_factory, demo_venv):
    """A venv with what relocation rewrites: numpy and mpi4py (copied from
    the demo venv), a console script with an absolute shebang, a .pth file
    with an absolute path, a module that names the venv in a string (the
    unpacker patches it: no .pyc), a read-only file and a link to a file
    outside the venv."""
    base = tmp_path_factory.mktemp("reloc")
    venv = str(base / "venv")
    make_venv(venv, [])
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = os.path.join(venv, "lib", ver, "site-packages")
    copy_numpy(demo_venv, venv, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(venv, "bin", "show-prefix"), "w") as f:
        f.write(f"#!{venv}/bin/python\nimport sys\nprint(sys.prefix)\n")
    os.chmod(os.path.join(venv, "bin", "show-prefix"), 0o755)
    os.makedirs(os.path.join(site, "extra_dir"))
    with open(os.path.join(site, "extra_dir", "extra_mod.py"), "w") as f:
        f.write("VALUE = 42\n")
    with open(os.path.join(site, "extra.pth"), "w") as f:
        f.write(f"{site}/extra_dir\n")
    with open(os.path.join(site, "where.py"), "w") as f:
        f.write(f"DATA = {os.path.join(venv, 'share', 'data')!r}\n")
    with open(os.path.join(site, "frozen.py"), "w") as f:
        f.write("X = 1\n")
    os.chmod(os.path.join(site, "frozen.py"), 0o444)
    (base / "outside.txt").write_text("outside\n")
    os.symlink(str(base / "outside.txt"), os.path.join(site, "outside_link.txt"))
    return venv


def _pack_both_ways(venv: str, out_stream, out_copy, args: list[str], tmp_path) -> tuple:
    """The same pack, streamed (the CLI) and copied (pack(copy=True)); the
    two packages unpacked; returns (tree digests, manifests)."""
    run(CLI + ["pack"] + args + ["-o", str(out_stream), "-q"], timeout=900)
    kw = ", ".join(f"{k}={v!r}" for k, v in _pack_kwargs(venv, args).items())
    run([sys.executable, "-c", "from python_mpi_bcast.packing.pack import pack\n"
         f"pack({kw}, output_dir={str(out_copy)!r}, quiet=True, copy=True)"], timeout=900)
    trees, manifests = [], []
    for i, out in enumerate((out_stream, out_copy)):
        (pkg,) = [str(p) for p in out.iterdir() if p.name.endswith(".tar.zst")]
        dest = tmp_path / f"tree{i}"
        run(CLI + ["unpack", pkg, str(dest)], timeout=300)
        trees.append(tree_digest(str(dest), skip=(".python-mpi-bcast-unpack.json",),
                                 own_path=True, pyc_code=True))
        manifests.append(read_manifest(pkg)[0])
    return trees, manifests


def _pack_kwargs(venv: str, args: list[str]) -> dict:
    if args[0] == "--python":
        return {"python": venv, "with_python": True}
    return {"venv": venv, "name": args[args.index("-n") + 1]}


@pytest.mark.parametrize("layer", ["environment", "interpreter"])
def test_streamed_package_unpacks_to_the_tree_the_copying_packer_made(relocation_venv,
                                                                      tmp_path, layer):
    """Streaming changes how a package is written, not what it holds: the
    same files, bytes, modes, links, .pyc (their code: the stream takes the
    venv's own .pyc where it can, the copy compiles) and prefix-file list as
    packing a copy of the tree (the way pack worked before)."""
    args = ["--python", relocation_venv] if layer == "interpreter" else [relocation_venv, "-n", "e"]
    (tmp_path / "s").mkdir()
    (tmp_path / "c").mkdir()
    trees, ms = _pack_both_ways(relocation_venv, tmp_path / "s", tmp_path / "c", args, tmp_path)
    only = set(trees[0]) ^ set(trees[1])
    differ = [k for k in set(trees[0]) & set(trees[1]) if trees[0][k] != trees[1][k]]
    assert not only and not differ, (sorted(only)[:20], sorted(differ)[:20])
    assert any(k.endswith(".pyc") for k in trees[0]) and len(trees[0]) > 500
    assert [(p.mode, p.path, p.placeholder) for p in ms[0].prefix_files] == \
        [(p.mode, p.path, p.placeholder) for p in ms[1].prefix_files]
    # the venv's shebang, .pth and where.py; the interpreter's sysconfig files,
    # unless it is Debian's python in /usr (a system prefix is never rewritten)
    assert ms[0].prefix_files or (layer == "interpreter" and config_prefix(None)), layer
    assert (ms[0].files, ms[0].unpacked_size) == (ms[1].files, ms[1].unpacked_size)


def test_pack_with_a_tiny_tmpdir_stages_and_runs(relocation_venv, pkgroot, tmp_path,
                                                  shm_chroot):
    """TMPDIR on a 4 MB tmpfs: packing reads the sources straight into the
    package (no copy of the environment there), and the package stages and
    runs on 2 ranks."""
    from helpers import PRIVATE, UNSHARE_MOUNT, mpi_env, mpirun
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    out = tmp_path / "pkgs"
    out.mkdir()
    os.symlink(os.path.join(pkgroot["root"], pkgroot["python"]), out / pkgroot["python"])
    pack = " ".join(CLI + ["pack", relocation_venv, "-n", "reloc", "-o", str(out), "-q"])
    r = run(UNSHARE_MOUNT + [PRIVATE + f"mount -t tmpfs -o size=4m tmpfs {small} && "
                             f"TMPDIR={small} {pack} && echo left: $(ls -A {small})"],
            timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "left:", r.stdout  # nothing left behind there
    env = mpi_env(str(out), shm_chroot, packages=f"{pkgroot['python']}:reloc.tar.zst")
    r = mpirun(2, ["-c", "import numpy, extra_mod, where; from mpi4py import MPI\n"
                         "c = MPI.COMM_WORLD\n"
                         "s = c.allreduce(float(numpy.arange(10).sum()))\n"
                         "ok = (s, extra_mod.VALUE, where.DATA.startswith(__import__('sys').prefix))\n"
                         "got = c.gather(ok)\n"
                         "if c.rank == 0: print('OK', got)"],  # one writer: no interleaved lines
               env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK [(90.0, 42, True), (90.0, 42, True)]", r.stdout



def test_pack_makes_no_file_in_tmpdir_for_each_file_of_the_environment(relocation_venv,
                                                                       tmp_path):
    """TMPDIR on a tmpfs with an inode for each directory and link of the
    venv and a few more, far fewer than its files: the staging skeleton
    holds directories and links only (every source file is read straight
    into the package, none gets a placeholder there), so the pack succeeds
    and leaves nothing behind; the package has every file."""
    from helpers import PRIVATE, UNSHARE_MOUNT
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    dirs = links = files = 0
    for dp, dns, fns in os.walk(relocation_venv):
        dns[:] = [d for d in dns if d != "__pycache__"]
        dirs += len(dns)
        for n in fns + dns:
            if os.path.islink(os.path.join(dp, n)):
                links += 1
            elif n in fns:
                files += 1
    inodes = dirs + links + 64  # the tmpfs's root, the staging directory, our own files
    assert files > 2 * inodes, (files, inodes)  # a placeholder per file cannot fit
    small = tmp_path / "small"
    small.mkdir()
    out = tmp_path / "pkgs"
    pack = " ".join(CLI + ["pack", relocation_venv, "-n", "reloc", "-o", str(out), "-q"])
    r = run(UNSHARE_MOUNT + [PRIVATE + f"mount -t tmpfs -o size=4m,nr_inodes={inodes} tmpfs "
                             f"{small} && TMPDIR={small} {pack} && echo left: $(ls -A {small})"],
            timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "left:", r.stdout
    m, _ = read_manifest(str(out / "reloc.tar.zst"))
    assert m.files > files, (m.files, files)  # every file, and the .pyc made for them


def test_save_with_a_tiny_tmpdir_saves_and_the_loaded_env_runs(relocation_venv, tmp_path):
    """save (the venv with its interpreter's standard library, over 100 MB
    unpacked) with TMPDIR on a 4 MB tmpfs: nothing is copied there; the
    saved environment loads and runs."""
    from helpers import PRIVATE, UNSHARE_MOUNT
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    cache = tmp_path / "cache"
    save = " ".join(CLI + ["save", "tiny", "--venv", relocation_venv, "-q"])
    r = run(UNSHARE_MOUNT + [PRIVATE + f"mount -t tmpfs -o size=4m tmpfs {small} && "
                             f"TMPDIR={small} PYTHON_MPI_BCAST_CACHE={cache} {save} && "
                             f"echo left: $(ls -A {small})"], timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "left:", r.stdout
    m, _ = read_manifest(str(cache / "tiny.tar.zst"))
    assert m.unpacked_size > 25 << 20, m.unpacked_size  # far more than the tmpfs holds
    env = dict(os.environ, PYTHON_MPI_BCAST_CACHE=str(cache))
    tree = tmp_path / "loaded"
    run(CLI + ["load", "tiny", "--to", str(tree)], env=env, timeout=300)
    r = run([str(tree / "bin" / "python3"), "-c",
             "import numpy, extra_mod, json; print(extra_mod.VALUE, numpy.arange(4).sum())"],
            timeout=120)
    assert r.stdout.split() == ["42", "6"], r.stdout


# --- progress and --level -------------------------------------------------------

def test_pack_says_how_far_it_is_on_a_non_terminal_and_nothing_with_quiet(tmp_path):
    """stderr is a pipe (a batch job, CI): one line when packing starts,
    one every few seconds (bytes, files, rate, time left), one at the end."""
    src = tmp_path / "d"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.txt").write_text("x" * 10000 * (i + 1))
    r = run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "p"], timeout=300)
    lines = r.stderr.strip().splitlines()
    assert len(lines) >= 2, r.stderr
    assert re.fullmatch(r"packing p: 0\.0 of about [\d.]+ MB, 0 of 20 files, [\d.]+ MB/s, "
                        r"about \? left", lines[0]), lines
    for ln in lines[1:-1]:
        assert re.fullmatch(r"packing p: [\d.]+ of about [\d.]+ MB, \d+ of 20 files, [\d.]+ "
                            r"MB/s, about (\d+ s|\?) left", ln), lines
    assert re.fullmatch(r"packing p: done, 2\.1 MB, 20 files in \d+ s \([\d.]+ MB/s\)",
                        lines[-1]), lines
    r = run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "p", "-q", "-f"],
            timeout=300)
    assert r.stderr == ""


def test_save_packs_at_the_level_it_is_given(tmp_path):
    """save --level: level 1 and level 12 of one environment (with its
    interpreter's standard library) give the same tree in packages of
    different sizes."""
    venv = make_venv(str(tmp_path / "v"), [])
    sizes = {}
    for level in (1, 12):
        cache = tmp_path / f"cache{level}"
        env = dict(os.environ, PYTHON_MPI_BCAST_CACHE=str(cache))
        run(CLI + ["save", "s", "--venv", venv, "-q", "--level", str(level)], env=env,
            timeout=900)
        sizes[level] = os.path.getsize(cache / "s.tar.zst")
        m, _ = read_manifest(str(cache / "s.tar.zst"))
        sizes[level, "files"] = m.files
    assert sizes[1, "files"] == sizes[12, "files"]
    assert sizes[12] < sizes[1] * 0.95, sizes
    r = run(CLI + ["save", "t", "--venv", venv, "--level", "0"], check=False)
    assert r.returncode == 2 and "zstd level" in r.stderr
    r = run(CLI + ["run", "--level", "23", "mpiexec", "python", "-c", "pass"], check=False)
    assert r.returncode == 2 and "zstd level" in r.stderr


_PYC_CASES = r"""
import importlib.util, os, py_compile, sys
site = sys.argv[1]
M = py_compile.PycInvalidationMode
def module(name, text, mode=M.TIMESTAMP):
    path = os.path.join(site, name + ".py")
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    py_compile.compile(path, doraise=True, invalidation_mode=mode)
    return path, importlib.util.cache_from_source(path)
module("fresh", "def f():\n    return 'fresh'\nclass C:\n    def m(self):\n        return 1\n")
module("hashed", "VALUE = 'hashed'\n", M.CHECKED_HASH)
# edited after pip compiled it: a new mtime, another size
path, _ = module("edited", "VALUE = 'old'\n")
with open(path, "w") as f:
    f.write("VALUE = 'edited, new'\n")
# edited keeping size and mtime under a hash-checked .pyc: the hash tells
path, _ = module("rehashed", "VALUE = 'old'\n", M.CHECKED_HASH)
with open(path, "w") as f:
    f.write("VALUE = 'new'\n")
os.utime(path, (1_600_000_000, 1_600_000_000))
# a .pyc of another Python (magic) and one that is not marshal data
_, pyc = module("foreign", "VALUE = 'foreign'\n")
with open(pyc, "r+b") as f:
    f.write(b"\x00\x00")
_, pyc = module("garbage", "VALUE = 'garbage'\n")
with open(pyc, "r+b") as f:
    f.seek(16)
    f.write(b"\xff" * 8)
# damaged .pyc with headers the import system accepts: marshal data that
# crashes CPython when loaded (a tuple holding a frozenset that holds the
# tuple), one that declares a tuple of 2**27 items (1 GB before a single
# item is read), and a FIFO where the .pyc would be
def damaged(name, body):
    _, pyc = module(name, f"VALUE = {name!r}\n")
    with open(pyc, "r+b") as f:
        f.seek(16)
        f.write(body)
        f.truncate()
damaged("crashing", bytes.fromhex("a8010000003c0100000072000000 00".replace(" ", "")))
damaged("huge", b"(" + (2 ** 27).to_bytes(4, "little"))
_, pyc = module("fifo", "VALUE = 'fifo'\n")
os.remove(pyc)
os.mkfifo(pyc)
# what the import system trusts, pack trusts: a .pyc whose header matches the
# source's mtime and size holds the code it was made from
path, pyc = module("trusted", "VALUE = 'from the pyc'\n")
with open(path, "w") as f:
    f.write("VALUE = 'the source!!'\n")
os.utime(path, (1_600_000_000, 1_600_000_000))
"""


def test_pack_takes_the_environments_own_pyc_only_where_the_import_system_would(tmp_path,
                                                                                 pkgroot):
    """Packing uses a venv's own .pyc (pip wrote one per module) instead of
    compiling again, only when the import system would use it: this
    Python's magic number, and the source's mtime and size (or its hash) in
    the header.  An edited source, a .pyc of another Python or one that is
    not marshal data: compiled from the source.  A damaged .pyc that crashes
    the interpreter gets a line naming it, one that declares gigabytes never
    makes pack take them, a FIFO in its place never blocks: each module is
    compiled from its source.  Every .pyc in the tree is unchecked-hash
    over the tree's source and names the file's path in the tree, as a
    fresh compile does."""
    import importlib.util
    import marshal
    venv = make_venv(str(tmp_path / "v"), [])
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = os.path.join(venv, "lib", ver, "site-packages")
    run([os.path.join(venv, "bin", "python"), "-c", _PYC_CASES, site], timeout=120)
    out = tmp_path / "out"
    out.mkdir()
    # the largest resident size of pack and every process under it
    r = run([sys.executable, "-c", "import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "sys.stderr.write(r.stderr)\n"
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"]
            + CLI + ["pack", venv, "-o", str(out), "-n", "e", "-q"], timeout=600)
    rc, maxrss_kb = map(int, r.stdout.split())
    assert rc == 0, r.stderr
    assert maxrss_kb < 600_000, maxrss_kb  # the 1 GB tuple was never allocated
    # the site directory in the tree: the interpreter's own (Debian's python in
    # /usr: local/lib/pythonX.Y/dist-packages)
    site_rel = read_manifest(str(out / "e.tar.zst"))[0].site_dir
    crash_pyc = importlib.util.cache_from_source(os.path.join(site, "crashing.py"))
    assert [ln for ln in r.stderr.splitlines() if "crashes" in ln] == [
        f"python-mpi-bcast: WARNING: {crash_pyc}: this byte code crashes {base_python()} when "
        f"loaded (a damaged file); packed {site_rel}/crashing.py compiled from its "
        f"source instead (remove that file: importing crashing from the environment crashes "
        f"too)"], r.stderr
    tree = tmp_path / "tree"
    run(CLI + ["unpack", os.path.join(pkgroot["root"], pkgroot["python"]), str(out / "e.tar.zst"),
               str(tree)], timeout=300)
    shutil.rmtree(venv)
    tsite = os.path.join(str(tree), site_rel)
    names = ("fresh", "hashed", "edited", "rehashed", "foreign", "garbage", "crashing", "huge",
             "fifo", "trusted")

    def filenames(code):
        yield code.co_filename
        for c in code.co_consts:
            if hasattr(c, "co_filename"):
                yield from filenames(c)

    for n in names:
        rel = os.path.join(site_rel, n + ".py")
        with open(os.path.join(tsite, n + ".py"), "rb") as f:
            src = f.read()
        with open(importlib.util.cache_from_source(os.path.join(tsite, n + ".py")), "rb") as f:
            pyc = f.read()
        assert pyc[:4] == importlib.util.MAGIC_NUMBER, n
        assert int.from_bytes(pyc[4:8], "little") == 0b01, n  # hash-based, unchecked
        assert pyc[8:16] == importlib.util.source_hash(src), n
        code = marshal.loads(pyc[16:])
        assert set(filenames(code)) == {rel}, (n, set(filenames(code)))
        if n != "trusted":
            assert code == compile(src, rel, "exec", dont_inherit=True), n
    py = os.path.join(str(tree), "bin", "python")
    r = run([py, "-c", "import fresh, hashed, edited, rehashed, foreign, garbage, crashing, "
             "huge, fifo, trusted\n"
             "print(fresh.f(), fresh.C().m(), hashed.VALUE, edited.VALUE, rehashed.VALUE, "
             "foreign.VALUE, garbage.VALUE, crashing.VALUE, huge.VALUE, fifo.VALUE, "
             "trusted.VALUE, sep='|')\n"
             "print(fresh.__file__, fresh.f.__code__.co_filename)"], timeout=60)
    first, second = r.stdout.splitlines()
    assert first.split("|") == ["fresh", "1", "hashed", "edited, new", "new", "foreign",
                                "garbage", "crashing", "huge", "fifo", "from the pyc"], r.stdout
    f, co = second.split()
    assert f == os.path.join(tsite, "fresh.py") and co == f, second


# -- extra disk: the package itself (issue 21) --------------------------------

@pytest.mark.parametrize("what", ["environment", "interpreter"])
def test_a_packs_peak_extra_disk_is_the_package(demo_venv, tmp_path, what):
    """The shards go straight into the package file, in order, each once
    (no temporary shard files), and an ELF file whose RPATH changes (the
    interpreter's libpython and extension modules) is patched in memory:
    the output directory's peak is the package and the shard index beside
    it, and the skeleton's empty scratch directory; 4 KiB blocks counted
    as allocated, so the allowance is those small files' blocks.  ($TMPDIR
    holds the staging skeleton, directories and links only: tested by
    test_pack_makes_no_file_in_tmpdir_for_each_file_of_the_environment.)
    The package's start is the manifest's reserved room: zeros after the
    manifest frame (package/format.py), which zstd and tar skip."""
    t, o = tmp_path / "tmp", tmp_path / "out"
    t.mkdir()
    o.mkdir()
    args = [demo_venv, "-n", "env"] if what == "environment" else ["--python", demo_venv]
    with disk_peaks([str(t), str(o)]) as peak:
        run(CLI + ["pack"] + args + ["-o", str(o), "-q"], env=dict(os.environ, TMPDIR=str(t)),
            timeout=900)
    (pkg,) = [str(p) for p in o.iterdir() if p.name.endswith(".tar.zst")]
    size = os.path.getsize(pkg)
    allowance = allocated(pkg) - size + allocated(pkg + ".shards") + 4096
    assert allowance < 16 << 10
    print(f"{what}: peak {peak[str(o)]} B in the output directory, {peak[str(t)]} B in "
          f"TMPDIR, package {size} B: {peak[str(o)] / size:.4f} / {peak[None] / size:.4f}")
    assert peak[str(o)] <= size + allowance, (peak, size, allowance)
    # the reserved room: the manifest frame, then zeros, inside the skippable frame
    import struct
    from python_mpi_bcast.package.format import frame_size
    with open(pkg, "rb") as f:
        _, length = struct.unpack("<II", f.read(8))
        body = f.read(length)
    n = frame_size(body)
    assert n is not None and n < length and body[n:] == bytes(length - n), (n, length)
    listed = run(["tar", "--zstd", "-tf", pkg], timeout=120).stdout.splitlines()
    assert len(listed) > read_manifest(pkg)[0].files
    if shutil.which("zstd"):
        r = run(["sh", "-c", f"zstd -dcq '{pkg}' | tar -t"], timeout=120)
        assert r.stdout.splitlines() == listed


def test_a_manifest_larger_than_its_room_moves_the_payload_and_the_package_is_whole(
        relocation_venv, tmp_path):
    """Prefix lines are found while the shards are written, after the room
    for the manifest was reserved: a manifest that outgrows its room (here a
    room of 64 bytes) moves the payload up and goes in without padding; the
    package verifies and unpacks to the tree a normal pack gives."""
    normal, tight = tmp_path / "normal", tmp_path / "tight"
    run(CLI + ["pack", relocation_venv, "-n", "e", "-o", str(normal), "-q"], timeout=900)
    run([sys.executable, "-c",
         "from python_mpi_bcast.package import archive\n"
         "archive.manifest_room = lambda *args: 64  # less than any manifest\n"
         "from python_mpi_bcast.packing.pack import pack\n"
         f"pack(venv={relocation_venv!r}, name='e', output_dir={str(tight)!r}, quiet=True)"],
        timeout=900)
    trees = []
    for out in (normal, tight):
        pkg = str(out / "e.tar.zst")
        assert "OK" in run(CLI + ["verify", pkg], timeout=300).stdout
        run(CLI + ["unpack", pkg, str(out / "tree")], timeout=300)
        trees.append(tree_digest(str(out / "tree"), skip=(".python-mpi-bcast-unpack.json",),
                                 own_path=True))
    assert trees[0] == trees[1]
    m, start = read_manifest(str(tight / "e.tar.zst"))
    assert m.prefix_files and start + m.payload_size == os.path.getsize(tight / "e.tar.zst")
    from python_mpi_bcast.package.format import frame_size
    with open(tight / "e.tar.zst", "rb") as f:
        body = f.read(start)[8:]
    assert frame_size(body) == len(body)  # no padding: exactly the frame


@pytest.mark.parametrize("window", [0, 1 << 20])
def test_shards_made_ahead_of_their_turn_past_the_memory_window_wait_and_stream(tmp_path,
                                                                               window):
    """Shards finished before their turn wait in memory up to a window
    (archive.WINDOW, all threads together); past it a worker waits until
    its shard is at the head and streams into the package (a shard larger
    than memory never goes to a temporary file).  With no window at all or
    one smaller than a shard (a 24 MB incompressible file among small
    ones), 4 threads write the package the default does: the same frames
    in the same places, the same tree."""
    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(300_000) + bytes(300_000))
    (src / "d2" / "huge.bin").write_bytes(os.urandom(24 << 20))
    args = ["--directory", str(src), "-n", "d", "--shard-size", "1M", "--threads", "4", "-q"]
    run(CLI + ["pack"] + args + ["-o", str(tmp_path / "default")], timeout=600)
    run([sys.executable, "-c",
         "import sys\n"
         "from python_mpi_bcast.package import archive\n"
         f"archive.WINDOW = {window}\n"
         "from python_mpi_bcast.cli import main\n"
         f"sys.exit(main({['pack'] + args + ['-o', str(tmp_path / 'small')]!r}))"],
        timeout=600)
    trees, shards = [], []
    for out in ("default", "small"):
        pkg = str(tmp_path / out / "d.tar.zst")
        assert "OK" in run(CLI + ["verify", pkg], timeout=300).stdout
        run(CLI + ["unpack", pkg, str(tmp_path / out / "tree")], timeout=300)
        trees.append(tree_digest(str(tmp_path / out / "tree"),
                                 skip=(".python-mpi-bcast-unpack.json",)))
        shards.append([(s.offset, s.csize, s.usize, s.nfiles) for s in read_manifest(pkg)[0].shards])
    assert len(shards[0]) > 8 and shards[0] == shards[1]  # (the skeleton's directory times
    assert trees[0] == trees[1]                           # are the pack's: no byte compare)
