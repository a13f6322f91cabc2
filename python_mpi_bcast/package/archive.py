"""Write a staging tree as a sharded ``NAME.tar.zst`` package, and read
packages back through the launcher's own unpacker (``python-mpi
--pmb-unpack``): one implementation of the reading rules for every command."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import io
import logging
import os
import re
import stat
import subprocess
import tarfile
import threading

import zstandard

from ..support import leftovers
from ..support.errors import PmbError, os_error
from .reuse import file_identity, is_sidecar, remove_sidecar, sidecar_of
from .format import (DEFAULT_LEVEL, MAX_MANIFEST, Manifest, Part, Shard, content_hash,
                     encode_manifest_frame, link_problem, read_manifest)

log = logging.getLogger("python_mpi_bcast")

TAR_END = b"\0" * 1024
COPY_CHUNK = 1 << 20


def _tarinfo(root: str, rel: str, lstat=os.lstat) -> tuple[tarfile.TarInfo, int]:
    """The tar header of ``root/rel`` (``lstat``: how to look at it)."""
    full = os.path.join(root, rel)
    s = lstat(full)
    ti = tarfile.TarInfo(rel)
    ti.mode = stat.S_IMODE(s.st_mode)
    ti.mtime = int(s.st_mtime)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if stat.S_ISLNK(s.st_mode):
        ti.type = tarfile.SYMTYPE
        ti.linkname = canonical_link(root, rel)
        return ti, 0
    if stat.S_ISDIR(s.st_mode):
        ti.type = tarfile.DIRTYPE
        return ti, 0
    ti.type = tarfile.REGTYPE
    ti.size = s.st_size
    return ti, s.st_size


def canonical_link(root: str, rel: str) -> str:
    """The target of the symlink ``root/rel`` in the form every reader
    accepts: "." or leading '..' components then names, resolved on the real
    filesystem (a link through another link is followed, so '..' after a
    name never appears).  A link that leaves the tree is an error."""
    full = os.path.join(root, rel)
    target = os.readlink(full)
    if os.path.isabs(target):
        raise PmbError(f"{rel}: absolute symlink to {target} left in the packed tree")
    real_root = os.path.realpath(root)
    base = [c for c in os.path.dirname(rel).split("/") if c]
    cur = list(base)
    parts = target.split("/")
    for i, comp in enumerate(parts):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not cur:
                raise PmbError(f"{rel}: symlink to {target} points outside the packed tree")
            cur.pop()
            continue
        last = all(c in ("", ".") for c in parts[i + 1:])
        here = os.path.join(real_root, *cur, comp)
        if not last and os.path.islink(here):
            resolved = os.path.realpath(here)
            if resolved != real_root and not resolved.startswith(real_root + os.sep):
                raise PmbError(f"{rel}: symlink to {target} points outside the packed tree")
            cur = [c for c in os.path.relpath(resolved, real_root).split(os.sep) if c not in ("", ".")]
        else:
            cur.append(comp)
    common = 0
    while common < min(len(base), len(cur)) and base[common] == cur[common]:
        common += 1
    out = [".."] * (len(base) - common) + cur[common:]
    canon = "/".join(out) or "."
    why = link_problem(rel.encode("utf-8", "surrogateescape"), canon.encode("utf-8", "surrogateescape"))
    if why:  # not reachable for links inside the tree; kept as the writer's own check
        raise PmbError(f"{rel}: symlink to {target} cannot be packed ({why})")
    return canon


def list_tree(root: str) -> list[tuple[str, tarfile.TarInfo, int]]:
    """All entries of ``root`` in sorted order, directories before content."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != ".":
            ti, size = _tarinfo(root, rel_dir)
            out.append((rel_dir, ti, size))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            ti, size = _tarinfo(root, rel)
            out.append((rel, ti, size))
    return out


