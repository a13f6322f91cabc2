"""Hostile and damaged packages, against both readers: the launcher
(``python-mpi --stage-only`` on 2 simulated nodes) and ``python-mpi-bcast
unpack``.  Each promise is checked the same way for both: a package is
either staged exactly as packed, or refused with one line naming it, a
non-zero exit, no ready tree and nothing outside the destination touched.
``verify`` (which unpacks nothing: ``--pmb-unpack --check``) refuses every
package here that they refuse, and writes nothing, not even in $TMPDIR
(the differences still known are listed in README.rst, "One set of rules").

Run a longer mutation campaign with ``PMB_MUTATIONS=5000 pytest
tests/package/test_hostile.py -k mutation`` (the default run tries 30 seeded mutants;
``tests/run.sh --all`` goes on for 45 s more, ``PMB_MUTATION_SECONDS``).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import tarfile
import time
import uuid

import pytest
import zstandard

from helpers import CLI, LAUNCHER, MPIEXEC, launcher_errors, run, tree_digest
from python_mpi_bcast.package import format as pkgformat

PKG = "evil.tar.zst"
PLACEHOLDER = "/PLACEHOLDER-" + "x" * 40


# -- crafting ---------------------------------------------------------------

def zframe(data: bytes, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(data)


def tar_member(name, data=b"", type_=tarfile.REGTYPE, link="", mode=0o644) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.size = len(data) if type_ == tarfile.REGTYPE else 0
    ti.linkname = link
    ti.mode = mode
    ti.mtime = 1_700_000_000
    raw = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if type_ == tarfile.REGTYPE:
        raw += data + b"\0" * ((-len(data)) % 512)
    return raw


def ustar_header(name=b"f", size=b"%011o\0" % 0, type_=b"0", link=b"", fix_checksum=True,
                 magic=b"ustar\x0000") -> bytearray:
    """A raw header whose fields can be anything (sizes as raw bytes)."""
    h = bytearray(512)
    h[0:len(name[:100])] = name[:100]
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size
    h[136:148] = b"%011o\0" % 1_700_000_000
    h[156:157] = type_
    h[157:157 + len(link[:100])] = link[:100]
    h[257:265] = magic
    if fix_checksum:
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
    return h


def pax(records: dict | bytes) -> bytes:
    if isinstance(records, dict):
        body = b""
        for k, v in records.items():
            rec = b" " + k + b"=" + v + b"\n"
            n = len(rec) + 1
            while len(str(n)) + len(rec) != n:
                n += 1
            body += str(n).encode() + rec
    else:
        body = records
    h = ustar_header(b"././@PaxHeader", size=b"%011o\0" % len(body), type_=b"x")
    return bytes(h) + body + b"\0" * ((-len(body)) % 512)


def count(raw: bytes) -> tuple[int, int]:
    """(files, bytes) the headers of a tar stream declare; never trusts
    tarfile with hostile input (it loops forever on a negative size)."""
    files = size = i = 0
    pax_size = None
    while i + 512 <= len(raw):
        h = raw[i:i + 512]
        if h == bytes(512):
            i += 512
            continue
        try:
            sz = int(h[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            break
        t = h[156:157]
        if t == b"x":
            for rec in raw[i + 512:i + 512 + sz].split(b"\n"):
                if b" size=" in rec:
                    try:
                        pax_size = int(rec.split(b"=", 1)[1])
                    except ValueError:
                        pass
            i += 512 + (sz + 511) // 512 * 512
            continue
        if pax_size is not None:
            sz, pax_size = pax_size, None
        if t == b"0":
            files += 1
            size += sz
            i += 512 + (sz + 511) // 512 * 512
        else:
            i += 512
    return files, size


def manifest_of(data: bytes) -> tuple[pkgformat.Manifest, int]:
    size = struct.unpack("<I", data[4:8])[0]
    return pkgformat.parse_manifest_text(pkgformat.decode_manifest_frame(data[8:8 + size])), 8 + size


def write_package(path, shards: list[bytes], *, prefix=(), fix=None, manifest_text=None,
                  frames=None, files=None, size=None, kind="directory", tail=None,
                  padding=b"", **fields):
    """A package whose shards hold the raw tar streams ``shards`` (the end
    frame is added).  ``fix(m)`` may edit the manifest before it is written;
    ``frames`` replaces the compressed shards; ``manifest_text`` replaces
    the text (still put in a valid checksummed frame); ``padding`` follows
    that frame inside the skippable frame (the packer's reserved room)."""
    frames = list(frames) if frames is not None else [zframe(s) for s in shards]
    frames.append(tail if tail is not None else zframe(b"\0" * 1024))
    m = pkgformat.Manifest(name="evil", kind=kind, python="3.11", **fields)
    off = 0
    for i, f in enumerate(frames):
        raw = shards[i] if i < len(shards) else b"\0" * 1024
        nf = count(raw)[0] if i < len(shards) else 0
        m.shards.append(pkgformat.Shard(off, len(f), len(raw), nf, hashlib.sha256(f).hexdigest()))
        off += len(f)
    m.payload_size = off
    totals = [count(s) for s in shards]
    m.files = files if files is not None else sum(t[0] for t in totals)
    m.unpacked_size = size if size is not None else sum(t[1] for t in totals)
    m.content_hash = pkgformat.content_hash([s.sha256 for s in m.shards])
    m.prefix_files = [pkgformat.PrefixFile(*p) for p in prefix]
    if fix:
        fix(m)
    text = manifest_text if manifest_text is not None else m.to_text().encode("utf-8", "surrogateescape")
    if callable(text):
        text = text(m.to_text().encode())
    frame = zframe(text) + padding
    with open(path, "wb") as f:
        f.write(struct.pack("<II", pkgformat.SKIPPABLE_MAGIC, len(frame)) + frame + b"".join(frames))


# -- the two readers --------------------------------------------------------

# the package root, the destinations, and verify's TMPDIR (Place.verify: it stays empty)
OURS = ("pkgs", "nodes", "dest", "tmpdir")


class Place:
    """A scratch area: a package root, a sentinel directory next to the
    destination that no package may touch, and the destinations."""

    threads = None  # PYTHON_MPI_THREADS for the launcher and unpack, when set

    def __init__(self, base):
        self.base = base
        self.pkgs = os.path.join(base, "pkgs")
        self.sentinel = os.path.join(base, "sentinel")
        self.nodes = os.path.join(base, "nodes")
        os.makedirs(self.pkgs)
        os.makedirs(os.path.join(self.sentinel, "sub"))
        with open(os.path.join(self.sentinel, "victim.txt"), "w") as f:
            f.write(f"keep me {PLACEHOLDER}\n")
        os.symlink("..", os.path.join(self.sentinel, "up"))

    def snapshot(self) -> dict:
        """Everything under base except the package root and destinations."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            rel_dir = os.path.relpath(dirpath, self.base)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in OURS]
                out["."] = sorted(e for e in os.listdir(dirpath) if e not in OURS)
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if os.path.islink(full):
                    out[os.path.join(rel_dir, name)] = ("l", os.readlink(full))
                elif os.path.isdir(full):
                    out[os.path.join(rel_dir, name)] = ("d", st.st_mode)
                else:
                    with open(full, "rb") as f:
                        out[os.path.join(rel_dir, name)] = ("f", st.st_mode, f.read())
        return out

    def launcher(self, packages: str, ranks=2, nodes=2, chunk=None):
        shutil.rmtree(self.nodes, ignore_errors=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON_MPI_") and k not in ("PYTHONHOME", "PYTHONPATH")}
        env.update(PYTHON_MPI_PKGROOT=self.pkgs, PYTHON_MPI_PACKAGES=packages,
                   PYTHON_MPI_CHROOT=os.path.join(self.nodes, "node-%n"),
                   MPIR_CVAR_NUM_CLIQUES=str(nodes))
        if chunk:
            env["PYTHON_MPI_CHUNK"] = chunk
        if self.threads:
            env["PYTHON_MPI_THREADS"] = str(self.threads)
        return run([MPIEXEC, "-n", str(ranks), LAUNCHER, "--stage-only"], env=env, timeout=120,
                   check=False)

    def ready_trees(self) -> list[str]:
        out = []
        if os.path.isdir(self.nodes):
            for node in sorted(os.listdir(self.nodes)):
                for e in os.listdir(os.path.join(self.nodes, node)):
                    if e.startswith("env-"):
                        out.append(os.path.join(self.nodes, node, e))
        return out

    def unpack(self, packages: str):
        dest = os.path.join(self.base, "dest")
        shutil.rmtree(dest, ignore_errors=True)
        args = [os.path.join(self.pkgs, p) for p in packages.split(":")]
        env = dict(os.environ, PYTHON_MPI_THREADS=str(self.threads)) if self.threads else None
        return run(CLI + ["unpack"] + args + [dest], timeout=120, check=False, env=env), dest

    def verify(self, package: str):
        """``verify`` with TMPDIR on an empty directory, which must stay empty."""
        tmp = os.path.join(self.base, "tmpdir")
        os.makedirs(tmp, exist_ok=True)
        r = run(CLI + ["verify", os.path.join(self.pkgs, package)], timeout=120, check=False,
                env=dict(os.environ, TMPDIR=tmp))
        assert os.listdir(tmp) == [], os.listdir(tmp)
        return r


@pytest.fixture
def place():
    base = f"/dev/shm/pmb-hostile-{uuid.uuid4().hex[:10]}"
    os.makedirs(base)
    yield Place(base)
    shutil.rmtree(base, ignore_errors=True)


def launcher_error(r) -> str | None:
    if r.returncode == 0:
        return None
    lines = launcher_errors(r.stderr)
    assert lines, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def unpack_error(r) -> str | None:
    if r.returncode == 0:
        return None
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("python-mpi-bcast: error: "), r.stderr
    return lines[0]


def both_refuse(place, packages=PKG, *needles):
    """Run both readers; both must refuse with one line naming the package
    (and every needle), leave no tree and touch nothing outside."""
    before = place.snapshot()
    r = place.launcher(packages)
    line = launcher_error(r)
    assert line, f"the launcher staged it:\n{r.stdout}\n{r.stderr}"
    assert f"package '{packages.split(':')[-1]}'" in line or PKG in line, line
    for n in needles:
        assert n in line, line
    assert place.ready_trees() == []
    assert place.snapshot() == before
    r, dest = place.unpack(packages)
    uline = unpack_error(r)
    assert uline, "unpack accepted it"
    assert PKG in uline, uline
    for n in needles:
        assert n in uline, uline
    assert not os.path.exists(dest)
    assert [e for e in os.listdir(place.base) if e.startswith(".dest")] == []
    assert place.snapshot() == before
    if ":" not in packages:  # verify checks one package (the layers' conflicts are unpack's)
        vline = unpack_error(place.verify(packages))
        assert vline, "verify accepted it"
        assert PKG in vline, vline
        for n in needles:
            assert n in vline, vline
        assert place.snapshot() == before
    return line, uline


def pkg(place, name=PKG):
    return os.path.join(place.pkgs, name)


# -- class 1 and 2: escapes through symlinks ---------------------------------

SL = tarfile.SYMTYPE


@pytest.mark.parametrize("members,needle", [
    # a chain of links: l -> ., then a link walking l/l/l/../../.. above the tree
    ([("l", SL, "."), ("esc", SL, "l/l/l/../../../../sentinel"), ("esc/pwned", 0, "")],
     "'..' after a name"),
    # resolvers at creation time are not enough: p -> d/.. first, d -> . later
    ([("p", SL, "d/.."), ("d", SL, ".")], "'..' after a name"),
    # d/up -> .. is inside; d/up/up2 -> .. goes through a link
    ([("d", 5, ""), ("d/up", SL, ".."), ("d/up/up2", SL, ".."), ("d/up/up2/sentinel/pwned", 0, "")],
     "is a symlink or a file"),
    ([("d/lnk", SL, "../../..")], "more '..' than the link's depth"),
    ([("lnk", SL, "/etc")], "absolute target"),
    ([("lnk", SL, "")], "empty target"),
    ([("a/./b", SL, "x")], "'.' path component"),
    ([("lnk", SL, "a//b")], "empty component in target"),
    # a file written through a link of the same package
    ([("l", SL, "."), ("l/pwned", 0, "")], "is a symlink or a file"),
])
def test_symlinks_never_lead_writes_out_of_the_tree(place, members, needle):
    raw = b""
    for name, t, link in members:
        if t == SL:
            raw += tar_member(name, type_=SL, link=link)
        elif t == 5:
            raw += tar_member(name, type_=tarfile.DIRTYPE)
        else:
            raw += tar_member(name, b"pwned\n")
    write_package(pkg(place), [raw])
    both_refuse(place, PKG, needle)


def test_a_layer_cannot_write_through_an_earlier_layers_link(place):
    write_package(pkg(place, "first.tar.zst"), [tar_member("up", type_=SL, link=".")])
    write_package(pkg(place), [tar_member("up/x", b"x")])
    both_refuse(place, f"first.tar.zst:{PKG}", "is a symlink or a file")


@pytest.mark.parametrize("first,second,needle", [
    (tar_member("a", b"file"), tar_member("a/b", b"x"), "is a symlink or a file"),
    (tar_member("a", type_=tarfile.DIRTYPE) + tar_member("a/x", b"x"), tar_member("a", b"file"),
     "a directory of that name exists"),
    (tar_member("a", b"file"), tar_member("a", type_=tarfile.DIRTYPE), "a file or symlink of that name"),
    (tar_member("a", type_=tarfile.DIRTYPE), tar_member("a", type_=SL, link="b"),
     "a directory of that name exists"),
])
def test_a_file_and_a_directory_of_one_name_across_layers_are_refused(place, first, second, needle):
    write_package(pkg(place, "first.tar.zst"), [first])
    write_package(pkg(place), [second])
    both_refuse(place, f"first.tar.zst:{PKG}", needle)


def test_later_layers_replace_files_and_links(place):
    write_package(pkg(place, "first.tar.zst"),
                  [tar_member("f", b"one") + tar_member("l", type_=SL, link="f")])
    write_package(pkg(place), [tar_member("f", type_=SL, link="g") + tar_member("l", b"two")])
    r = place.launcher(f"first.tar.zst:{PKG}")
    assert r.returncode == 0, r.stderr
    r2, dest = place.unpack(f"first.tar.zst:{PKG}")
    assert r2.returncode == 0, r2.stderr
    for tree in place.ready_trees() + [dest]:
        assert os.readlink(os.path.join(tree, "f")) == "g"
        assert open(os.path.join(tree, "l"), "rb").read() == b"two"


@pytest.mark.parametrize("kind", ["symlink", "directory", "file"])
def test_unpacks_record_never_writes_through_a_member_of_its_name(place, kind):
    """``unpack`` marks its trees with a record at the top; a member of that
    name is replaced (a file, a link: the link is not followed, the file it
    names in the tree stays as packed) or, a directory, refused in one line
    naming it."""
    rec = ".python-mpi-bcast-unpack.json"
    raw = tar_member("target.txt", b"packed bytes\n")
    raw += {"symlink": tar_member(rec, type_=SL, link="target.txt"),
            "directory": tar_member(rec, type_=tarfile.DIRTYPE),
            "file": tar_member(rec, b"a file of the package\n")}[kind]
    write_package(pkg(place), [raw])
    r, dest = place.unpack(PKG)
    if kind == "directory":
        line = unpack_error(r)
        assert line and rec in line and "directory" in line, r.stderr
        assert not os.path.exists(dest)
        assert [e for e in os.listdir(place.base) if e.startswith(".dest")] == []
        return
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(dest, "target.txt"), "rb").read() == b"packed bytes\n"
    assert not os.path.islink(os.path.join(dest, rec))
    assert b"python-mpi-bcast unpack" in open(os.path.join(dest, rec), "rb").read()


# root without capabilities: no CAP_DAC_OVERRIDE, so file modes bind it as
# any user's (a mode-000 file is unreadable), while the test venv stays
# reachable wherever the project lies (CI runs it in /root, mode 700)
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


@pytest.mark.parametrize("mode", [0o000, 0o200])
def test_a_prefix_file_its_owner_cannot_read_is_patched_by_every_reader(place, mode):
    """A prefix-bearing file of mode 000 or 0200, unpacked by a user whom
    file modes bind (here root without capabilities): the unpacker makes it
    owner-readable to read it (it refused it before, 'prefix file ... is not
    a regular file of the package', while verify's check accepted it); the
    patched file keeps its mode."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the readers without capabilities")
    raw = (tar_member("d", type_=tarfile.DIRTYPE)
           + tar_member("d/f", b"at " + PLACEHOLDER.encode() + b"\n", mode=mode))
    write_package(pkg(place), [raw], prefix=[("text", "d/f", PLACEHOLDER)])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON_MPI_") and k not in ("PYTHONHOME", "PYTHONPATH")}
    env.update(HOME=place.base, TMPDIR=place.base)
    dest = os.path.join(place.base, "dest")
    r = run(NO_CAPS + CLI + ["unpack", pkg(place), dest], env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    r = run(NO_CAPS + CLI + ["verify", pkg(place)], env=env, timeout=120, check=False)
    assert r.returncode == 0 and ": OK (" in r.stdout, r.stderr
    env.update(PYTHON_MPI_PKGROOT=place.pkgs, PYTHON_MPI_PACKAGES=PKG,
               PYTHON_MPI_CHROOT=os.path.join(place.nodes, "node-%n"), MPIR_CVAR_NUM_CLIQUES="2")
    r = run(NO_CAPS + [MPIEXEC, "-n", "2", LAUNCHER, "--stage-only"], env=env, timeout=120,
            check=False)
    assert r.returncode == 0, r.stderr
    trees = place.ready_trees()
    assert len(trees) == 2, trees
    for tree in trees + [dest]:
        f = os.path.join(tree, "d", "f")
        assert os.stat(f).st_mode & 0o7777 == mode, oct(os.stat(f).st_mode)
        assert open(f, "rb").read() == b"at " + tree.encode() + b"\n"


BIG = tar_member("big", b"\0" * (8 << 20))  # a shard one thread is busy with


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shards", [
    [tar_member("a", b"x") + tar_member("a", b"yy")],
    [tar_member("d", type_=tarfile.DIRTYPE) + tar_member("d/a", b"x"),
     tar_member("d/a", type_=SL, link="../b") + tar_member("b", b"y")],
    [BIG + tar_member("a", b"uses /old/src/lib\n"), tar_member("a", b"clean\n")],
    [BIG + tar_member("b", b"x") + tar_member("a", type_=SL, link="b"),
     tar_member("a", b"uses " + PLACEHOLDER.encode() + b"\n")],
], ids=["one shard", "link over file across shards", "across shards", "file over link"])
def test_a_file_or_link_name_given_twice_in_one_package_is_refused(place, shards, threads):
    """pack never writes a name twice.  A package that does: unpacking
    threads kept whichever member was written last, so unpack accepted or
    refused it by the thread count, and verify (the last member wins) could
    say OK of a tree that kept a leftover source path.  Every reader refuses
    it, in the same words, with 1 and 2 threads (a name from an earlier
    layer is still replaced: test_later_layers_replace_files_and_links)."""
    write_package(pkg(place), shards, prefix=[("text", "a", PLACEHOLDER)]
                  if b"PLACEHOLDER" in shards[-1] else ())
    place.threads = threads
    both_refuse(place, PKG, "holds a file or symlink of that name twice")


