"""Write a staging tree as a sharded ``NAME.tar.zst`` package, and read
packages back through the launcher's own unpacker (``python-mpi
--pmb-unpack``): one implementation of the reading rules for every command."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile

import zstandard

from ..support import leftovers
from ..support.errors import PmbError, os_error
from .format import (Manifest, Shard, content_hash, encode_manifest_frame,
                        link_problem, read_manifest)

TAR_END = b"\0" * 1024
COPY_CHUNK = 1 << 20


def _tarinfo(root: str, rel: str) -> tuple[tarfile.TarInfo, int]:
    full = os.path.join(root, rel)
    s = os.lstat(full)
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


def partition(entries, shard_size: int) -> list[list]:
    """Cut the sorted entry list into contiguous shards of roughly equal
    unpacked size (whole files only; a file larger than a shard gets its own)."""
    total = sum(512 + ((size + 511) // 512) * 512 for _, _, size in entries)
    nshards = max(1, min(1024, -(-total // max(shard_size, 1))))
    target = total / nshards
    shards, cur, acc = [], [], 0
    for e in entries:
        cur.append(e)
        acc += 512 + ((e[2] + 511) // 512) * 512
        if acc >= target * (len(shards) + 1) and len(shards) < nshards - 1:
            shards.append(cur)
            cur = []
    if cur or not shards:
        shards.append(cur)
    return shards


def file_member(root: str, rel: str, ti: tarfile.TarInfo, size: int):
    """The members one listed entry becomes: itself, its bytes read from
    ``root/rel`` in chunks."""
    if ti.type != tarfile.REGTYPE:
        yield ti, ()
        return
    yield ti, read_chunks(os.path.join(root, rel), rel, size)


def read_chunks(path: str, rel: str, size: int):
    """``size`` bytes of ``path`` in chunks; a file that shrank is an error."""
    with open(path, "rb") as f:
        left = size
        while left:
            buf = f.read(min(COPY_CHUNK, left))
            if not buf:
                raise PmbError(f"{rel}: file shrank while packing")
            yield buf
            left -= len(buf)


def _write_shard(root: str, entries, out_path: str, level: int, progress,
                 members=None) -> tuple[int, int, str, int, int]:
    """One shard: (compressed size, tar bytes, SHA-256 of the frame, files,
    file bytes).  ``members(rel, ti, size)`` yields the (TarInfo, chunks)
    an entry becomes (default: :func:`file_member`)."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    h = hashlib.sha256()
    usize = nfiles = fbytes = 0
    members = members or (lambda rel, ti, size: file_member(root, rel, ti, size))

    class _Hashing(io.RawIOBase):
        def __init__(self, f):
            self.f = f
            self.n = 0

        def write(self, b):
            h.update(b)
            self.n += len(b)
            return self.f.write(b)

        def writable(self):
            return True

    with open(out_path, "wb") as raw:
        hw = _Hashing(raw)
        with cctx.stream_writer(hw, closefd=False) as zw:
            for rel, ti, size in entries:
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
        csize = hw.n
    return csize, usize, h.hexdigest(), nfiles, fbytes


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


def write_package(st, prefix_files, out_path: str, level: int = 10,
                  threads: int = 0, shard_size: int = 8 << 20, progress=None,
                  replace: bool = True, before_rename=None, entries=None,
                  members=None) -> Manifest:
    """Write the staging tree ``st.root`` to ``out_path`` atomically.
    ``replace=False``: fail with :class:`Exists` if ``out_path`` exists when
    the package is renamed into place (two writers of one name: one wins).
    ``before_rename(manifest)`` runs when the package is complete, just
    before it appears under its name.

    ``entries`` (default :func:`list_tree`) and ``members(shard, rel, ti,
    size)`` (default: the entry itself, read from the tree) let a caller
    produce members on the way (stream.py: relocated, compiled);
    ``prefix_files`` may then be a function called once every shard is
    written.  Extra disk: the compressed shards, each appended to the
    package file and removed in turn."""
    entries = list_tree(st.root) if entries is None else entries
    shards = partition(entries, shard_size)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    threads = threads or os.cpu_count() or 1
    if progress:
        progress.start(sum(size for _, _, size in entries),
                       sum(1 for e in entries if e[1].type == tarfile.REGTYPE))
    tmpdir = leftovers.mkdtemp(prefix=".pmb-shards-", dir=out_dir)
    final_tmp = None
    try:
        paths = [os.path.join(tmpdir, f"{i:05d}.zst") for i in range(len(shards))]
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            futs = [pool.submit(_write_shard, st.root, ents, p, level, progress,
                                (lambda rel, ti, size, i=i: members(i, rel, ti, size))
                                if members else None)
                    for i, (ents, p) in enumerate(zip(shards, paths))]
            results = [f.result() for f in futs]
        tail = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(TAR_END)
        m = Manifest(name=st.name, kind=st.kind, python=st.info.version,
                     abi=st.info.soabi, platform=st.info.platform,
                     libpython=st.libpython, executable=st.executable, site_dir=st.site_dir,
                     created_by=f"python-mpi-bcast {_version()}",
                     sources=":".join(st.scrub))
        off = 0
        for csize, usize, digest, nfiles, _ in results:
            m.shards.append(Shard(off, csize, usize, nfiles, digest))
            off += csize
        m.shards.append(Shard(off, len(tail), len(TAR_END), 0, hashlib.sha256(tail).hexdigest()))
        off += len(tail)
        m.payload_size = off
        m.unpacked_size = sum(r[4] for r in results)
        m.files = sum(r[3] for r in results)
        m.content_hash = content_hash([s.sha256 for s in m.shards])
        m.prefix_files = prefix_files() if callable(prefix_files) else prefix_files
        fd, final_tmp = leftovers.mkstemp(prefix=f".{os.path.basename(out_path)}.",
                                          suffix=".part", dir=out_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(encode_manifest_frame(m))
            for p in paths:  # each shard goes once appended: the package's size at most
                with open(p, "rb") as f:
                    while True:
                        buf = f.read(16 << 20)
                        if not buf:
                            break
                        out.write(buf)
                os.unlink(p)
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
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
        return m
    except OSError as e:
        raise os_error(e, f"writing {out_path}",
                       f"free space in {out_dir} or choose another -o directory") from None
    finally:
        if final_tmp:
            leftovers.remove(final_tmp)
        leftovers.remove(tmpdir)


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


def unpack_packages(packages: list[str], dest: str, final_dest: str | None = None,
                    timeout: float | None = None) -> None:
    """Unpack ``packages`` in order into the existing directory ``dest`` with
    the launcher's unpacker (``python-mpi --pmb-unpack``), patching
    prefix-bearing files for ``final_dest`` (default ``dest``)."""
    from ..support.paths import launcher_path
    exe = launcher_path()
    if timeout is None:  # a guard only: the unpacker's loops are bounded by the package
        total = sum(os.path.getsize(p) for p in packages if os.path.isfile(p))
        timeout = 300 + total / 2e6
    cmd = [exe, "--pmb-unpack", dest, os.path.abspath(final_dest or dest)] + list(packages)
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                           preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise PmbError(f"unpacking {' '.join(packages)} did not finish within {timeout:.0f} s") from None
    except OSError as e:
        raise PmbError(f"cannot run {exe}: {e.strerror or e}") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        msg = _PREFIX.sub("", lines[-1]) if lines else f"{exe} --pmb-unpack failed ({r.returncode})"
        raise PmbError(msg)