def _tar_bytes(size: int) -> int:
    return 512 + ((size + 511) // 512) * 512


MAX_SHARD_FACTOR = 3  # a shard ends at 3 shard sizes at most (a bigger file: alone)
# A regular file of more than this many shard sizes is split across shards
# of about one shard size each (format.py, part lines), so that no single
# file sets the unpack time: one thread decodes a shard, and a 542 MB
# library in one shard is 542 MB for one thread on every node while the
# others idle.  Below it a file stays whole: at most 4 shards' worth for
# one thread, about the spread of shard costs the assignment already
# evens out (threads.c pmb_assign_shards), and no part lines.
SPLIT_FACTOR = 4


class Plan(list):
    """One shard's entries; a file split across shards (``partition``) is
    cut at data offsets: the first entry's data starts at ``head`` (0: the
    entry is whole at the start, header included; else the shard begins
    inside it), the last entry's data stops at ``cut`` (None: at its end)."""
    head = 0
    cut = None


def partition(entries, shard_size: int, split: int = 0, splittable=None) -> list[Plan]:
    """Cut the sorted entry list into contiguous shards of about
    ``shard_size`` unpacked bytes (whole files only; a file of more than
    :data:`MAX_SHARD_FACTOR` shards is a shard alone) at cut points that
    depend on the entries around them only, so that a file added, removed
    or changed moves the cuts of its own shard alone and every other shard
    holds the same members as before (package/reuse.py then reuses them).

    A cut follows an entry once the shard holds at least half a shard, with
    a probability proportional to the entry's bytes decided by a hash of its
    path and size (about half a shard more on average), and is forced at
    :data:`MAX_SHARD_FACTOR` shards.  Over 1000 shards the shard size is
    doubled until fewer remain (a power of two, so a small change to the
    environment keeps the size).

    ``split`` (a factor, 0: off): a regular file of more than ``split``
    shard sizes for which ``splittable(entry)`` holds is cut into pieces
    of one shard size (a multiple of 512): its header and first piece end
    a shard of their own, each further piece is a shard, and the last one
    starts a shard that goes on as any other (the cuts depend on the file
    alone)."""
    total = sum(_tar_bytes(e[2]) for e in entries)
    size = max(shard_size, 4096)
    while total // size > 1000:
        size *= 2
    lo, hi = size // 2, size * MAX_SHARD_FACTOR
    piece = size // 512 * 512
    per_byte = 2.0 / size  # cut probability per byte past the minimum
    shards, cur, acc = [], Plan(), 0
    for e in entries:
        n = _tar_bytes(e[2])
        if (split and e[1].type == tarfile.REGTYPE and e[2] > split * size
                and (splittable is None or splittable(e))):
            if cur:
                shards.append(cur)
            at = 0
            while e[2] - at > piece:
                p = Plan([e])
                p.head, p.cut = at, at + piece
                shards.append(p)
                at += piece
            cur = Plan([e])
            cur.head = at
            n = _tar_bytes(e[2] - at) - 512
            acc = n
        else:
            if n >= hi and cur:  # a big file: a shard alone
                shards.append(cur)
                cur, acc = Plan(), 0
            cur.append(e)
            acc += n
        if acc >= hi or (acc >= lo and _hit(e[0], e[2], n * per_byte)):
            shards.append(cur)
            cur, acc = Plan(), 0
    if cur or not shards:
        shards.append(cur)
    return shards


def _hit(rel: str, size: int, p: float) -> bool:
    if p >= 1.0:
        return True
    d = hashlib.blake2b(f"{size}\0{rel}".encode("utf-8", "surrogateescape"),
                        digest_size=8).digest()
    return int.from_bytes(d, "little") < p * 2.0 ** 64


def file_member(root: str, rel: str, ti: tarfile.TarInfo, size: int):
    """The members one listed entry becomes: itself, its bytes read from
    ``root/rel`` in chunks."""
    if ti.type != tarfile.REGTYPE:
        yield ti, ()
        return
    yield ti, read_chunks(os.path.join(root, rel), rel, size)


def read_chunks(path: str, rel: str, size: int, start: int = 0):
    """``size`` bytes of ``path`` (from ``start`` on) in chunks; a file that
    shrank is an error."""
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        left = size
        while left:
            buf = f.read(min(COPY_CHUNK, left))
            if not buf:
                raise PmbError(f"{rel}: file shrank while packing")
            yield buf
            left -= len(buf)


class _Cancelled(Exception):
    """Another shard failed: this one stops (the pack reports that failure)."""


# Compressed bytes of shards that are done (or being made) ahead of the one
# being written, held in memory, all threads together.  A shard that would
# go past it waits for its turn and then streams into the file.
WINDOW = 256 << 20


class _Range:
    """``n`` bytes of the file ``fd`` from ``offset``: a reused frame the
    kernel copies into the package when its turn comes (no memory held)."""
    __slots__ = ("fd", "offset", "n")

    def __init__(self, fd: int, offset: int, n: int):
        self.fd, self.offset, self.n = fd, offset, n


def _held(bufs) -> int:
    """The memory ``bufs`` hold (a :class:`_Range` none)."""
    return sum(0 if isinstance(b, _Range) else len(b) for b in bufs)


def _copy_range(src: _Range, fd: int, at: int) -> int:
    """Copy ``src`` into ``fd`` at ``at``: copy_file_range where the two
    files allow it (one file system; a reflink on a copy-on-write one), else
    through a buffer."""
    off, left = src.offset, src.n
    fast = hasattr(os, "copy_file_range")
    while left:
        n = 0
        if fast:
            try:
                n = os.copy_file_range(src.fd, fd, min(left, 1 << 30), off, at)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                   errno.EPERM, errno.EBADF):
                    raise
                fast = False
                continue
        else:
            buf = os.pread(src.fd, min(left, COPY_CHUNK * 16), off)
            n = len(buf) and _pwrite_all(fd, buf, at)
        if n == 0:
            raise PmbError("the previous package ended early while its shards were being "
                           "reused (cut short meanwhile?); pack again")
        off += n
        at += n
        left -= n
    return src.n