# -- class 3 and 8: the manifest ---------------------------------------------

@pytest.mark.parametrize("path", ["/abs/victim.txt", "../sentinel/victim.txt",
                                  "%2E%2E/sentinel/victim.txt", "a/../../victim.txt", "./f",
                                  "f/", "%00f"])
def test_prefix_lines_cannot_name_files_outside_the_tree(place, path):
    raw = tar_member("f", PLACEHOLDER.encode())
    write_package(pkg(place), [raw],
                  manifest_text=lambda t: t.replace(b"end\n", f"prefix text {path} {PLACEHOLDER}\nend\n".encode()))
    both_refuse(place, PKG, "corrupt manifest")


@pytest.mark.parametrize("line,needle", [
    ("prefix text f", "bad prefix line"),
    ("prefix text f %s extra" % PLACEHOLDER, "bad prefix line"),
    ("prefix weird f %s" % PLACEHOLDER, "prefix mode"),
    ("prefix text f  %s" % PLACEHOLDER, "empty field"),
    ("prefix text f %zz", "percent-encoding"),
    ("prefix text sub %s" % PLACEHOLDER, "not a regular file"),
    ("prefix text missing %s" % PLACEHOLDER, "not a regular file"),
    ("prefix text l %s" % PLACEHOLDER, "not a regular file"),
    ("prefix text l/x %s" % PLACEHOLDER, "its parent 'l' is a symlink or a file"),
    ("prefix text sub/missing %s" % PLACEHOLDER, "not a regular file"),
    ("prefix text nodir/x %s" % PLACEHOLDER, "not a regular file"),
])
def test_malformed_prefix_lines_are_refused(place, line, needle):
    raw = (tar_member("f", PLACEHOLDER.encode()) + tar_member("sub", type_=tarfile.DIRTYPE)
           + tar_member("l", type_=SL, link="f"))
    write_package(pkg(place), [raw],
                  manifest_text=lambda t: t.replace(b"end\n", line.encode() + b"\nend\n"))
    both_refuse(place, PKG, needle)


