"""A package's identity covers every byte it holds.  A staged tree is named
after its layers' manifests (content hash, kind, prefix lines), so the
readers hold every frame to its shard line's SHA-256 and every manifest's
content_hash to its shard lines: a crafted package that keeps a manifest
byte for byte but changes a frame is refused on every node and never takes
the original's tree name, and the original, staged next on that node, runs
its own bytes.  The launcher's SHA-256 (portable and SHA-NI) is held to
hashlib.  Real MPI jobs on simulated nodes, real packages."""

from __future__ import annotations

import hashlib
import io
import os
import platform
import random
import shutil
import struct
import tarfile
import uuid

import pytest
import zstandard

from helpers import CLI, LAUNCHER, launcher_errors, mpi_env, mpirun, run
from python_mpi_bcast.package import format as pkgformat

PLACEHOLDER = "/PLACEHOLDER-" + "y" * 120  # room for a staged tree path (binary mode)


# -- the launcher's SHA-256 ---------------------------------------------------

def _has_sha_ni() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    with open("/proc/cpuinfo") as f:
        return " sha_ni" in f.read()


@pytest.mark.parametrize("impl", ["portable", "sha-ni", "auto"])
def test_the_launchers_sha256_matches_hashlib_on_edge_sizes_fed_in_any_pieces(tmp_path, impl):
    if impl == "sha-ni" and not _has_sha_ni():
        pytest.skip("this CPU has no SHA extensions")
    rng = random.Random(5)
    sizes = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 65537,
             3 << 20] + [rng.randrange(1, 20000) for _ in range(20)]
    files, want = [], []
    for i, n in enumerate(sizes):
        data = bytes(rng.getrandbits(8) for _ in range(min(n, 4096))) * (n // 4096 + 1)
        data = data[:n]
        p = tmp_path / f"f{i}"
        p.write_bytes(data)
        files.append(str(p))
        want.append(hashlib.sha256(data).hexdigest())
    for piece in ("0", "1", "7", "64", "200", "100000"):  # 0: all in one update
        r = run([LAUNCHER, "--pmb-sha256", impl, piece] + files, timeout=120)
        got = r.stdout.split("\n")[:-1]
        assert len(got) == len(files), r.stdout
        used = {ln.split()[0] for ln in got}
        # auto takes the SHA extensions whenever the CPU has them
        assert used == ({"sha-ni" if _has_sha_ni() else "portable"} if impl == "auto" else {impl})
        assert [ln.split()[1] for ln in got] == want, (impl, piece)


# -- crafting -------------------------------------------------------------------

def zframe(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def tar_file(name: str, data: bytes) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    ti.mtime = 1_700_000_000
    return ti.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * ((-len(data)) % 512)


def package(path, raws: list[bytes], frames: list[bytes] | None = None, prefix=(),
            manifest_from: list[bytes] | None = None, **fields) -> bytes:
    """Write a directory-kind package of the tar streams ``raws``, its
    manifest made from ``manifest_from`` (default: ``raws``'s own frames) but
    ``frames`` (default: those) as its payload.  Returns the manifest frame."""
    made = [zframe(r) for r in raws]
    frames = frames or made
    listed = [zframe(r) for r in manifest_from] if manifest_from else made
    tail = zframe(b"\0" * 1024)
    m = pkgformat.Manifest(name=fields.pop("name", "evil"), kind="directory", **fields)
    off = 0
    for raw, f in zip(raws + [b"\0" * 1024], listed + [tail]):
        m.shards.append(pkgformat.Shard(off, len(f), len(raw), _files(raw)[0],
                                        hashlib.sha256(f).hexdigest()))
        off += len(f)
    m.payload_size = off
    m.files = sum(_files(r)[0] for r in raws)
    m.unpacked_size = sum(_files(r)[1] for r in raws)
    m.content_hash = pkgformat.content_hash([s.sha256 for s in m.shards])
    m.prefix_files = [pkgformat.PrefixFile(*p) for p in prefix]
    head = pkgformat.encode_manifest_frame(m)
    with open(path, "wb") as f:
        f.write(head + b"".join(frames) + tail)
    return head


def _files(raw: bytes) -> tuple[int, int]:
    """(files, bytes) of the regular files in a tar stream of ours."""
    members = [ti for ti in tarfile.open(fileobj=io.BytesIO(raw)) if ti.isreg()]
    return len(members), sum(ti.size for ti in members)


def twin_frames(name: str) -> tuple[bytes, bytes, bytes, bytes]:
    """Two tar streams of one file ``name`` with other bytes whose frames
    have the same size (incompressible data of one length): (raw, frame)
    of the original and of the crafted twin."""
    rng = random.Random(11)
    orig = tar_file(name, b"original " + bytes(rng.getrandbits(8) for _ in range(3000)))
    f0 = zframe(orig)
    for _ in range(500):
        twin = tar_file(name, b"crafted! " + bytes(rng.getrandbits(8) for _ in range(3000)))
        f1 = zframe(twin)
        if len(f1) == len(f0):
            return orig, f0, twin, f1
    raise AssertionError("no twin frame of the same size")


@pytest.fixture
def place(pkgroot):
    """A package root holding the interpreter package, and node directories
    on 2 simulated nodes under /dev/shm."""
    base = f"/dev/shm/pmb-ident-{uuid.uuid4().hex[:10]}"
    os.makedirs(base + "/pkgs")
    shutil.copy(os.path.join(pkgroot["root"], pkgroot["python"]), base + "/pkgs")
    yield {"base": base, "pkgs": base + "/pkgs", "python": pkgroot["python"],
           "chroot": base + "/nodes/node-%n"}
    shutil.rmtree(base, ignore_errors=True)


def trees(place) -> dict[str, list[str]]:
    """node -> the names of the staged trees (env-*) in its directory."""
    nodes = os.path.join(place["base"], "nodes")
    out = {}
    for node in sorted(os.listdir(nodes)) if os.path.isdir(nodes) else []:
        out[node] = sorted(e for e in os.listdir(os.path.join(nodes, node)) if e.startswith("env-"))
    return out


READ = ("import os, sys\n"  # each rank: the first bytes of the staged data file
        "os.write(1, b'READ ' + open(os.path.join(sys.prefix, 'data.bin'), 'rb').read()[:8] + b'\\n')")


PREFIX = "import sys; print(sys.prefix)"


def job(place, pkg, ranks=2, nodes=2, code=READ):
    env = mpi_env(place["pkgs"], place["chroot"], cliques=nodes,
                  packages=f"{place['python']}:{pkg}")
    return mpirun(ranks, ["-c", code] if code else ["--stage-only"], env, timeout=180)


# -- the promises ----------------------------------------------------------------

def test_a_frame_replaced_under_an_unchanged_manifest_is_refused_and_the_original_runs_its_own_bytes(
        place):
    orig, f0, twin, f1 = twin_frames("data.bin")
    pkg = os.path.join(place["pkgs"], "env.tar.zst")
    head_orig = package(pkg + ".orig", [orig])
    head_evil = package(pkg, [twin], manifest_from=[orig], frames=[f1])
    assert head_evil == head_orig  # the manifest byte for byte, one frame changed
    assert os.path.getsize(pkg) == os.path.getsize(pkg + ".orig")
    # staged first: refused on every node (4 ranks, 2 nodes, each leader
    # unpacks) with one line naming the package and the shard; no tree
    r = job(place, "env.tar.zst", ranks=4)
    assert r.returncode != 0 and "READ" not in r.stdout, r.stdout + r.stderr  # no rank ran
    lines = launcher_errors(r.stderr)
    assert lines and "Traceback" not in r.stderr, r.stderr
    assert "package 'env.tar.zst'" in lines[0] and "shard 0 does not match its SHA-256" in lines[0]
    assert all(names == [] for names in trees(place).values()), trees(place)
    # python-mpi-bcast unpack (the same unpacker, no MPI) refuses it in one line
    dest = os.path.join(place["base"], "dest")
    u = run(CLI + ["unpack", os.path.join(place["pkgs"], place["python"]), pkg, dest],
            timeout=180, check=False)
    assert u.returncode == 1 and len(u.stderr.strip().splitlines()) == 1, u.stderr
    assert "shard 0 does not match its SHA-256" in u.stderr and not os.path.exists(dest)
    # the original, next on those nodes: staged, and every rank reads its bytes
    os.replace(pkg + ".orig", pkg)
    r = job(place, "env.tar.zst", ranks=4)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["READ original"] * 4, r.stdout
    assert all(len(names) == 1 for names in trees(place).values()), trees(place)


def test_a_frame_replaced_after_the_original_was_staged_changes_nothing_in_its_tree(place):
    """The other order: the original's tree is ready on the node; the
    crafted package (same manifest) reuses it and runs the original's
    bytes, its own frame never read into any tree."""
    orig, f0, twin, f1 = twin_frames("data.bin")
    pkg = os.path.join(place["pkgs"], "env.tar.zst")
    package(pkg, [orig])
    r = job(place, "env.tar.zst", ranks=2, nodes=1)
    assert r.returncode == 0 and r.stdout.splitlines() == ["READ original"] * 2, r.stderr
    before = trees(place)
    package(pkg, [twin], manifest_from=[orig], frames=[f1])
    r = job(place, "env.tar.zst", ranks=2, nodes=1)
    assert r.returncode == 0 and r.stdout.splitlines() == ["READ original"] * 2, r.stderr
    assert trees(place) == before
    # on a node that does not hold the tree yet, the same package is refused
    r = job(place, "env.tar.zst", ranks=2, nodes=2)
    assert r.returncode != 0 and "does not match its SHA-256" in r.stderr, r.stderr
    assert trees(place)["node-1"] == []


def test_a_manifest_whose_content_hash_does_not_match_its_shard_lines_is_refused(place):
    orig, f0, twin, f1 = twin_frames("data.bin")
    known = os.path.join(place["base"], "known.tar.zst")
    package(known, [orig])
    known_hash = pkgformat.read_manifest(known)[0].content_hash
    # the crafted package: its own frame and shard line, the original's content_hash
    pkg = os.path.join(place["pkgs"], "env.tar.zst")
    package(pkg, [twin])
    data = open(pkg, "rb").read()
    size = struct.unpack("<I", data[4:8])[0]
    text = pkgformat.decode_manifest_frame(data[8:8 + size])
    mine = pkgformat.parse_manifest_text(text).content_hash
    text = text.replace(mine.encode(), known_hash.encode())
    frame = zframe(text)
    with open(pkg, "wb") as f:
        f.write(struct.pack("<II", pkgformat.SKIPPABLE_MAGIC, len(frame)) + frame
                + data[8 + size:])
    needle = "content_hash does not match the shard lines"
    r = job(place, "env.tar.zst", ranks=2, nodes=2)
    lines = launcher_errors(r.stderr)
    assert r.returncode != 0 and lines and needle in lines[0], r.stderr
    assert "package 'env.tar.zst'" in lines[0]
    assert all(names == [] for names in trees(place).values())
    for cmd in (["unpack", pkg, os.path.join(place["base"], "dest")], ["inspect", pkg],
                ["verify", pkg]):
        u = run(CLI + cmd, timeout=120, check=False)
        assert u.returncode == 1 and len(u.stderr.strip().splitlines()) == 1, (cmd, u.stderr)
        assert needle in u.stderr and "Traceback" not in u.stderr, (cmd, u.stderr)


def test_the_tree_name_covers_content_kind_and_prefix_lines_but_not_the_name(place):
    orig, f0, twin, f1 = twin_frames("data.bin")
    raw = orig + tar_file("where.txt", PLACEHOLDER.encode() + b"\n")

    def tree_of(file, raw=raw, **kw) -> str:
        """The name of the tree a job of package ``file`` runs from."""
        package(os.path.join(place["pkgs"], file), [raw], **kw)
        r = job(place, file, ranks=2, nodes=1, code=PREFIX)
        assert r.returncode == 0, r.stderr
        (prefix,) = set(r.stdout.split())
        return os.path.basename(prefix)

    ph = [("text", "where.txt", PLACEHOLDER)]
    first = tree_of("a.tar.zst", prefix=ph)
    # the same content and prefix lines under another name, made by someone
    # else: the same tree (reused)
    assert tree_of("b.tar.zst", prefix=ph, name="other", created_by="someone else") == first
    # without the prefix line, with another placeholder, in binary mode: other trees
    names = {first, tree_of("c.tar.zst"),
             tree_of("d.tar.zst", prefix=[("text", "where.txt", PLACEHOLDER[:-1])]),
             tree_of("e.tar.zst", prefix=[("binary", "where.txt", PLACEHOLDER)])}
    # a changed frame with its manifest made to match: another tree
    names.add(tree_of("f.tar.zst", raw=twin + tar_file("where.txt", PLACEHOLDER.encode() + b"\n"),
                      prefix=ph))
    assert len(names) == 5, names