class _Sink:
    """The package file's payload, written once, in order, from ``start``
    on: shard ``i``'s bytes go to the file when every shard before it is
    there.  A worker whose shard is at the head writes straight into the
    file; the others keep their bytes in memory (at most :data:`WINDOW` in
    all; past that a worker waits until its shard is at the head).  No
    temporary file: the package's extra disk is the package itself."""

    def __init__(self, fd: int, start: int, window: int | None = None):
        # (WINDOW read now, not when the class was made: tests change it)
        self.fd, self.pos = fd, start
        self.window = WINDOW if window is None else window
        self.head = 0
        self.held = 0
        self.done: dict[int, list] = {}
        self.failed = False
        self.cv = threading.Condition()

    def out(self, i: int) -> "_ShardOut":
        with self.cv:
            if self.failed:
                raise _Cancelled()
        return _ShardOut(self, i)

    def fail(self) -> None:
        with self.cv:
            self.failed = True
            self.cv.notify_all()

    def _write(self, bufs) -> None:
        for b in bufs:
            if self.failed:  # another shard failed or the pack was interrupted
                raise _Cancelled()
            if isinstance(b, _Range):
                self.pos += _copy_range(b, self.fd, self.pos)
            else:
                self.pos += _pwrite_all(self.fd, b, self.pos)

    def _advance(self, i: int) -> None:
        """Shard ``i`` (at the head) is in the file: write the finished
        shards after it, up to the first one still being made."""
        k = i + 1
        while True:
            with self.cv:
                self.head = k
                bufs = self.done.pop(k, None)
                self.cv.notify_all()
                if bufs is None:
                    return
            self._write(bufs)
            with self.cv:
                self.held -= _held(bufs)
                self.cv.notify_all()
            k += 1