def test_a_flipped_bit_in_the_manifest_is_caught(place):
    raw = tar_member("f", PLACEHOLDER.encode())
    write_package(pkg(place), [raw], prefix=[("text", "f", PLACEHOLDER)])
    data = bytearray(open(pkg(place), "rb").read())
    # the manifest frame's compressed text: flip a bit in the middle of it
    size = struct.unpack("<I", data[4:8])[0]
    data[8 + size // 2] ^= 0x10
    open(pkg(place), "wb").write(bytes(data))
    both_refuse(place, PKG, "manifest")


def test_a_version_1_package_is_refused_with_the_fix(place):
    write_package(pkg(place), [tar_member("f", b"x")])
    data = open(pkg(place), "rb").read()
    size = struct.unpack("<I", data[4:8])[0]
    text = pkgformat.decode_manifest_frame(data[8:8 + size]).replace(
        b"python-mpi-bcast-package 2", b"python-mpi-bcast-package 1")
    open(pkg(place), "wb").write(struct.pack("<II", pkgformat.SKIPPABLE_MAGIC, len(text)) + text
                                 + data[8 + size:])
    both_refuse(place, PKG, "package format version 1", "re-pack it with python-mpi-bcast pack")


@pytest.mark.parametrize("edit,needle", [
    # class 5: sizes that wrap around 2^64 and still sum to the payload
    (lambda m: setattr(m.shards[0], "csize", m.shards[0].csize + (1 << 64) - 7), "bad shard line"),
    (lambda m: setattr(m.shards[0], "csize", (1 << 63)), "bad shard line"),
    (lambda m: setattr(m.shards[0], "offset", 1), "not contiguous"),
    (lambda m: setattr(m, "payload_size", m.payload_size + 1), "payload is"),
    (lambda m: m.shards.pop(0), "not contiguous"),  # a removed shard line loses files
    (lambda m: setattr(m, "files", m.files + 1), "shards hold"),
    (lambda m: setattr(m.shards[0], "usize", m.shards[0].usize + 1), "impossible sizes"),
    (lambda m: setattr(m.shards[0], "sha256", "Z" * 64), "bad shard line"),
    (lambda m: setattr(m, "content_hash", "abc"), "content_hash"),
    (lambda m: setattr(m, "unpacked_size", -1), "unpacked_size"),
    (lambda m: setattr(m, "kind", "weird"), "'kind'"),
    (lambda m: setattr(m, "libpython", "../lib.so"), "'libpython'"),
])
def test_shard_tables_and_fields_are_range_checked(place, edit, needle):
    raw = tar_member("a", b"a" * 1000) + tar_member("b", b"b" * 3000)
    write_package(pkg(place), [raw], fix=edit)
    both_refuse(place, PKG, needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: setattr(m.shards[0], "usize", m.shards[0].usize + 512), "unpacks to"),
    (lambda m: setattr(m.shards[0], "usize", m.shards[0].usize - 512), "more than"),
    (lambda m: setattr(m, "unpacked_size", m.unpacked_size - 1), "manifest says"),
])
def test_declared_sizes_must_match_the_content(place, edit, needle):
    raw = tar_member("a", b"a" * 1000) + tar_member("b", b"b" * 3000)
    write_package(pkg(place), [raw], fix=edit)
    both_refuse(place, PKG, needle)


