"""Files split across shards (format version 3, ``part`` lines): packed
in pieces of about one shard, read back by every reader (unpack, the
launcher on several ranks of several nodes, verify's check, tar and zstd),
re-packed reusing pieces.  Hostile packages that misuse pieces:
tests/package/test_hostile.py ("split files")."""

from __future__ import annotations

import os
import random
import re
import shutil

import pytest

from helpers import CLI, LAUNCHER, MPIEXEC, mpi_env, mpirun, run, tree_digest
from python_mpi_bcast.package import format as pkgformat

# root without capabilities (test_hostile.py's NO_CAPS): file modes bind it
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]

RECORD = ".python-mpi-bcast-unpack.json"

MTIME = 1_650_000_000


def make_tree(src: str) -> None:
    """Small files around two files of several 64K shards: one of random
    bytes, read-only; one compressible, executable; each with its own mtime."""
    rng = random.Random(5)
    os.makedirs(os.path.join(src, "d", "e"))
    with open(os.path.join(src, "a.txt"), "w") as f:
        f.write("first\n")
    for i in range(6):
        with open(os.path.join(src, "d", f"s{i}.txt"), "w") as f:
            f.write(f"line {i}\n" * (300 * i + 1))
    with open(os.path.join(src, "d", "big.bin"), "wb") as f:
        f.write(rng.randbytes(1_000_000 + 123))
    with open(os.path.join(src, "d", "e", "tool"), "wb") as f:
        f.write(b"".join(b"%08d row of a table\n" % i for i in range(40_000)))
    with open(os.path.join(src, "z.txt"), "w") as f:
        f.write("last\n")
    os.symlink("d/big.bin", os.path.join(src, "link"))
    os.chmod(os.path.join(src, "d", "big.bin"), 0o444)
    os.chmod(os.path.join(src, "d", "e", "tool"), 0o755)
    for i, rel in enumerate(["a.txt", "d/big.bin", "d/e/tool", "z.txt"]):
        os.utime(os.path.join(src, rel), (MTIME + i, MTIME + i))