class _ShardOut(io.RawIOBase):
    """Where one shard's compressed bytes go (see :class:`_Sink`); hashes
    them on the way."""

    def __init__(self, sink: _Sink, i: int):
        self.sink, self.i = sink, i
        self.h = hashlib.sha256()
        self.digest = None  # a frame copied whole with a known SHA-256 (copy_range)
        self.n = 0
        self.bufs: list = []
        self.direct = False
        self.start = 0

    def writable(self):
        return True

    def write(self, b):
        b = bytes(b)
        self.h.update(b)
        self.n += len(b)
        if not self.direct and not self._hold(b):
            self._go_direct()
        if self.direct:
            self.sink._write((b,))
        return len(b)

    def copy_range(self, fd: int, offset: int, n: int, sha256: str) -> None:
        """The whole shard is ``n`` bytes of the file ``fd`` from ``offset``,
        whose SHA-256 is known to be ``sha256`` (a reused frame of a package
        untouched since it was hashed): copied by the kernel at its turn."""
        if self.n:
            raise ValueError("copy_range after write")
        self.n, self.digest = n, sha256
        r = _Range(fd, offset, n)
        if not self.direct and not self._hold(r):
            self._go_direct()
        if self.direct:
            self.sink._write((r,))

    def _hold(self, b) -> bool:
        """Keep ``b`` in memory (True), or, at the head, False."""
        sink = self.sink
        need = _held((b,))
        with sink.cv:
            while True:
                if sink.failed:
                    raise _Cancelled()
                if sink.head == self.i:
                    return False
                if sink.held + need <= sink.window:
                    self.bufs.append(b)
                    sink.held += need
                    return True
                sink.cv.wait()

    def _go_direct(self) -> None:
        self.direct = True
        self.start = self.sink.pos
        bufs, self.bufs = self.bufs, []
        self.sink._write(bufs)
        with self.sink.cv:
            self.sink.held -= _held(bufs)
            self.sink.cv.notify_all()

    def rewind(self) -> None:
        """Forget what was written (a reused frame whose bytes changed)."""
        self.h = hashlib.sha256()
        self.digest = None
        self.n = 0
        if self.direct:
            self.sink.pos = self.start
        else:
            with self.sink.cv:
                self.sink.held -= _held(self.bufs)
                self.bufs = []
                self.sink.cv.notify_all()

    def hexdigest(self) -> str:
        """The SHA-256 of what was written so far."""
        return self.digest or self.h.hexdigest()

    def finish(self) -> tuple[int, str]:
        """The shard is whole: (its size, its SHA-256); it goes into the file
        now if it is at the head, else when its turn comes."""
        sink = self.sink
        if not self.direct:
            with sink.cv:
                if sink.head != self.i:
                    sink.done[self.i] = self.bufs
                    self.bufs = []
                    return self.n, self.hexdigest()
            self._go_direct()
        sink._advance(self.i)
        return self.n, self.hexdigest()


def _write_piece(zw, entries, k: int, pieces, progress) -> tuple[int, int, int]:
    """The part of the split file ``entries[k]`` that the shard ``entries``
    (a :class:`Plan`) holds: its header when the shard has its start, its
    data from ``head`` to ``cut`` (or its end, then its padding).
    (tar bytes, files, file bytes)."""
    rel, ti, size = entries[k]
    start = entries.head if k == 0 else 0
    end = entries.cut if k == len(entries) - 1 and entries.cut is not None else size
    usize = nfiles = 0
    if start == 0:
        hdr = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        zw.write(hdr)
        usize += len(hdr)
        nfiles = 1
        if progress:
            progress.advance(0, files=1)
    n = 0
    for buf in pieces(rel, ti, size, start, end):
        zw.write(buf)
        n += len(buf)
        if progress:
            progress.advance(len(buf))
    if n != end - start:
        raise PmbError(f"{rel}: file changed size while packing")
    pad = (-size) % 512 if end == size else 0
    zw.write(b"\0" * pad)
    return usize + n + pad, nfiles, n


def _pieces(root: str):
    return lambda rel, ti, size, start, end: read_chunks(os.path.join(root, rel), rel,
                                                         end - start, start)