# -- class 4, 6, 7: the tar stream -------------------------------------------

def neg_base256() -> bytes:
    return b"\xff" * 11 + b"\xfe"


@pytest.mark.parametrize("raw,needle", [
    # class 4: a negative base-256 size (made tarfile loop forever)
    (bytes(ustar_header(b"f", size=neg_base256())), "bad number"),
    (bytes(ustar_header(b"f", size=b"\x80" + b"\0" * 10 + b"\x10")) + b"x" * 512, "bad number"),
    (bytes(ustar_header(b"f", size=b"77777777777\0")), "ends inside an archive member"),
    # class 6: names that would be cut short
    (pax({b"path": b"d/" * 2500 + b"f"}) + bytes(ustar_header(b"f")), "longer than 4095"),
    (pax({b"path": b"l", b"linkpath": b"a" * 10000}) + bytes(ustar_header(b"l", type_=b"2")),
     "longer than 4095"),
    # class 7: broken streams inside valid frames
    (tar_member("a", b"x") + bytes(ustar_header(b"b", fix_checksum=False)), "checksum mismatch"),
    (tar_member("a", b"x") + b"\0" * 1024 + tar_member("b", b"y"), "zero block"),
    (tar_member("a", b"x" * 600)[:1024], "ends inside an archive member"),
    (pax(b"30 path=no-newline-here.......") + bytes(ustar_header(b"f")), "bad pax record"),
    (pax(b"08 path=\n") + bytes(ustar_header(b"f")), "bad pax record"),
    (pax({b"GNU.sparse.map": b"0,10"}) + bytes(ustar_header(b"f")), "unsupported pax record"),
    (pax({b"size": b"-5"}) + bytes(ustar_header(b"f")), "bad pax size"),
    (pax({b"path": b"a", b"path ": b"b"}) + bytes(ustar_header(b"f")), "unsupported pax record"),
    (pax({b"path": b"a\0b"}) + bytes(ustar_header(b"f")), "NUL byte"),
    (pax({b"comment": b"x" * (2 << 20)}) + bytes(ustar_header(b"f")), "pax header of"),
    (pax({b"path": b"a"}) + pax({b"path": b"b"}) + bytes(ustar_header(b"f")), "two pax headers"),
    (tar_member("a", b"x") + pax({b"path": b"b"}), "ends inside an archive member"),
    (bytes(ustar_header(b"f", magic=b"ustar  \0")), "not a POSIX ustar header"),
    (bytes(ustar_header(b"f", type_=b"S")), "unsupported type 'S'"),
    (bytes(ustar_header(b"././@LongLink", type_=b"L", size=b"%011o\0" % 3)) + b"abc".ljust(512, b"\0"),
     "unsupported type 'L'"),
    # types nobody listed: hard links, FIFOs, devices, contiguous, global pax
    (tar_member("a", b"x") + bytes(ustar_header(b"h", type_=b"1", link=b"a")), "unsupported type '1'"),
    (bytes(ustar_header(b"fifo", type_=b"6")), "unsupported type '6'"),
    (bytes(ustar_header(b"null", type_=b"3")), "unsupported type '3'"),
    (bytes(ustar_header(b"blk", type_=b"4")), "unsupported type '4'"),
    (bytes(ustar_header(b"c", type_=b"7")), "unsupported type '7'"),
    (bytes(ustar_header(b"g", type_=b"g")), "unsupported type 'g'"),
    (bytes(ustar_header(b"old", type_=b"\0")), "unsupported type '\\0'"),
    # a directory or a link that carries data; a file with a link name
    (bytes(ustar_header(b"d", type_=b"5", size=b"%011o\0" % 512)) + b"x" * 512, "with data"),
    (bytes(ustar_header(b"f", link=b"x")), "link target on a file"),
    # absolute, '..', '.', empty components
    (tar_member("/etc/evil", b"x"), "absolute path"),
    (tar_member("a/../../b", b"x"), "'..' path component"),
    (bytes(ustar_header(b"./f")), "'.' path component"),
    (bytes(ustar_header(b"a//f")), "empty path component"),
    (bytes(ustar_header(b"f/")), "empty path component"),
    # a name no file system takes (verify, which creates nothing, refuses it alike)
    (tar_member("d/" + "n" * 256, b"x"), "name too long"),
    (tar_member("d" * 256 + "/f", b"x"), "name too long"),
])
def test_broken_tar_streams_are_refused(place, raw, needle):
    write_package(pkg(place), [raw], size=0)
    both_refuse(place, PKG, needle)


