"""Write a staging tree as a sharded ``NAME.tar.zst`` package, and read one
back (the reference unpacker the C launcher is tested against)."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import io
import os
import stat
import tarfile
import tempfile

import zstandard

from . import relocate
from .errors import PmbError
from .pkgformat import Manifest, PrefixFile, Shard, content_hash, encode_manifest_frame, read_manifest

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
        ti.linkname = os.readlink(full)
        return ti, 0
    if stat.S_ISDIR(s.st_mode):
        ti.type = tarfile.DIRTYPE
        return ti, 0
    ti.type = tarfile.REGTYPE
    ti.size = s.st_size
    return ti, s.st_size


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


def _write_shard(root: str, entries, out_path: str, level: int, progress) -> tuple[int, int, str]:
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    h = hashlib.sha256()
    usize = 0

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
                hdr = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                zw.write(hdr)
                usize += len(hdr)
                if ti.type == tarfile.REGTYPE:
                    with open(os.path.join(root, rel), "rb") as f:
                        left = size
                        while left:
                            buf = f.read(min(COPY_CHUNK, left))
                            if not buf:
                                raise PmbError(f"{rel}: file shrank while packing")
                            zw.write(buf)
                            left -= len(buf)
                            if progress:
                                progress.advance(len(buf))
                    pad = (-size) % 512
                    zw.write(b"\0" * pad)
                    usize += size + pad
        csize = hw.n
    return csize, usize, h.hexdigest()


def write_package(st, prefix_files: list[PrefixFile], out_path: str, level: int = 10,
                  threads: int = 0, shard_size: int = 8 << 20, progress=None) -> Manifest:
    """Write the staging tree ``st.root`` to ``out_path`` atomically."""
    entries = list_tree(st.root)
    shards = partition(entries, shard_size)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    threads = threads or os.cpu_count() or 1
    if progress:
        progress.start(sum(size for _, _, size in entries))
    tmpdir = tempfile.mkdtemp(prefix=".pmb-shards-", dir=out_dir)
    final_tmp = None
    try:
        paths = [os.path.join(tmpdir, f"{i:05d}.zst") for i in range(len(shards))]
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            futs = [pool.submit(_write_shard, st.root, ents, p, level, progress)
                    for ents, p in zip(shards, paths)]
            results = [f.result() for f in futs]
        tail = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(TAR_END)
        m = Manifest(name=st.name, kind=st.kind, python=st.info["version"],
                     abi=st.info["soabi"], platform=st.info["platform"],
                     libpython=st.libpython, executable=st.executable, site_dir=st.site_dir,
                     created_by=f"python-mpi-bcast {_version()}",
                     sources=":".join(st.scrub))
        off = 0
        for ents, (csize, usize, digest) in zip(shards, results):
            nfiles = sum(1 for e in ents if e[1].type == tarfile.REGTYPE)
            m.shards.append(Shard(off, csize, usize, nfiles, digest))
            off += csize
        m.shards.append(Shard(off, len(tail), len(TAR_END), 0, hashlib.sha256(tail).hexdigest()))
        off += len(tail)
        m.payload_size = off
        m.unpacked_size = sum(size for _, _, size in entries)
        m.files = sum(1 for e in entries if e[1].type == tarfile.REGTYPE)
        m.content_hash = content_hash([s.sha256 for s in m.shards])
        m.prefix_files = prefix_files
        fd, final_tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out_path)}.", suffix=".part",
                                         dir=out_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(encode_manifest_frame(m))
            for p in paths:
                with open(p, "rb") as f:
                    while True:
                        buf = f.read(16 << 20)
                        if not buf:
                            break
                        out.write(buf)
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(final_tmp, 0o644)
        os.replace(final_tmp, out_path)
        final_tmp = None
        return m
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise PmbError(f"no space left on device while writing {out_path}; free space "
                           f"in {out_dir} or choose another -o directory") from None
        raise PmbError(f"writing {out_path}: {e.strerror or e}") from None
    finally:
        if final_tmp and os.path.exists(final_tmp):
            os.unlink(final_tmp)
        for p in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, p))
        os.rmdir(tmpdir)


def _version() -> str:
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------
# reading

def iter_frames(path: str, verify: bool = True):
    """Yield ``(manifest, shard_index, compressed_bytes)`` for each frame."""
    m, start = read_manifest(path)
    size = os.path.getsize(path)
    if start + m.payload_size != size:
        raise PmbError(f"{path}: truncated or padded package (expected "
                       f"{start + m.payload_size} bytes, file has {size})")
    if verify and content_hash([s.sha256 for s in m.shards]) != m.content_hash:
        raise PmbError(f"{path}: corrupt package (shard table does not match content hash)")
    with open(path, "rb") as f:
        for i, s in enumerate(m.shards):
            f.seek(start + s.offset)
            data = f.read(s.csize)
            if len(data) != s.csize:
                raise PmbError(f"{path}: truncated package (shard {i})")
            if verify and hashlib.sha256(data).hexdigest() != s.sha256:
                raise PmbError(f"{path}: corrupt package (shard {i} fails its SHA-256 check)")
            yield m, i, data


def safe_member_name(name: str) -> bool:
    if not name or name.startswith("/") or "\0" in name:
        return False
    return ".." not in name.split("/")


def unpack_package(path: str, dest: str, final_dest: str | None = None) -> Manifest:
    """Unpack one package into ``dest`` (which must exist) and patch its
    prefix-bearing files for ``final_dest`` (default ``dest``), the directory
    the tree will finally live in."""
    dctx = zstandard.ZstdDecompressor()
    m = None
    for m, i, data in iter_frames(path):
        try:
            raw = dctx.decompress(data, max_output_size=m.shards[i].usize or 1)
        except zstandard.ZstdError as e:
            raise PmbError(f"{path}: corrupt package (shard {i}: {e})") from None
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8",
                          errors="surrogateescape") as tf:
            for ti in tf:
                _extract_member(tf, ti, dest, path)
    assert m is not None
    patch_prefixes(m, dest, final_dest or dest)
    return m


def _extract_member(tf: tarfile.TarFile, ti: tarfile.TarInfo, dest: str, pkg: str) -> None:
    name = ti.name.rstrip("/")
    if not safe_member_name(name):
        raise PmbError(f"{pkg}: refusing archive member {ti.name!r} (absolute path or '..')")
    target = os.path.join(dest, name)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if ti.isdir():
        os.makedirs(target, exist_ok=True)
        os.chmod(target, ti.mode | 0o700)
        return
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)
    if ti.issym():
        link = ti.linkname
        norm = os.path.normpath(os.path.join(os.path.dirname(name), link))
        if os.path.isabs(link) or norm == ".." or norm.startswith("../"):
            raise PmbError(f"{pkg}: refusing symlink {name} -> {link} (points outside the tree)")
        os.symlink(link, target)
        return
    if not ti.isreg():
        raise PmbError(f"{pkg}: refusing archive member {name!r} of unsupported type")
    src = tf.extractfile(ti)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while True:
            buf = src.read(COPY_CHUNK)
            if not buf:
                break
            out.write(buf)
    os.chmod(target, ti.mode)
    os.utime(target, (ti.mtime, ti.mtime))


def patch_prefixes(m: Manifest, dest: str, final_dest: str) -> None:
    new = os.path.abspath(final_dest).encode()
    for p in m.prefix_files:
        full = os.path.join(dest, p.path)
        try:
            with open(full, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # overwritten/removed by a later layer
        old = p.placeholder.encode()
        if p.mode == "text":
            data = relocate.replace_text_prefix(data, old, new)
        elif len(new) <= len(old):
            data = relocate.replace_binary_prefix(data, old, new)
        else:
            raise PmbError(f"{p.path} can hold a path of at most {len(old)} bytes (its "
                           f"recorded placeholder), but {final_dest} has {len(new)}; "
                           f"unpack into a directory whose path is at most {len(old)} "
                           f"bytes long")
        st = os.stat(full)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, stat.S_IMODE(st.st_mode))