def _write_shard(root: str, entries, out: _ShardOut, level: int, progress,
                 members=None, pieces=None) -> tuple[int, int, str, int, int]:
    """One shard into ``out``: (compressed size, tar bytes, SHA-256 of the
    frame, files, file bytes).  ``members(rel, ti, size)`` yields the
    (TarInfo, chunks) an entry becomes (default: :func:`file_member`);
    ``pieces(rel, ti, size, start, end)`` the bytes [start, end) of a split
    file (an entry the :class:`Plan` cuts; default: read from ``root``)."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    usize = nfiles = fbytes = 0
    members = members or (lambda rel, ti, size: file_member(root, rel, ti, size))
    pieces = pieces or _pieces(root)
    head, cut = getattr(entries, "head", 0), getattr(entries, "cut", None)
    with cctx.stream_writer(out, closefd=False) as zw:
        for k, (rel, ti, size) in enumerate(entries):
            if (k == 0 and head) or (k == len(entries) - 1 and cut is not None):
                u, f, b = _write_piece(zw, entries, k, pieces, progress)
                usize, nfiles, fbytes = usize + u, nfiles + f, fbytes + b
                continue
            for mti, chunks in members(rel, ti, size):
                hdr = mti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                zw.write(hdr)
                usize += len(hdr)
                if mti.type != tarfile.REGTYPE:
                    continue
                n = 0
                for buf in chunks:
                    zw.write(buf)
                    n += len(buf)
                    if progress:
                        progress.advance(len(buf))
                if n != mti.size:
                    raise PmbError(f"{mti.name}: file changed size while packing")
                pad = (-n) % 512
                zw.write(b"\0" * pad)
                usize += n + pad
                nfiles += 1
                if progress:
                    progress.advance(0, files=1)
                fbytes += n
    csize, digest = out.finish()
    return csize, usize, digest, nfiles, fbytes


class Exists(PmbError):
    """The package appeared under its name while it was being written."""


def _rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with FileExistsError if ``dst`` exists, at the
    moment of the rename (renameat2 RENAME_NOREPLACE; where the file system
    lacks it, link + unlink, which is just as exclusive)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        AT_FDCWD, RENAME_NOREPLACE = -100, 1
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)  # FileExistsError if dst exists
    os.unlink(src)


# What the manifest's room counts for the prefix lines, which are found
# while the shards are written: this many bytes (compressed) per regular
# file, plus PREFIX_ROOM_BASE.  A prefix line compresses to 15 to 40 bytes
# (its placeholder repeats); in the conda-layout env of benchmark section 6
# about one file in ten has one.  A manifest that outgrows its room moves
# the payload up (see :func:`_shift`): slower, never wrong.
PREFIX_ROOM_PER_FILE = 4
PREFIX_ROOM_BASE = 4096


def _compress_bound(n: int) -> int:
    """libzstd's ZSTD_COMPRESSBOUND, plus the largest frame header and the
    checksum."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < (128 << 10) else 0) + 18 + 4


def manifest_room(m: Manifest, nshards: int, nfiles: int, prefix_known: bool) -> int:
    """The bytes to reserve at the start of the package for the manifest
    frame of ``m`` (its keys set, numbers and shards not yet known) with
    ``nshards`` shard lines: room for every number at 19 digits, plus room
    for prefix lines (exact when ``prefix_known``: ``m.prefix_files`` are
    final)."""
    big = 10 ** 18
    probe = dataclasses.replace(
        m, unpacked_size=big, files=big, payload_size=big, content_hash="0" * 64,
        shards=[Shard(big, big, big, big, "0" * 64)] * nshards)
    n = len(probe.to_text().encode("utf-8", "surrogateescape"))
    room = 8 + _compress_bound(n)
    if not prefix_known:
        room += PREFIX_ROOM_BASE + PREFIX_ROOM_PER_FILE * nfiles
    # never more than the readers accept (a larger manifest moves the payload)
    return min(room, 8 + MAX_MANIFEST)


def _pwrite_all(fd: int, data, at: int) -> int:
    view = memoryview(data)
    n = len(view)
    while view:
        w = os.pwrite(fd, view, at)
        at += w
        view = view[w:]
    return n


def _shift(fd: int, start: int, end: int, delta: int) -> None:
    """Move the bytes [start, end) of ``fd`` up by ``delta``, last chunk
    first (the file grows by ``delta`` only)."""
    pos = end
    while pos > start:
        n = min(COPY_CHUNK * 16, pos - start)
        pos -= n
        buf = os.pread(fd, n, pos)
        if len(buf) != n:
            raise PmbError("the package file changed while it was being written")
        _pwrite_all(fd, buf, pos + delta)