PEAK_RSS = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
sys.stdout.write(r.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)
"""


def peak_rss(args: list[str]) -> tuple[str, int, int]:
    """(stderr, peak RSS in KiB of the process and its children, exit status)."""
    r = run([CLI[0], "-c", PEAK_RSS] + args, timeout=320)
    *err, last = r.stdout.splitlines()
    kib, rc = map(int, last.split())
    return "\n".join(err) + "\n" if err else "", kib, rc


def test_a_huge_declared_pax_header_is_refused_without_reading_it(place):
    """A pax header declaring 8 GiB, then 256 MiB of zeros (a package of a
    few KB): every reader refuses it by its size, and verify never buffers
    it (it held 1 GB for 300 MiB, or died with a MemoryError traceback
    under ulimit -v)."""
    h = bytes(ustar_header(b"././@PaxHeader", size=b"77777777777\0", type_=b"x"))
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(
        h + bytes(256 << 20))
    write_package(pkg(place), [h + bytes(1024)], frames=[frame],
                  fix=lambda m: setattr(m.shards[0], "usize", len(h) + (256 << 20)))
    assert os.path.getsize(pkg(place)) < 100_000
    both_refuse(place, PKG, "pax header of 8589934591 bytes")
    err, kib, rc = peak_rss(CLI + ["verify", pkg(place)])
    assert rc == 1 and "pax header of 8589934591 bytes" in err and len(err.splitlines()) == 1, err
    assert kib < 150_000, f"verify peaked at {kib} KiB"


DEEP = "/".join(["a"] * 2040)  # 4079 bytes, 2040 components


@pytest.mark.parametrize("shape", ["200 distinct deep paths", "3000 names in one deep directory"])
def test_checking_deep_paths_takes_time_and_memory_linear_in_the_names(place, shape):
    """verify's check (``--pmb-unpack --check``) keeps the names a tree
    would hold as (parent, component) nodes: 200 members of 4 KB paths of
    2040 components each, all different, took 835 MB and 7 s; 3000 members
    under one 4 KB parent took 23 s (its table held every parent prefix as a
    whole string and hashed each from scratch).  Now well under a second."""
    if shape.startswith("200"):
        raw = b"".join(tar_member(f"{i:03d}/{DEEP[4:]}/f", b"") for i in range(200))
    else:
        raw = b"".join(tar_member(f"{DEEP}/{i}", b"") for i in range(3000))
    write_package(pkg(place), [raw])
    t = time.monotonic()
    err, kib, rc = peak_rss([LAUNCHER, "--pmb-unpack", "--check", pkg(place)])
    took = time.monotonic() - t
    assert rc == 0 and err == "", err
    assert took < 5 and kib < 100_000, f"the check took {took:.1f} s and {kib} KiB"
    r = place.verify(PKG)
    assert r.returncode == 0 and ": OK (" in r.stdout, r.stderr


def test_members_after_the_end_blocks_are_refused(place):
    raw = tar_member("a", b"x")
    write_package(pkg(place), [raw], tail=zframe(b"\0" * 1024 + tar_member("late", b"y")))
    both_refuse(place, PKG, "more than")


@pytest.mark.parametrize("frames,needle", [
    (lambda raw: [zframe(raw, checksum=False)], "has no checksum"),
    (lambda raw: [zframe(raw[:512]) + zframe(raw[512:])], "data after its zstd frame"),
    (lambda raw: [struct.pack("<II", 0x184D2A50, 4) + b"junk" + zframe(raw)], "not a zstd frame"),
    (lambda raw: [zframe(raw)[:-6]], "cut short"),
    (lambda raw: [zframe(raw)[:-4] + b"\0\0\0\0"], "fails its check"),
    (lambda raw: [zframe(raw)[:3]], "not a zstd frame"),
])
def test_every_shard_is_one_checksummed_frame(place, frames, needle):
    raw = tar_member("a", b"a" * 700) + tar_member("b", b"b" * 300)
    write_package(pkg(place), [raw], frames=frames(raw))
    both_refuse(place, PKG, needle)


def test_a_manifest_frame_padded_with_zeros_is_read_by_every_reader(place, tmp_path):
    """The room pack reserves for the manifest (package/format.py): zeros
    after the manifest's zstd frame, inside its skippable frame.  Both
    readers stage the tree exactly, zstd and tar skip the room; a non-zero
    byte in it is refused by both."""
    raw = (tar_member("d", type_=tarfile.DIRTYPE) + tar_member("d/f", PLACEHOLDER.encode())
           + tar_member("d/g", b"data " * 1000) + tar_member("top", type_=SL, link="d/g"))
    for pad in (1, 4096, 100_003):
        write_package(pkg(place), [raw], prefix=[("text", "d/f", PLACEHOLDER)],
                      padding=bytes(pad))
        r = place.launcher(PKG)
        assert r.returncode == 0, r.stderr
        trees = place.ready_trees()
        r2, dest = place.unpack(PKG)
        assert r2.returncode == 0, r2.stderr
        for t in trees + [dest]:
            with open(os.path.join(t, "d", "g"), "rb") as f:
                assert f.read() == b"data " * 1000
            assert os.readlink(os.path.join(t, "top")) == "d/g"
            with open(os.path.join(t, "d", "f")) as f:
                assert f.read() == t  # the prefix line was applied
        if shutil.which("zstd"):
            r = run(["sh", "-c", f"zstd -dcq '{pkg(place)}' | tar -t"], timeout=60)
            assert r.stdout.split() == ["d/", "d/f", "d/g", "top"], r.stdout
        x = tmp_path / f"x{pad}"
        x.mkdir()
        run(["tar", "--zstd", "-xf", pkg(place), "-C", str(x)], timeout=60)
        assert (x / "d" / "g").read_bytes() == b"data " * 1000
    write_package(pkg(place), [raw], padding=bytes(100) + b"\x01" + bytes(100))
    both_refuse(place, PKG, "not exactly one zstd frame")


def test_garbage_after_the_payload_is_refused(place):
    write_package(pkg(place), [tar_member("a", b"x")])
    with open(pkg(place), "ab") as f:
        f.write(b"trailing")
    both_refuse(place, PKG, "expected")


def test_a_crafted_package_that_follows_the_rules_is_staged_by_both(place):
    raw = (tar_member("d", type_=tarfile.DIRTYPE) + tar_member("d/f", PLACEHOLDER.encode())
           + tar_member("d/self", type_=SL, link=".") + tar_member("d/up", type_=SL, link="..")
           + tar_member("d/e/g", b"deep") + tar_member("top", type_=SL, link="d/e/g"))
    write_package(pkg(place), [raw], prefix=[("text", "d/f", PLACEHOLDER)])
    r = place.launcher(PKG)
    assert r.returncode == 0, r.stderr
    (tree,) = place.ready_trees()[:1]
    r2, dest = place.unpack(PKG)
    assert r2.returncode == 0, r2.stderr
    for t in (tree, dest):
        assert open(os.path.join(t, "d/f")).read() == t
        assert open(os.path.join(t, "top")).read() == "deep"


# -- verify's scan of the stream ----------------------------------------------

SRC = "/old/place/env"  # the source location the crafted packages name


def test_the_stream_scan_reports_what_the_scan_of_the_unpacked_tree_reports(tmp_path):
    """Leftovers (text files and links naming the source), compiled-in paths
    (binary files) and prefix-listed files (not read): verify alone and verify --into (which
    scans the tree it unpacked) list the same files in the same order."""
    def members(src: str) -> bytes:  # the text files and links naming src
        return (tar_member("b", type_=tarfile.DIRTYPE)
                + tar_member("b/z.txt", f"at {src}/lib\n".encode())
                + tar_member("b/c/deep.txt", f"{src}\n".encode())
                + tar_member("a.txt", b"clean\n")
                + tar_member("bin.so", b"\0" + SRC.encode() + b"/lib\0")
                + tar_member("listed.txt", f"{SRC}/x\n".encode())
                + tar_member("twice.txt", b"clean now\n")
                + tar_member("again.txt", f"{src}/again\n".encode())
                + tar_member("near.txt", f"{SRC}-data/x\n".encode())  # not a whole path prefix
                + tar_member("lnk", type_=tarfile.SYMTYPE, link="a.txt"))

    raw = members(SRC)
    pkg = str(tmp_path / "evil.tar.zst")
    write_package(pkg, [raw], sources=SRC, prefix=[("text", "listed.txt", "/PLACEHOLDER-x")])
    out = []
    for extra in ([], ["--into", str(tmp_path / "kept")]):
        r = run(CLI + ["verify", pkg] + extra, timeout=120, check=False)
        assert r.returncode == 1 and "3 files still refer to the source location" in r.stderr, (
            r.stdout, r.stderr)
        out.append(r.stdout)
    assert out[0] == out[1], out
    assert out[0].splitlines() == ["leftover source path in: again.txt",
                                   "leftover source path in: b/z.txt",
                                   "leftover source path in: b/c/deep.txt"], out[0]
    # without leftovers: the compiled-in path is listed, and the counts agree
    clean = members("/somewhere/else")
    write_package(pkg, [clean], sources=SRC, prefix=[("text", "listed.txt", "/PLACEHOLDER-x")])
    shutil.rmtree(tmp_path / "kept", ignore_errors=True)
    out = [run(CLI + ["verify", pkg] + extra, timeout=120).stdout
           for extra in ([], ["--into", str(tmp_path / "kept")])]
    assert out[0] == out[1], out
    assert "1 binary file(s) keep a compiled-in path of the source as a fallback" in out[0]
    assert "bin.so" in out[0] and "OK (8 files" in out[0], out[0]


# -- split files (format 3): crafted packages that misuse pieces -------------

DATA = bytes(random.Random(3).randrange(256) for _ in range(3000))


def split_package(path, *, name="big", header=None, before=b"", after=b"", parts=None,
                  shard0=None, size=3000, mode=0o644, mtime=1_700_000_000):
    """A package whose file ``name`` (DATA, 3000 bytes) is split: its header
    and bytes [0, 1024) end shard 0 (after ``before``), [1024, 2048) are
    shard 1, the rest and its padding start shard 2 (then ``after``); the
    manifest's part lines say so unless ``parts`` replaces them."""
    hdr = header if header is not None else tar_member(name, DATA, mode=mode)[:512]
    shards = [shard0 if shard0 is not None else before + hdr + DATA[:1024], DATA[1024:2048],
              DATA[2048:] + b"\0" * 72 + after]
    parts = parts if parts is not None else [
        pkgformat.Part(1, 1024, size, mode, mtime, name),
        pkgformat.Part(2, 2048, size, mode, mtime, name)]

    def fix(m):
        nb, bb = count(before)
        na, ba = count(after)
        head = 1 if header is None or header[156:157] == b"0" else 0
        for sh, n in zip(m.shards, [nb + head, 0, na, 0]):
            sh.nfiles = n
        m.files = nb + na + head
        m.unpacked_size = bb + ba + (3000 if head else 0)
        m.parts = parts
    write_package(path, shards, fix=fix)