def times(root: str, skip=(RECORD, ".pmb-ready")) -> dict:
    """{path: mtime} of every regular file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            rel = os.path.relpath(os.path.join(d, n), root)
            if rel not in skip and not os.path.islink(os.path.join(d, n)):
                out[rel] = int(os.lstat(os.path.join(d, n)).st_mtime)
    return out


@pytest.fixture
def packed(tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    out = str(tmp_path / "pkgs")
    os.makedirs(out)
    run(CLI + ["pack", "--directory", src, "-o", out, "-n", "sp", "-q", "--shard-size", "64k"],
        timeout=120)
    return src, os.path.join(out, "sp.tar.zst")


def test_a_large_file_is_packed_in_pieces_that_every_reader_puts_together(packed, tmp_path,
                                                                         shm_chroot):
    src, pack = packed
    m, _ = pkgformat.read_manifest(pack)
    with open(pack, "rb") as f:
        f.read(8)
    assert {p.path for p in m.parts} == {"d/big.bin", "d/e/tool"}, m.parts
    big = [p for p in m.parts if p.path == "d/big.bin"]
    assert len(big) >= 10 and big[0].size == 1_000_123 and big[0].mode == 0o444, big
    assert all(p.offset % 512 == 0 for p in m.parts)
    want = tree_digest(src)
    want_t = times(src)
    # python-mpi-bcast unpack, with the threads there are and with one
    for threads in ("0", "1"):
        dest = str(tmp_path / f"dest{threads}")
        run(CLI + ["unpack", pack, dest], timeout=120,
            env=dict(os.environ, PYTHON_MPI_THREADS=threads))
        assert tree_digest(dest, skip=(RECORD,)) == want
        assert times(dest) == want_t
    # the launcher: 2 nodes of 2 ranks, each rank 2 threads: the pieces of one file
    # are written by several ranks of a node
    env = mpi_env(os.path.dirname(pack), shm_chroot, cliques=2, packages="sp.tar.zst",
                  PYTHON_MPI_THREADS=2, PYTHON_MPI_VERBOSE=3)
    r = mpirun(4, ["--stage-only"], env)
    assert r.returncode == 0, r.stderr
    trees = []
    for node in ("node-0", "node-1"):
        d = os.path.join(os.path.dirname(shm_chroot), node)
        trees += [os.path.join(d, e) for e in os.listdir(d) if e.startswith("env-")]
    assert len(trees) == 2, trees
    for t in trees:
        assert tree_digest(t, skip=(".pmb-ready",)) == want
        assert times(t) == want_t
    # both ranks of each node unpacked pieces of the package
    for node in (0, 1):
        mb = {ln.split(" (node")[0]: float(ln.split(" files, ")[1].split(" MB")[0])
              for ln in r.stderr.splitlines() if f"(node {node}): package 'sp.tar.zst' thread" in ln}
        assert len(mb) == 2 and min(mb.values()) > 0.1, r.stderr
    # tar and zstd read the same tree: the frames' concatenation is one tar
    for cmd in (["tar", "--zstd", "-xf", pack, "-C", "{d}"],
                ["sh", "-c", f"zstd -dcq '{pack}' | tar -x -C '{{d}}'"]):
        d = str(tmp_path / f"tar{len(cmd)}")
        os.makedirs(d)
        run([c.replace("{d}", d) for c in cmd], timeout=120)
        assert tree_digest(d) == want
        assert times(d) == want_t
    r = run(CLI + ["verify", pack], timeout=120)
    assert ": OK (" in r.stdout, r.stdout
    r = run(CLI + ["inspect", pack], timeout=60)
    assert f"split files:   2 (across {len(m.parts)} more shards; format version 3)" in r.stdout


def test_no_split_keeps_every_file_whole_in_a_version_2_package(tmp_path):
    """pack --no-split: no part lines, format version 2 (what launchers of
    format 2 read), the same tree."""
    src = str(tmp_path / "src")
    make_tree(src)
    out = str(tmp_path / "pkgs")
    os.makedirs(out)
    run(CLI + ["pack", "--directory", src, "-o", out, "-n", "whole", "-q", "--shard-size", "64k",
               "--no-split"], timeout=120)
    pack = os.path.join(out, "whole.tar.zst")
    m, start = pkgformat.read_manifest(pack)
    assert m.parts == []
    with open(pack, "rb") as f:
        body = f.read(start)[8:]
    assert pkgformat.decode_manifest_frame(body).startswith(b"python-mpi-bcast-package 2\n")
    dest = str(tmp_path / "dest")
    run(CLI + ["unpack", pack, dest], timeout=120)
    assert tree_digest(dest, skip=(RECORD,)) == tree_digest(src)


@pytest.mark.parametrize("mtime", [-315_619_200, 9_000_000_000], ids=["1960", "2255"])
def test_a_split_file_whose_time_the_tar_header_cannot_hold_unpacks(tmp_path, mtime):
    """A time before 1970 or after 2242 does not fit a tar header's field
    (tarfile writes 0 there and the time in a pax record, which unpackers
    of whole files ignore too): the part line says what the header says,
    so every reader accepts the package, as it does the file unsplit."""
    src = str(tmp_path / "src")
    os.makedirs(src)
    with open(os.path.join(src, "big.bin"), "wb") as f:
        f.write(random.Random(7).randbytes(600_000))
    os.utime(os.path.join(src, "big.bin"), (mtime, mtime))
    out = str(tmp_path / "pkgs")
    os.makedirs(out)
    for extra in ([], ["--no-split"]):
        name = "whole" if extra else "split"
        run(CLI + ["pack", "--directory", src, "-o", out, "-n", name, "-q", "--shard-size",
                   "64k"] + extra, timeout=120)
        pack = os.path.join(out, f"{name}.tar.zst")
        assert bool(pkgformat.read_manifest(pack)[0].parts) == (not extra)
        run(CLI + ["verify", pack], timeout=120)
        dest = str(tmp_path / f"dest-{name}")
        run(CLI + ["unpack", pack, dest], timeout=120)
        with open(os.path.join(dest, "big.bin"), "rb") as f, \
                open(os.path.join(src, "big.bin"), "rb") as g:
            assert f.read() == g.read()
    assert times(str(tmp_path / "dest-split")) == times(str(tmp_path / "dest-whole"))


def test_pieces_are_unpacked_by_a_user_bound_by_file_modes(packed, tmp_path):
    """Root without capabilities (file modes bind it): the read-only split
    file gets its mode only once every piece is in."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the readers without capabilities")
    src, pack = packed
    assert "d/big.bin" in {p.path for p in pkgformat.read_manifest(pack)[0].parts}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON_MPI_") and k not in ("PYTHONHOME", "PYTHONPATH")}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), PYTHON_MPI_THREADS="2")
    dest = str(tmp_path / "dest")
    r = run(NO_CAPS + CLI + ["unpack", pack, dest], env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert tree_digest(dest, skip=(RECORD,)) == tree_digest(src)
    env.update(PYTHON_MPI_PKGROOT=os.path.dirname(pack), PYTHON_MPI_PACKAGES="sp.tar.zst",
               PYTHON_MPI_CHROOT=str(tmp_path / "nodes" / "node-%n"), MPIR_CVAR_NUM_CLIQUES="1")
    r = run(NO_CAPS + [MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=120,
            check=False)
    assert r.returncode == 0, r.stderr
    (tree,) = [os.path.join(tmp_path, "nodes", "node-0", e)
               for e in os.listdir(tmp_path / "nodes" / "node-0") if e.startswith("env-")]
    assert tree_digest(tree, skip=(".pmb-ready",)) == tree_digest(src)


def test_a_re_pack_reuses_an_unchanged_split_files_pieces_and_packs_a_changed_ones_again(
        tmp_path):
    """Re-pack (-f over the earlier package) keyed by each piece's inputs:
    the whole file's identity and the piece's range.  A change elsewhere:
    every piece of the split file is reused byte for byte; the file edited
    in place (same size, mtime put back): its pieces are packed again and
    the package unpacks to the edited tree."""
    src = str(tmp_path / "src")
    make_tree(src)
    out = str(tmp_path / "pkgs")
    args = CLI + ["pack", "--directory", src, "-o", out, "-n", "sp", "--shard-size", "64k", "-f"]
    run(args, timeout=120)
    pack = os.path.join(out, "sp.tar.zst")

    def pieces(m):  # the SHA-256 of each shard holding bytes of d/big.bin
        ps = [p.shard for p in m.parts if p.path == "d/big.bin"]
        return [m.shards[s].sha256 for s in [ps[0] - 1] + ps]

    before, _ = pkgformat.read_manifest(pack)
    with open(os.path.join(src, "a.txt"), "w") as f:
        f.write("changed\n")
    r = run(args, timeout=120)
    assert "reused" in r.stderr, r.stderr
    again, _ = pkgformat.read_manifest(pack)
    assert pieces(again) == pieces(before)
    big = os.path.join(src, "d", "big.bin")
    st = os.stat(big)
    os.chmod(big, 0o644)
    with open(big, "r+b") as f:
        f.seek(500_000)
        b = f.read(1)
        f.seek(500_000)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(big, 0o444)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(args, timeout=120)
    n, total = (int(x) for x in re.search(r"reused (\d+) of (\d+) shards", r.stderr).groups())
    edited, _ = pkgformat.read_manifest(pack)
    assert n == total - len(pieces(edited)), r.stderr  # all the rest reused
    # (packed again, a piece whose bytes did not change is the same frame)
    changed = [a != b for a, b in zip(pieces(edited), pieces(before))]
    assert changed.count(True) == 1 and changed.index(True) == 500_000 // 65536, changed
    dest = str(tmp_path / "dest")
    run(CLI + ["unpack", pack, dest], timeout=120)
    assert tree_digest(dest, skip=(RECORD,)) == tree_digest(src)


def test_a_venv_splits_only_files_above_the_threshold_and_unpacks_as_a_whole_pack(
        demo_venv, tmp_path):
    """numpy's venv at 1 MiB shards: the files split are those over 4 shard
    sizes (numpy's large libraries), packed as they are; the package
    unpacks to the tree a --no-split pack of the venv unpacks to."""
    out = str(tmp_path / "pkgs")
    trees = []
    for name, extra in (("split", []), ("whole", ["--no-split"])):
        run(CLI + ["pack", demo_venv, "-o", out, "-n", name, "-q", "--shard-size", "1M"] + extra,
            timeout=600)
        dest = str(tmp_path / name)
        run(CLI + ["unpack", os.path.join(out, f"{name}.tar.zst"), dest], timeout=300)
        trees.append(tree_digest(dest, skip=(RECORD,), own_path=True, pyc_code=True))
    m, _ = pkgformat.read_manifest(os.path.join(out, "split.tar.zst"))
    split = {p.path: p.size for p in m.parts}
    assert split and all(size > 4 << 20 for size in split.values()), split
    assert any("openblas" in p for p in split), split
    # the tree's site directory is the interpreter's (Debian's /usr python:
    # local/lib/pythonX.Y/dist-packages), the venv's is lib/pythonX.Y/site-packages
    (venv_site,) = [os.path.join("lib", d, "site-packages")
                    for d in os.listdir(os.path.join(demo_venv, "lib")) if d.startswith("python")]
    for rel in split:
        src = (venv_site + rel[len(m.site_dir):]
               if m.site_dir and rel.startswith(m.site_dir + "/") else rel)
        with open(os.path.join(demo_venv, src), "rb") as a, \
                open(os.path.join(tmp_path, "split", rel), "rb") as b:
            assert a.read() == b.read(), rel
    assert trees[0] == trees[1]
    whole, _ = pkgformat.read_manifest(os.path.join(out, "whole.tar.zst"))
    assert whole.parts == [] and (whole.files, whole.unpacked_size) == (m.files, m.unpacked_size)


def test_an_old_prefix_across_a_piece_boundary_is_found(tmp_path):
    """A file over BIG_FILE is scanned for the old prefixes piece by piece
    (packing/stream.py Writer._chunks): one that straddles two pieces is
    still found, so the file is reported as keeping it."""
    import types
    from python_mpi_bcast.packing import stream
    from python_mpi_bcast.packing.relocatable import BIG_FILE
    old = b"/old/prefix/of/the/venv"
    data = bytearray(random.Random(3).randbytes(3 * 65536))
    data[65526:65526 + len(old)] = old  # 10 bytes in the first piece, the rest in the second
    path = tmp_path / "lib.so"
    path.write_bytes(bytes(data))
    fake = types.SimpleNamespace(rl=types.SimpleNamespace(scrub_b=[old]))
    for pieces in ([(0, len(data))], [(0, 65536), (65536, 65536), (131072, 65536)]):
        kept: list = []
        got = b""
        for start, n in pieces:
            got += b"".join(stream.Writer._chunks(fake, str(path), "lib.so", n, kept, start,
                                                  BIG_FILE + 1))
        assert got == bytes(data)
        assert kept == ["lib.so"], pieces