def write_package(st, prefix_files, out_path: str, level: int = DEFAULT_LEVEL,
                  threads: int = 0, shard_size: int = 8 << 20, progress=None,
                  replace: bool = True, before_rename=None, entries=None,
                  members=None, reuse=None, begin_shard=None, split: int = SPLIT_FACTOR,
                  splittable=None, pieces=None) -> Manifest:
    """Write the staging tree ``st.root`` to ``out_path`` atomically.
    ``replace=False``: fail with :class:`Exists` if ``out_path`` exists when
    the package is renamed into place (two writers of one name: one wins).
    ``before_rename(manifest)`` runs when the package is complete, just
    before it appears under its name.

    ``entries`` (default :func:`list_tree`) and ``members(shard, rel, ti,
    size)`` (default: the entry itself, read from the tree) let a caller
    produce members on the way (stream.py: relocated, compiled);
    ``begin_shard(shard, entries)`` is called as a shard's writer starts
    on it; ``prefix_files`` may then be a function called once every shard
    is written.

    Extra disk: the package file alone.  Its start is reserved for the
    manifest (:func:`manifest_room`), the shards go straight after it, in
    order, each once (:class:`_Sink`), then the manifest into its room,
    padded with zeros (package/format.py); a manifest larger than its room
    moves the payload up by the difference.

    ``reuse`` (a :class:`Reuse`): shards whose key a previous package's
    sidecar holds are copied from it instead of packed (checked frame by
    frame), and the new package gets a sidecar of its own.

    ``split`` (:data:`SPLIT_FACTOR`; 0: off): regular files of more than
    that many shard sizes are split across shards (:func:`partition`),
    those ``splittable(entry)`` allows (default: every one that is no
    prefix file); ``pieces(shard, rel, ti, size, start, end)`` yields a
    piece's bytes (default: read from the tree)."""
    entries = list_tree(st.root) if entries is None else entries
    if not callable(prefix_files):
        listed = {p.path for p in prefix_files}
        splittable = splittable or (lambda e: e[0] not in listed)
    shards = partition(entries, shard_size, split, splittable)
    keys = [reuse.key(level, ents) for ents in shards] if reuse else [None] * len(shards)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    threads = threads or os.cpu_count() or 1
    nregular = sum(1 for e in entries if e[1].type == tarfile.REGTYPE)
    if progress:
        progress.start(sum(size for _, _, size in entries), nregular)
    m = Manifest(name=st.name, kind=st.kind, python=st.info.version,
                 abi=st.info.soabi, platform=st.info.platform,
                 libpython=st.libpython, executable=st.executable, site_dir=st.site_dir,
                 created_by=f"python-mpi-bcast {_version()}",
                 sources=":".join(st.scrub))
    if not callable(prefix_files):
        m.prefix_files = list(prefix_files)
    for i, ents in enumerate(shards):  # known now: the manifest's room counts them
        if ents.head:
            rel, ti, size = ents[0]
            # the time the member's header holds (one outside its field's range,
            # before 1970 or after 2242: 0 there, as the unpackers give whole files)
            mtime = int(ti.mtime) if 0 <= ti.mtime < 8 ** 11 else 0
            m.parts.append(Part(i, ents.head, size, ti.mode & 0o777, mtime, rel))
    room = manifest_room(m, len(shards) + 1, nregular, not callable(prefix_files))
    final_tmp = side_tmp = keep = None
    try:
        fd, final_tmp = leftovers.mkstemp(prefix=f".{os.path.basename(out_path)}.",
                                          suffix=".part", dir=out_dir)
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out.fileno(), room)

            def one(i, ents):
                try:
                    dst = sink.out(i)
                    fr = reuse.frame(keys[i]) if reuse else None
                    if fr is not None:
                        if reuse.previous.copy(fr, dst):
                            dst.finish()
                            reuse.restore(i, fr)
                            if progress:
                                progress.advance(fr.fbytes, files=fr.nfiles)
                            return (fr.csize, fr.usize, fr.sha256, fr.nfiles, fr.fbytes), True
                        dst.rewind()
                    if begin_shard is not None:
                        begin_shard(i, ents)
                    return _write_shard(st.root, ents, dst, level, progress,
                                        (lambda rel, ti, size: members(i, rel, ti, size))
                                        if members else None,
                                        (lambda *a: pieces(i, *a)) if pieces else None), False
                except BaseException:
                    sink.fail()
                    raise

            with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
                futs = [pool.submit(one, i, ents) for i, ents in enumerate(shards)]
                try:
                    concurrent.futures.wait(futs)
                except BaseException:  # interrupted: the workers stop at their next write
                    sink.fail()
                    raise
            errors = [f.exception() for f in futs if f.exception() is not None]
            for e in errors:
                if not isinstance(e, _Cancelled):
                    raise e
            done = [f.result() for f in futs]
            results = [r for r, _ in done]
            tail = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(TAR_END)
            sink._write((tail,))
            off = 0
            for csize, usize, digest, nfiles, _ in results:
                m.shards.append(Shard(off, csize, usize, nfiles, digest))
                off += csize
            m.shards.append(Shard(off, len(tail), len(TAR_END), 0,
                                  hashlib.sha256(tail).hexdigest()))
            off += len(tail)
            if sink.pos != room + off:  # the sizes add up to what was written
                raise PmbError(f"writing {out_path}: {sink.pos - room} payload bytes "
                               f"written, the shards say {off} (a bug)")
            m.payload_size = off
            m.unpacked_size = sum(r[4] for r in results)
            m.files = sum(r[3] for r in results)
            m.content_hash = content_hash([s.sha256 for s in m.shards])
            if callable(prefix_files):
                m.prefix_files = prefix_files()
            split_paths = {p.path for p in m.parts}
            for p in m.prefix_files:
                if p.path in split_paths:  # splittable() keeps them whole
                    raise PmbError(f"{p.path}: a prefix file split across shards (a bug)")
            head = encode_manifest_frame(m, room)
            if len(head) > room:
                log.info("%s: the manifest outgrew its room by %d bytes; moving the payload "
                         "up", out_path, len(head) - room)
                _shift(out.fileno(), room, room + off, len(head) - room)
            _pwrite_all(out.fileno(), head, 0)
            os.ftruncate(out.fileno(), len(head) + off)
            os.fsync(out.fileno())
        if reuse:
            reuse.note(m, [r for _, r in done], [r[4] for r in results])
            if reuse.previous is not None:
                reuse.previous.check_unchanged()
            # the package's identity in place, for the sidecar (its rename changes
            # its ctime): held open, so it is the file renamed, whatever comes after
            keep = os.open(final_tmp, os.O_RDONLY | os.O_CLOEXEC)
        os.chmod(final_tmp, 0o644)
        if before_rename is not None:
            before_rename(m)
        if replace:
            os.replace(final_tmp, out_path)
        else:
            try:
                _rename_noreplace(final_tmp, out_path)
            except FileExistsError:
                raise Exists(f"{out_path} appeared while this package was being written "
                             f"(another command wrote it meanwhile); nothing was replaced"
                             ) from None
        leftovers.release(final_tmp)
        final_tmp = None
        if keep is not None:
            try:
                side_tmp = reuse.sidecar_tmp(m, keys, [r[4] for r in results], out_dir,
                                             file_identity(keep))
            except OSError as e:  # the package is written all the same
                log.info("%s: not written (%s); the next pack of %s cannot reuse its shards",
                         sidecar_of(out_path), e.strerror or e, out_path)
        side = sidecar_of(out_path)
        if side_tmp and os.path.lexists(side) and not is_sidecar(side):
            log.info("%s: not written (a file of that name is there, not a shard index); "
                     "the next pack of %s cannot reuse its shards", side, out_path)
        elif side_tmp:  # beside the package once it is in place (none: no reuse, no harm)
            try:
                os.replace(side_tmp, side)
                leftovers.release(side_tmp)
                side_tmp = None
            except OSError as e:  # the package is written all the same
                log.info("%s: not written (%s); the next pack of %s cannot reuse its shards",
                         side, e.strerror or e, out_path)
        else:
            remove_sidecar(out_path)  # a replaced package's: it names frames no longer there
        return m
    except OSError as e:
        raise os_error(e, f"writing {out_path}",
                       f"free space in {out_dir} or choose another -o directory") from None
    finally:
        if keep is not None:
            os.close(keep)
        if final_tmp:
            leftovers.remove(final_tmp)
        if side_tmp:
            leftovers.remove(side_tmp)