def test_a_crafted_split_file_is_read_by_every_reader(place):
    split_package(pkg(place), before=tar_member("a", b"x" * 700), after=tar_member("z", b"zz"))
    r, dest = place.unpack(PKG)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(dest, "big"), "rb") as f:
        assert f.read() == DATA
    assert os.stat(os.path.join(dest, "big")).st_mtime == 1_700_000_000
    place.threads = 1
    r = place.launcher(PKG, ranks=4, nodes=2)
    assert r.returncode == 0, r.stderr
    assert len(place.ready_trees()) == 2
    for t in place.ready_trees():
        with open(os.path.join(t, "big"), "rb") as f:
            assert f.read() == DATA
    assert place.verify(PKG).returncode == 0


SL, DIR = tarfile.SYMTYPE, tarfile.DIRTYPE
NOT_IT = "not the file the manifest splits under that name"


@pytest.mark.parametrize("kw,needle", [
    # the split name is a symlink or a directory in the package
    ({"header": tar_member("big", type_=SL, link="a")[:512]}, NOT_IT),
    ({"header": tar_member("big", type_=DIR)[:512]}, NOT_IT),
    # the header does not say what the part lines say
    ({"size": 3500, "after": tar_member("z", b"z" * 1024)}, NOT_IT),
    ({"mtime": 1_700_000_001}, NOT_IT),
    # a second file or link of the split name, in another shard
    ({"after": tar_member("big", b"again")}, NOT_IT),
    ({"after": tar_member("big", type_=SL, link="z")}, NOT_IT),
    ({"before": tar_member("big", b"first")}, NOT_IT),
    # shard 0 ends between members, the manifest says shard 1 begins inside a file
    ({"shard0": tar_member("a", b"x" * 1024)}, "shard 0 ends between members"),
    # shard 0 ends inside a file the manifest does not continue
    ({"parts": []}, "shard 0 ends inside an archive member"),
    # a file under the split file (its parent is a file)
    ({"after": tar_member("big/x", b"x")}, "is a symlink or a file"),
])
def test_misused_pieces_are_refused_by_every_reader(place, kw, needle):
    split_package(pkg(place), **kw)
    both_refuse(place, PKG, needle)


def test_a_link_at_the_split_files_name_is_replaced_never_followed(place):
    """An earlier layer's symlink where a split file goes (and a file it
    points to): the split file replaces the link; the target is untouched."""
    write_package(pkg(place, "l1.tar.zst"),
                  [tar_member("t.txt", b"target\n") + tar_member("big", type_=SL, link="t.txt")])
    split_package(pkg(place))
    for r, trees in [(lambda: place.launcher(f"l1.tar.zst:{PKG}", ranks=2, nodes=1),
                      place.ready_trees),
                     (lambda: place.unpack(f"l1.tar.zst:{PKG}")[0],
                      lambda: [os.path.join(place.base, "dest")])]:
        res = r()
        assert res.returncode == 0, res.stderr
        for t in trees():
            assert not os.path.islink(os.path.join(t, "big"))
            with open(os.path.join(t, "big"), "rb") as f:
                assert f.read() == DATA
            with open(os.path.join(t, "t.txt"), "rb") as f:
                assert f.read() == b"target\n"


# -- the manifest parsers: one corpus, same verdicts --------------------------

def split_manifest() -> pkgformat.Manifest:
    """A manifest with a file split over shards 0 to 2: its header and 4608
    bytes in shard 0, 4096 in shard 1, the last 1000 and another file in
    shard 2."""
    m = pkgformat.Manifest(name="env", kind="directory", unpacked_size=9704 + 512, files=2,
                           payload_size=400)
    m.shards = [pkgformat.Shard(0, 150, 5120, 1, "b" * 64), pkgformat.Shard(150, 100, 4096, 0, "c" * 64),
                pkgformat.Shard(250, 100, 2048, 1, "d" * 64), pkgformat.Shard(350, 50, 1024, 0, "e" * 64)]
    m.content_hash = pkgformat.content_hash([s.sha256 for s in m.shards])
    m.parts = [pkgformat.Part(1, 4608, 9704, 0o644, 1_700_000_000, "big/file"),
               pkgformat.Part(2, 8704, 9704, 0o644, 1_700_000_000, "big/file")]
    m.prefix_files = [pkgformat.PrefixFile("text", "bin/a b", "/ph%x")]
    return m


def split_corpus() -> list[bytes]:
    """The bad part lines of the brief, each by hand, then seeded mutations."""
    good = split_manifest().to_text().encode()
    assert good.startswith(b"python-mpi-bcast-package 3\n")
    p1 = b"part 1 4608 9704 0644 1700000000 big/file"
    p2 = b"part 2 8704 9704 0644 1700000000 big/file"
    cases = [good]
    for old, new in [
            (p1, b"part 1 9728 9704 0644 1700000000 big/file"),    # offset beyond the size
            (p1, b"part 1 4600 9704 0644 1700000000 big/file"),    # not on a block
            (p1, b"part 1 0 9704 0644 1700000000 big/file"),       # not inside
            (p2 + b"\n", b""),                                     # the last piece missing
            (p1 + b"\n", b""),                                     # a middle piece missing
            (p1 + b"\n" + p2, p2 + b"\n" + p1),                    # out of order
            (p1, p2),                                             # the same shard twice
            (p2, b"part 2 8704 9704 0644 1700000000 other"),      # another file: does not fit
            (p2, b"part 2 8704 9705 0644 1700000000 big/file"),   # the size changes
            (p2, b"part 2 8704 9704 0755 1700000000 big/file"),   # the mode changes
            (p2, b"part 2 9216 9704 0644 1700000000 big/file"),   # a hole
            (p1, b"part 0 4608 9704 0644 1700000000 big/file"),   # shard 0 begins a file
            (p2, b"part 3 8704 9704 0644 1700000000 big/file"),   # the tail
            (p1, b"part 1 4608 9704 644 1700000000 big/file"),    # mode form
            (p1, b"part 1 4608 9704 0648 1700000000 big/file"),
            (p1, b"part 1 4608 9704 1644 1700000000 big/file"),
            (p1, b"part 1 4608 9704 0644 1700000000 ../file"),
            (p1, b"part 1 4608 9704 0644 1700000000 big%2Ffile%zz"),
            (p1, b"part 1 4608 9704 0644 1700000000"),
            (p1, p1 + b" x"),
            (b"prefix text bin/a%20b /ph%25x", b"prefix text big/file /ph"),  # a split prefix file
            (b"python-mpi-bcast-package 3", b"python-mpi-bcast-package 2"),   # parts in version 2
            (b"python-mpi-bcast-package 3", b"python-mpi-bcast-package 4")]:
        assert old in good, old
        cases.append(good.replace(old, new, 1))
    # the piece is longer than the rest of the member: shard 1 holds 4096 bytes, the file
    # ends before them
    cases.append(good.replace(b" 9704 ", b" 7000 "))
    # announced twice: the same file split again further on is refused (duplicate)
    m = split_manifest()
    m.shards = [pkgformat.Shard(0, 1, us, nf, h * 64) for us, nf, h in
                [(5120, 1, "b"), (4096, 0, "c"), (1024, 0, "d"), (5120, 1, "e"), (6144, 1, "f"),
                 (1024, 0, "a")]]
    for i, sh in enumerate(m.shards):
        sh.offset = i
    m.payload_size, m.files = len(m.shards), 3
    m.content_hash = pkgformat.content_hash([s.sha256 for s in m.shards])
    m.parts.append(pkgformat.Part(4, 4608, 9704, 0o644, 1_700_000_000, "big/file"))
    cases.append(m.to_text().encode())
    # a part line after a prefix line, before the shards, after 'end'
    cases.append(good.replace(p2 + b"\n", b"").replace(b"end\n", p2 + b"\nend\n"))
    cases.append(good.replace(b"shards 4", p1 + b"\nshards 4"))
    cases.append(good + p1 + b"\n")
    tokens = [b"part", b"0644", b"0777", b"4608", b"8704", b"9704", b"9728", b"0", b"1", b"2",
              b"3", b"big/file", b"big", b"big/file/x", b"%2E%2E", b"1024"]
    return cases + manifest_corpus(seed=21, n=400, good=good, extra_tokens=tokens)[1:]


