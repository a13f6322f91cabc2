"""Re-pack only what changed (package/reuse.py): after a small change to an
environment, the next pack copies the shards whose files did not change
from the previous package, byte for byte, and packs the rest; what it makes
stages to exactly the tree a full pack makes; a file changed in place
(even with its mtime put back) is never taken from the old package; a shard
index that is damaged or belongs to another package means packing again,
never a wrong package.  Real venvs (numpy and mpi4py from PyPI), real
wheels installed with pip, real MPI jobs."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid

import pytest

from helpers import (CLI, copy_numpy, make_venv, make_wheel, mpi_env, mpirun, run,
                     tree_digest)
from python_mpi_bcast.package.format import DEFAULT_LEVEL, read_manifest

STAGED = {"skip": (".pmb-ready", ".python-mpi-bcast-unpack.json"), "own_path": True,
          "pyc_code": True}  # a .pyc by its code: the env's own .pyc may give it
SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
REUSED = re.compile(r"reused (\d+) of (\d+) shards")


def science(where, demo_venv) -> str:
    """A venv with numpy and mpi4py (real wheels) and a module of ours."""
    venv = make_venv(str(where), [])
    copy_numpy(demo_venv, venv)
    with open(os.path.join(venv, SITE, "pmbmod.py"), "w") as f:
        f.write("VALUE = 1111\n")
    with open(os.path.join(venv, SITE, "pmbdata.txt"), "w") as f:
        f.write("old data\n")
    return venv


def pack(venv, out, *extra, name="env", debug=False) -> tuple[str, str]:
    """(package path, stderr) of ``pack VENV -o OUT -n NAME EXTRA``."""
    os.makedirs(out, exist_ok=True)
    r = run(CLI + (["--debug"] if debug else []) + ["pack", str(venv), "-o", str(out), "-n",
                                                   name, *extra], timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    return os.path.join(str(out), f"{name}.tar.zst"), r.stderr


def frames(path) -> list[bytes]:
    m, start = read_manifest(path)
    with open(path, "rb") as f:
        data = f.read()
    return [data[start + s.offset:start + s.offset + s.csize] for s in m.shards[:-1]]


def reused(stderr) -> tuple[int, int]:
    got = REUSED.search(stderr)
    assert got, stderr
    return int(got.group(1)), int(got.group(2))


def unpacked_digest(pkg, dest) -> dict:
    """The digest of the tree ``python-mpi-bcast unpack`` makes of ``pkg``
    in ``dest``."""
    run(CLI + ["unpack", str(pkg), str(dest)], timeout=300)
    return tree_digest(str(dest), **STAGED)


def staged_tree(pkgroot, python_pkg, pkg, tmp_path, code=None) -> tuple[dict, str]:
    """Stage the interpreter and ``pkg`` with ``python-mpi`` on 2 ranks (with
    ``code`` run on them, else --stage-only); the staged tree's digest and
    what the job printed."""
    root = tmp_path / f"root-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    os.symlink(os.path.join(pkgroot["root"], python_pkg), root / python_pkg)
    os.symlink(os.path.abspath(pkg), root / "env.tar.zst")
    base = f"/dev/shm/pmb-test-{uuid.uuid4().hex[:10]}"
    try:
        env = mpi_env(str(root), base + "/node-%n", packages=f"{python_pkg}:env.tar.zst")
        r = mpirun(2, ["-c", code] if code else ["--stage-only"], env, timeout=300)
        assert r.returncode == 0, r.stderr
        node = os.path.join(base, "node-0")
        (tree,) = [os.path.join(node, e) for e in os.listdir(node) if e.startswith("env-")]
        return tree_digest(tree, **STAGED), r.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_after_pip_install_unchanged_shards_are_reused_byte_for_byte_and_stage_as_a_full_pack(
        tmp_path, pkgroot, demo_venv):
    venv = science(tmp_path / "science", demo_venv)
    first, err = pack(venv, tmp_path / "a")
    assert os.path.isfile(first + ".shards") and "reused" not in err
    whl = make_wheel(str(tmp_path / "wheels"))
    run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--no-index",
         "--disable-pip-version-check", whl], timeout=300)
    again, err = pack(venv, tmp_path / "b", "--reuse", first)
    n, total = reused(err)
    full, _ = pack(venv, tmp_path / "c")
    # most shards came from the first package, each byte for byte; the new
    # package's own index lets the next pack reuse them again
    old, new = frames(first), frames(again)
    assert total == len(new) >= 5 and total - 3 <= n < total, err
    assert sum(1 for f in new if f in old) == n
    assert os.path.isfile(again + ".shards")
    # what it stages is what a full pack stages, and it runs on 2 ranks
    code = ("import numpy, pmbdemo, pmbmod; from mpi4py import MPI\n"
            "c = MPI.COMM_WORLD\n"
            "got = c.gather((pmbdemo.VALUE, pmbmod.VALUE, float(numpy.arange(4).sum())))\n"
            "if c.rank == 0: print('OK', got)")
    t_again, out = staged_tree(pkgroot, pkgroot["python"], again, tmp_path, code)
    assert out.strip() == "OK [(42, 1111, 6.0), (42, 1111, 6.0)]", out
    t_full, _ = staged_tree(pkgroot, pkgroot["python"], full, tmp_path)
    assert t_again == t_full
    assert any(k.endswith("pmbdemo.py") for k in t_again) and len(t_again) > 500
    assert read_manifest(again)[0].prefix_files == read_manifest(full)[0].prefix_files


def test_a_file_edited_in_place_with_its_mtime_put_back_is_never_reused(tmp_path, pkgroot,
                                                                       demo_venv):
    """Same size, same mtime, new bytes (a module and a data file): the
    shard holding them is packed again (the inode's ctime changed), so the
    ranks import the new module, not the old .pyc, and read the new data."""
    venv = science(tmp_path / "science", demo_venv)
    first, _ = pack(venv, tmp_path / "a")
    for fn, text in (("pmbmod.py", "VALUE = 2222\n"), ("pmbdata.txt", "new data\n")):
        path = os.path.join(venv, SITE, fn)
        st = os.stat(path)
        with open(path, "r+") as f:
            assert len(f.read()) == len(text)
            f.seek(0)
            f.write(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    again, err = pack(venv, tmp_path / "b", "--reuse", first)
    n, total = reused(err)
    assert 0 < n < total, err  # the rest is still reused
    code = ("import os, pmbmod; from mpi4py import MPI\n"  # the data file beside the module
            "data = open(os.path.join(os.path.dirname(pmbmod.__file__), 'pmbdata.txt')).read()"
            ".strip()\n"
            "got = MPI.COMM_WORLD.gather((pmbmod.VALUE, data))\n"
            "if MPI.COMM_WORLD.rank == 0: print('OK', got)")
    _, out = staged_tree(pkgroot, pkgroot["python"], again, tmp_path, code)
    assert out.strip() == "OK [(2222, 'new data'), (2222, 'new data')]", out


@pytest.fixture(scope="module")
def packed_twice(tmp_path_factory, demo_venv):
    """A venv, its package with a shard index, and the tree a full pack of
    it unpacks to; another package (another level) for a foreign index."""
    tmp = tmp_path_factory.mktemp("packed-twice")
    venv = science(tmp / "science", demo_venv)
    first, _ = pack(venv, tmp / "a")
    other, _ = pack(venv, tmp / "o", "--level", str(1 if DEFAULT_LEVEL != 1 else 2))
    dest = tmp / "full-tree"
    run(CLI + ["unpack", first, str(dest)], timeout=300)
    return {"venv": venv, "first": first, "other": other,
            "tree": tree_digest(str(dest), **STAGED)}


def _damage_index(path, what, other):
    side = path + ".shards"
    if what == "garbage":
        with open(side, "wb") as f:
            f.write(os.urandom(300))
    elif what == "cut short":
        data = open(side, "rb").read()
        with open(side, "wb") as f:
            f.write(data[:len(data) // 2])
    elif what == "edited":  # a shard's byte count changed, its checksum not
        doc = json.load(open(side))
        doc["body"]["shards"][0]["fbytes"] += 1
        json.dump(doc, open(side, "w"))
    elif what == "foreign":  # the index of another package of the same venv
        shutil.copy(other + ".shards", side)
    elif what == "frame":  # a byte of one frame of the package changed
        m, start = read_manifest(path)
        s = m.shards[1]
        with open(path, "r+b") as f:
            f.seek(start + s.offset + s.csize // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xff]))


@pytest.mark.parametrize("what", ["garbage", "cut short", "edited", "foreign", "frame"])
def test_a_damaged_or_foreign_shard_index_means_packing_again_never_a_wrong_package(
        packed_twice, tmp_path, what):
    old = tmp_path / "old"
    old.mkdir()
    prev = str(old / "env.tar.zst")
    shutil.copy(packed_twice["first"], prev)
    shutil.copy(packed_twice["first"] + ".shards", prev + ".shards")
    _damage_index(prev, what, packed_twice["other"])
    again, err = pack(packed_twice["venv"], tmp_path / "b", "--reuse", prev)
    n, total = reused(err)
    if what == "frame":  # that frame alone is packed again
        assert n == total - 1 and "not reusing shard 1 of" in err, err
    else:
        assert n == 0 and f"not reusing {prev}" in err, err
    dest = tmp_path / "tree"
    run(CLI + ["unpack", again, str(dest)], timeout=300)
    assert tree_digest(str(dest), **STAGED) == packed_twice["tree"]
    run(CLI + ["verify", again], timeout=300)


def test_a_package_written_to_in_place_has_its_frames_checked_even_with_its_mtime_put_back(
        packed_twice, tmp_path):
    """Frames of a package untouched since its shard index was written are
    copied unread (its inode's ctime, size and mtime are in the index); one
    written to since, even with its mtime put back, is read and hashed, and
    its changed frame packed again."""
    prev, err = pack(packed_twice["venv"], tmp_path / "a")
    again, err = pack(packed_twice["venv"], tmp_path / "b", "--reuse", prev, debug=True)
    assert reused(err)[0] == reused(err)[1] and "frames are copied unread" in err, err
    assert frames(again) == frames(prev)
    st = os.stat(prev)
    _damage_index(prev, "frame", None)
    os.utime(prev, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(prev).st_mtime_ns == st.st_mtime_ns and os.stat(prev).st_size == st.st_size
    again, err = pack(packed_twice["venv"], tmp_path / "c", "--reuse", prev, debug=True)
    n, total = reused(err)
    assert "frames are read and checked" in err, err
    assert n == total - 1 and "not reusing shard 1 of" in err, err
    dest = tmp_path / "tree"
    run(CLI + ["unpack", again, str(dest)], timeout=300)
    assert tree_digest(str(dest), **STAGED) == packed_twice["tree"]


def test_pack_reuse_refuses_what_is_not_a_package_in_one_line(packed_twice, tmp_path):
    for bad in (str(tmp_path / "missing.tar.zst"), packed_twice["first"] + ".shards"):
        r = run(CLI + ["pack", packed_twice["venv"], "-o", str(tmp_path / "b"), "-n", "x",
                       "--reuse", bad], timeout=120, check=False)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert bad in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "b" / "x.tar.zst")


def _user_env(tmp_path, venv, chroot) -> dict:
    from helpers import BIN
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_MPI_", "VIRTUAL_ENV", "CONDA_", "SLURM_"))}
    env.update(VIRTUAL_ENV=venv, PATH=f"{venv}/bin:{BIN}:{env['PATH']}",
               PYTHON_MPI_BCAST_CACHE=str(tmp_path / "cache"), PYTHON_MPI_CHROOT=chroot,
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _cache_files(tmp_path) -> list[str]:
    return sorted(f for f in os.listdir(tmp_path / "cache") if not f.startswith("."))


def test_run_after_a_small_pip_install_reuses_most_shards_and_prune_takes_the_index_along(
        tmp_path, demo_venv, shm_chroot):
    venv = science(tmp_path / "science", demo_venv)
    env = _user_env(tmp_path, venv, shm_chroot)
    line = ["mpiexec", "-n", "2", "python", "-c",
            "import sys, pmbmod; from mpi4py import MPI\n"
            "v = MPI.COMM_WORLD.gather(getattr(sys.modules.get('pmbdemo'), 'VALUE', None))\n"
            "if MPI.COMM_WORLD.rank == 0: print('values', v)"]
    r = run(CLI + ["run", *line], env=env, timeout=600, check=False)
    assert r.returncode == 0 and "values [None, None]" in r.stdout, r.stderr
    assert "reus" not in r.stderr  # nothing to reuse the first time
    (first, side) = _cache_files(tmp_path)
    assert side == first + ".shards"
    whl = make_wheel(str(tmp_path / "wheels"))
    run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", whl], env=env,
        timeout=300)
    line[-1] = "import pmbdemo\n" + line[-1]
    r = run(CLI + ["run", "--keep", "1", *line], env=env, timeout=600, check=False)
    assert r.returncode == 0 and "values [42, 42]" in r.stdout, r.stderr
    assert f"reusing what did not change from {first}" in r.stderr
    n, total = reused(r.stderr)
    assert total - 3 <= n < total, r.stderr
    assert len(REUSED.findall(r.stderr)) == 1, r.stderr  # said once
    # --keep 1: the first package went, and its index with it
    assert f"removed old package {tmp_path / 'cache' / first}" in r.stderr
    (now, now_side) = _cache_files(tmp_path)
    assert now != first and now_side == now + ".shards"


def test_save_again_reuses_the_saved_package_and_rm_takes_its_index_along(tmp_path,
                                                                         demo_venv):
    venv = science(tmp_path / "science", demo_venv)
    env = _user_env(tmp_path, venv, "/dev/shm/unused")
    cache = tmp_path / "cache"
    r = run(CLI + ["save", "sci", "--venv", venv, "-q"], env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(cache / "sci.tar.zst.shards")
    with open(os.path.join(venv, SITE, "pmbextra.py"), "w") as f:
        f.write("X = 1\n")
    r = run(CLI + ["save", "sci", "--venv", venv, "-f"], env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    n, total = reused(r.stderr)
    assert total - 3 <= n < total, r.stderr
    r = run(CLI + ["rm", "sci"], env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert not [f for f in os.listdir(cache) if f.startswith("sci")], os.listdir(cache)


def test_pack_force_over_its_earlier_package_reuses_its_unchanged_shards(tmp_path):
    """``pack -f`` again after a change, as a user repeats the command they
    packed with: the package it replaces is the one reused; what it writes
    unpacks to the tree a full pack of the changed env makes."""
    venv = make_venv(str(tmp_path / "v"), [])
    for i in range(40):  # enough files for several shards at a small shard size
        with open(os.path.join(venv, SITE, f"pmbm{i}.py"), "w") as f:
            f.write(f"V = {i}\n" + "# padding\n" * 2000)
    first, err = pack(venv, tmp_path / "out", "--shard-size", "1M")
    assert "reused" not in err
    with open(os.path.join(venv, SITE, "pmbextra.py"), "w") as f:
        f.write("X = 1\n")
    again, err = pack(venv, tmp_path / "out", "--shard-size", "1M", "-f")
    n, total = reused(err)
    assert 0 < n < total and again == first, err
    full, _ = pack(venv, tmp_path / "full", "--shard-size", "1M")
    assert unpacked_digest(again, tmp_path / "tree0") == unpacked_digest(full, tmp_path / "tree1")


def test_a_conda_env_repacked_from_its_index_keeps_every_prefix_file(conda_env, tmp_path):
    """A conda env's files that embed its prefix (text, and binaries with
    padded placeholders) are listed in the manifest for the unpacker; a
    re-pack that copies every shard takes that list from the index, and
    unpacks to the same tree (the env is left as it is: a shared fixture)."""
    first, _ = pack(conda_env, tmp_path / "a")
    again, err = pack(conda_env, tmp_path / "b", "--reuse", first)
    n, total = reused(err)
    assert n == total and frames(again) == frames(first), err
    m_first, m_again = read_manifest(first)[0], read_manifest(again)[0]
    assert {p.mode for p in m_first.prefix_files} == {"text", "binary"}
    assert m_again.prefix_files == m_first.prefix_files
    assert unpacked_digest(first, tmp_path / "tree0") == unpacked_digest(again, tmp_path / "tree1")


def test_a_users_file_named_like_a_shard_index_is_never_replaced_or_removed(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.txt").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    notes = out / "z.tar.zst.shards"
    notes.write_text("my notes\n")
    for extra in ([], ["-f"], ["-f", "--reuse", str(out / "z.tar.zst")]):
        r = run(CLI + ["pack", "--directory", str(src), "-o", str(out), "-n", "z", *extra],
                timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        assert "z.tar.zst.shards: not written (a file of that name is there" in r.stderr
        assert notes.read_text() == "my notes\n"
    assert "not reusing" in r.stderr and "reused 0 of 1 shards" in r.stderr
    run(CLI + ["verify", str(out / "z.tar.zst")], timeout=120)


def test_a_re_pack_never_keeps_code_from_a_pyc_the_environment_no_longer_has(tmp_path, pkgroot):
    """pack takes a module's code from the environment's own .pyc when the
    import system would use it, even one older than an edit that kept the
    source's size and mtime (what the environment itself runs).  Once that
    .pyc is gone the environment runs the source, and so does a re-pack
    (pack -f): the shard is packed again, never copied with the old code."""
    venv = make_venv(str(tmp_path / "v"), [])
    src = os.path.join(venv, SITE, "pmbstale.py")
    with open(src, "w") as f:
        f.write("VALUE = 'aaa'\n")
    run([os.path.join(venv, "bin", "python"), "-c",
         "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)", src],
        timeout=60)
    st = os.stat(src)
    with open(src, "w") as f:
        f.write("VALUE = 'bbb'\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    code = "import pmbstale; print(pmbstale.VALUE)"
    assert run([os.path.join(venv, "bin", "python"), "-c", code], timeout=60).stdout == "aaa\n"
    first, err = pack(venv, tmp_path / "out")
    assert "reused" not in err
    import importlib.util
    os.remove(importlib.util.cache_from_source(src))
    assert run([os.path.join(venv, "bin", "python"), "-B", "-c", code],
               timeout=60).stdout == "bbb\n"
    again, err = pack(venv, tmp_path / "out", "-f")
    n, total = reused(err)
    assert again == first and n < total, err
    dest = tmp_path / "tree"
    run(CLI + ["unpack", os.path.join(pkgroot["root"], pkgroot["python"]), again, str(dest)],
        timeout=300)
    assert run([str(dest / "bin" / "python3"), "-c", code], timeout=60).stdout == "bbb\n"


def test_a_venv_reached_through_a_symlink_is_reused_whatever_the_hash_seed(tmp_path):
    """A venv named by a path through a symlink (a project directory linked
    from $HOME): its site directory has two names, and the order they were
    listed in came from a set, so it changed with Python's string hash seed
    from one pack to the next and so did every shard's key: a re-pack
    reused nothing about every other time.  Packs made under different
    seeds now reuse every shard."""
    real = tmp_path / "real"
    real.mkdir()
    venv = make_venv(str(real / "v"), [])
    os.symlink(str(real), str(tmp_path / "link"))
    linked = str(tmp_path / "link" / "v")
    for seed in ("0", "1", "2", "3", "4", "5"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = run(CLI + ["pack", linked, "-o", str(tmp_path / "out"), "-n", "env", "-f"],
                env=env, timeout=600)
        if seed != "0":
            n, total = reused(r.stderr)
            assert n == total, (seed, r.stderr)
    assert os.path.isdir(venv)