def _version() -> str:
    from .. import __version__
    return __version__


# ---------------------------------------------------------------------------
# reading: the launcher's unpacker, without MPI

def iter_frames(path: str):
    """Yield ``(manifest, shard_index, compressed_bytes)`` for each frame
    (for ``verify``'s SHA-256 checks; unpacking goes through the launcher)."""
    m, start = read_manifest(path)
    size = os.path.getsize(path)
    if start + m.payload_size != size:
        raise PmbError(f"{path}: truncated or padded package (expected "
                       f"{start + m.payload_size} bytes, file has {size})")
    with open(path, "rb") as f:
        for i, s in enumerate(m.shards):
            f.seek(start + s.offset)
            data = f.read(s.csize)
            if len(data) != s.csize:
                raise PmbError(f"{path}: truncated package (shard {i})")
            yield m, i, data


_PREFIX = re.compile(r"^python-mpi: (rank \d+: )?")


def _die_with_parent() -> None:
    """In the unpacker child: end when the command that started it is
    killed, so its half-written tree can be removed by the next run."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _guard(packages: list[str]) -> float:
    """A time limit for the unpacker (a guard only: its loops are bounded by
    the package)."""
    return 300 + sum(os.path.getsize(p) for p in packages if os.path.isfile(p)) / 2e6


def _failure(exe: str, returncode: int, stderr: bytes) -> PmbError:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return PmbError(_PREFIX.sub("", lines[-1]) if lines
                    else f"{exe} --pmb-unpack failed ({returncode})")


def unpack_packages(packages: list[str], dest: str, final_dest: str | None = None,
                    timeout: float | None = None, verify: bool = False) -> None:
    """Unpack ``packages`` in order into the existing directory ``dest`` with
    the launcher's unpacker (``python-mpi --pmb-unpack``), patching
    prefix-bearing files for ``final_dest`` (default ``dest``).  ``verify``:
    a shard that fails its SHA-256 is reported so, in verify's words, before
    any failure found inside it (``--pmb-unpack --verify``)."""
    from ..support.paths import launcher_path
    exe = launcher_path()
    timeout = _guard(packages) if timeout is None else timeout
    cmd = ([exe, "--pmb-unpack"] + (["--verify"] if verify else [])
           + [dest, os.path.abspath(final_dest or dest)] + list(packages))
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                           preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise PmbError(f"unpacking {' '.join(packages)} did not finish within {timeout:.0f} s") from None
    except OSError as e:
        raise PmbError(f"cannot run {exe}: {e.strerror or e}") from None
    if r.returncode != 0:
        raise _failure(exe, r.returncode, r.stderr)


class Check:
    """``python-mpi --pmb-unpack --check PKG...`` running beside the caller:
    every check unpacking makes, in verify's order (a shard's SHA-256
    first), creating nothing.  ``failed()`` says, without waiting, that it
    has refused; ``result()`` waits and raises its one line; ``close()``
    ends it if it still runs."""

    def __init__(self, packages: list[str]):
        from ..support.paths import launcher_path
        self.exe = launcher_path()
        self.packages = list(packages)
        self.timeout = _guard(self.packages)
        try:
            self.proc = subprocess.Popen([self.exe, "--pmb-unpack", "--check"] + self.packages,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        except OSError as e:
            raise PmbError(f"cannot run {self.exe}: {e.strerror or e}") from None

    def failed(self) -> bool:
        return self.proc.poll() not in (None, 0)

    def result(self) -> None:
        try:
            _, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise PmbError(f"checking {' '.join(self.packages)} did not finish within "
                           f"{self.timeout:.0f} s") from None
        if self.proc.returncode != 0:
            raise _failure(self.exe, self.proc.returncode, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