def manifest_corpus(seed=13, n=600, good=None, extra_tokens=()) -> list[bytes]:
    base = pkgformat.Manifest(name="env", kind="environment", python="3.11", abi="cpython-311",
                              platform="linux-x86_64", site_dir="lib/python3.11/site-packages",
                              libpython="lib/libpython3.11.so", executable="bin/python3.11",
                              unpacked_size=4000, files=2, payload_size=300,
                              created_by="pmb 1", sources="/src/a:/src/b")
    base.shards = [pkgformat.Shard(0, 250, 5120, 2, "b" * 64), pkgformat.Shard(250, 50, 1024, 0, "c" * 64)]
    base.content_hash = pkgformat.content_hash(["b" * 64, "c" * 64])
    base.prefix_files = [pkgformat.PrefixFile("text", "bin/a b", "/ph%x"),
                         pkgformat.PrefixFile("binary", "lib/x.so", "/ph")]
    good = good or base.to_text().encode()
    corpus = [good]
    lines = good.split(b"\n")[:-1]
    tokens = [b"", b"0", b"00", b"01", b"-1", b"+1", b"1_0", b"9223372036854775807",
              b"9223372036854775808", b"18446744073709551616", b"99999999999999999999", b"abc",
              b"%00", b"%2E%2E", b"%2e", b"%zz", b"%", b"%4", b"/abs", b"../x", b"a//b", b".", b"a/./b",
              b"a" * 4096, b"\xff\xfe", b"text", b"binary", b"end", b"shard", b"1024", b"a" * 64,
              b"A" * 64, b"directory", b"interpreter", b"x y", b"\x01", b"\x7f", b"\t", b"\r"] + list(extra_tokens)
    rng = random.Random(seed)
    for _ in range(n):
        ls = list(lines)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(8)
            i = rng.randrange(len(ls))
            if op == 0:
                del ls[i]
            elif op == 1:
                ls.insert(i, ls[rng.randrange(len(ls))])
            elif op == 2:
                j = rng.randrange(len(ls))
                ls[i], ls[j] = ls[j], ls[i]
            elif op == 3 or op == 4:
                f = ls[i].split(b" ")
                f[rng.randrange(len(f))] = rng.choice(tokens)
                ls[i] = b" ".join(f)
            elif op == 5:
                ls[i] = ls[i] + rng.choice([b" ", b" x", b"  ", b"\x00"])
            elif op == 6:
                ls.insert(i, b"")
            else:
                ls[i] = ls[i].replace(b"2", rng.choice([b"1", b"3", b"02"]), 1)
        text = b"\n".join(ls) + rng.choice([b"\n", b"\n", b"\n", b"", b"\n\n", b"\nx"])
        corpus.append(text)
    return corpus


def test_python_and_launcher_parse_manifests_alike(tmp_path):
    corpus = manifest_corpus()
    accepted = parse_alike(tmp_path, corpus)
    assert 20 < accepted < len(corpus) - 100  # the corpus exercises both sides


def test_both_parsers_read_part_lines_alike_and_refuse_bad_ones(tmp_path):
    """Split files (format version 3): the hand-made bad part lines are
    refused by both parsers with the same line; mutations agree."""
    corpus = split_corpus()
    accepted = parse_alike(tmp_path, corpus, hand=28)
    assert 5 < accepted < len(corpus) - 100


def parse_alike(tmp_path, corpus, hand=0) -> int:
    """Both parsers on every text: the same verdict, the same line; the
    first ``hand`` after the first (good) one must be refused."""
    paths = []
    for i, text in enumerate(corpus):
        p = tmp_path / f"m{i}.tar.zst"
        frame = zframe(text)
        p.write_bytes(struct.pack("<II", pkgformat.SKIPPABLE_MAGIC, len(frame)) + frame)
        paths.append(str(p))
    r = run([LAUNCHER, "--pmb-manifest"] + paths, timeout=120, text=False)
    out = r.stdout.decode("utf-8", "surrogateescape").split("\n")[:-1]
    results, cur = [], None
    for ln in out:
        if ln.startswith(("OK", "ERR ")):
            cur = [ln]
            results.append(cur)
        else:
            cur.append(ln)
    assert len(results) == len(corpus)
    accepted = 0
    for text, res in zip(corpus, results):
        try:
            m = pkgformat.parse_manifest_text(text)
        except pkgformat.ManifestError as e:
            assert res[0] == "ERR " + str(e), (text, res[0], str(e))
            continue
        accepted += 1
        assert not 0 < corpus.index(text) <= hand, text
        assert res[0].startswith("OK"), (text, res)
        h = lambda s: s.encode("utf-8", "surrogateescape").hex()  # noqa: E731
        want = ("OK" + "".join(f" {k}={h(getattr(m, k))}" for k in
                               ("name", "kind", "python", "abi", "libpython", "executable", "site_dir"))
                + f" unpacked_size={m.unpacked_size} files={m.files} payload_size={m.payload_size}"
                + f" shards={len(m.shards)} prefixes={len(m.prefix_files)}")
        assert res[0] == want
        assert res[1:] == ([f"shard {s.offset} {s.csize} {s.usize} {s.nfiles}" for s in m.shards]
                           + [f"part {p.shard} {p.offset} {p.size} {p.mode:04o} {p.mtime} "
                              f"path={h(p.path)}" for p in m.parts]
                           + [f"prefix {p.mode} path={h(p.path)} placeholder={h(p.placeholder)}"
                              for p in m.prefix_files])
    return accepted


# -- seeded mutations of a small real package --------------------------------

def small_package(place, src_root) -> str:
    src = os.path.join(src_root, "src")
    os.makedirs(os.path.join(src, "pkg", "sub"))
    rng = random.Random(7)
    for i in range(12):
        with open(os.path.join(src, "pkg", f"m{i}.py"), "w") as f:
            f.write(f"X = {i}\n" * (50 * i + 1))
    with open(os.path.join(src, "pkg", "sub", "blob.bin"), "wb") as f:
        f.write(bytes(rng.randrange(256) for _ in range(150_000)))
    with open(os.path.join(src, "pkg", "where.txt"), "w") as f:
        f.write(f"built in {src}\n")
    os.symlink("m1.py", os.path.join(src, "pkg", "alias.py"))
    os.symlink("../m2.py", os.path.join(src, "pkg", "sub", "up.py"))
    os.symlink("sub", os.path.join(src, "pkg", "lsub"))
    run(CLI + ["pack", "--directory", src, "-o", place.pkgs, "-n", "small", "-q", "--shard-size", "16k"],
        timeout=120)
    shutil.rmtree(src)
    return os.path.join(place.pkgs, "small.tar.zst")


# a staged tree compared with an unpacked one: the launcher's ready stamp
# (.pmb-ready, which only a staged tree has) and unpack's record (which only
# unpack's tree has) left out, each tree's own path inside its files counted
# as <TREE>
STAGED = {"skip": (".pmb-ready", ".python-mpi-bcast-unpack.json"), "own_path": True}


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    m, start = manifest_of(data)
    kind = rng.randrange(5)
    if kind == 0:  # bit flips anywhere
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return "flip", bytes(b)
    if kind == 1:  # truncation or extension
        n = rng.randrange(len(data))
        return "truncate", data[:n] if rng.random() < 0.8 else data + data[n:n + 100]
    shards = [data[start + s.offset:start + s.offset + s.csize] for s in m.shards]
    if kind == 2:  # tar header edits inside a valid, checksummed frame
        i = rng.randrange(len(shards) - 1)
        raw = bytearray(zstandard.ZstdDecompressor().decompress(shards[i], max_output_size=m.shards[i].usize))
        heads = list(range(0, len(raw), 512))
        h = rng.choice(heads)
        field = rng.choice([(0, 100), (100, 8), (124, 12), (136, 12), (148, 8), (156, 1),
                            (157, 100), (257, 8), (345, 155)])
        for _ in range(rng.randint(1, 4)):
            raw[h + field[0] + rng.randrange(field[1])] = rng.choice(
                [0, 0x20, 0x2e, 0x2f, 0x30, 0x37, 0x39, 0x80, 0xff, rng.randrange(256)])
        shards[i] = zframe(bytes(raw))
        m.shards[i].usize = len(raw)
        m.shards[i].sha256 = hashlib.sha256(shards[i]).hexdigest()  # crafted, not damaged
        what = "header"
    elif kind == 3:  # shard table edits, with a valid manifest checksum
        s = rng.choice(m.shards)
        attr = rng.choice(["offset", "csize", "usize", "nfiles"])
        setattr(s, attr, max(0, getattr(s, attr) + rng.choice([-512, -1, 1, 512, 1 << 32])))
        what = "table"
    else:  # reorder or drop shards, or drop/duplicate manifest lines
        if rng.random() < 0.5 and len(shards) > 2:
            i, j = rng.sample(range(len(shards) - 1), 2)
            shards[i], shards[j] = shards[j], shards[i]
            m.shards[i], m.shards[j] = m.shards[j], m.shards[i]
            what = "swap"
        else:
            i = rng.randrange(len(m.prefix_files) or 1)
            if m.prefix_files:
                m.prefix_files[i].placeholder = m.prefix_files[i].placeholder[:-1]
            what = "prefix"
    off = 0
    for s, body in zip(m.shards, shards):
        if what != "table":
            s.offset, s.csize = off, len(body)
        off += len(body)
    if what != "table":
        m.payload_size = off
    m.content_hash = pkgformat.content_hash([s.sha256 for s in m.shards])  # a consistent manifest
    frame = pkgformat.encode_manifest_frame(m)
    return what, frame + b"".join(shards)


def test_mutation_both_readers_agree_and_accepted_trees_are_exact(place, request):
    # a fixed number of seeded mutants (PMB_MUTATIONS, the same ones every
    # run, however busy the machine); tests/run.sh --all (or
    # PMB_MUTATION_SECONDS) goes on with further mutants for a time budget
    every = request.config.getoption("--all") or os.environ.get("PMB_TEST_ALL") == "1"
    budget = float(os.environ.get("PMB_MUTATION_SECONDS", "45" if every else "0"))
    limit = int(os.environ.get("PMB_MUTATIONS", "30"))
    orig = small_package(place, place.base)
    data = open(orig, "rb").read()
    r = place.launcher("small.tar.zst", ranks=2, nodes=1, chunk="64k")
    assert r.returncode == 0, r.stderr
    want = tree_digest(place.ready_trees()[0], **STAGED)
    r, dest = place.unpack("small.tar.zst")
    assert r.returncode == 0 and tree_digest(dest, **STAGED) == want
    rng = random.Random(int(os.environ.get("PMB_MUTATION_SEED", "2024")))
    t0 = time.monotonic()
    tried = {"accepted": 0, "refused": 0}
    target = os.path.join(place.pkgs, PKG)
    n = 0
    while n < limit or time.monotonic() - t0 < budget:
        n += 1
        what, mutant = mutate(data, rng)
        with open(target, "wb") as f:
            f.write(mutant)
        before = place.snapshot()
        # launcher: one node, two unpacking ranks, 64k chunks (chunk and shard
        # boundaries apart); unpack: one process, whole package
        r1 = place.launcher(PKG, ranks=2, nodes=1, chunk="64k")
        e1 = launcher_error(r1)
        trees = place.ready_trees()
        r2, dest = place.unpack(PKG)
        e2 = unpack_error(r2)
        assert (e1 is None) == (e2 is None), (n, what, e1, e2)
        e3 = unpack_error(place.verify(PKG))  # refuses what they refuse, writing nothing
        assert (e3 is None) == (e2 is None), (n, what, e2, e3)
        if e1 is None:
            tried["accepted"] += 1
            assert len(trees) == 1, (n, what)
            got = tree_digest(trees[0], **STAGED)
            assert tree_digest(dest, **STAGED) == got, (n, what)  # both readers made the same tree
            if what in ("flip", "truncate"):  # damage: staged only if exactly as packed
                assert got == want, (n, what)
        else:
            tried["refused"] += 1
            assert trees == [] and not os.path.exists(dest), (n, what)
            assert PKG in e1 and PKG in e2 and PKG in e3, (e1, e2, e3)
        assert place.snapshot() == before
    print(f"mutants: {n}, {tried}")
    assert n >= limit and tried["accepted"] and tried["refused"], tried


def test_manifest_frames_are_checked_alike(tmp_path):
    """The frame around the manifest text: one checksummed zstd frame with
    its size, then nothing but 0x00 bytes of padding, or a version 1
    package (raw text), or refused."""
    m = pkgformat.Manifest(name="n", kind="directory", unpacked_size=0, files=0, payload_size=10,
                           content_hash=pkgformat.content_hash(["b" * 64]))
    m.shards = [pkgformat.Shard(0, 10, 1024, 0, "b" * 64)]
    t = m.to_text().encode()
    good = zframe(t)
    cases = {
        "good": good, "two frames": good + good, "junk after": good + b"x",
        "no checksum": zframe(t, checksum=False), "bad checksum": good[:-1] + bytes([good[-1] ^ 1]),
        "cut short": good[:-3], "version 1": t.replace(b"package 2", b"package 1"),
        "no size": zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(t),
        "skippable": struct.pack("<II", 0x184D2A50, 1) + b"x", "empty": b"",
        # padding after the frame: the room the packer reserved (0x00 only)
        "padded": good + bytes(1), "padded more": good + bytes(70_000),
        "padded, a 1": good + bytes(20) + b"\x01" + bytes(20), "padded, ends 1": good + bytes(9) + b"\x01",
        "padded, then a frame": good + bytes(16) + good,
        "padding inside": good[:-4] + bytes(8) + good[-4:],
        "padding first": bytes(16) + good,
    }
    accepted = {"good", "padded", "padded more"}
    paths = []
    for i, body in enumerate(cases.values()):
        p = tmp_path / f"f{i}.tar.zst"
        p.write_bytes(struct.pack("<II", pkgformat.SKIPPABLE_MAGIC, len(body)) + body)
        paths.append(str(p))
    out = run([LAUNCHER, "--pmb-manifest"] + paths, timeout=60).stdout.splitlines()
    out = [ln for ln in out if ln.startswith(("OK", "ERR "))]
    for (name, body), c in zip(cases.items(), out):
        try:
            pkgformat.parse_manifest_text(pkgformat.decode_manifest_frame(body))
            py = "OK"
        except pkgformat.ManifestError as e:
            py = "ERR " + str(e)
        assert c == py or (py == "OK" and c.startswith("OK")), (name, c, py)
        assert (py == "OK") == (name in accepted), (name, py)
