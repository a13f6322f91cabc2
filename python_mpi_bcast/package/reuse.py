"""Re-pack only what changed: the shard index kept beside a package.

A package's manifest is read by the C launcher too (which refuses unknown
keys), so what a later pack needs to reuse frames lives in a sidecar,
``NAME.tar.zst.shards`` (JSON): for each shard its key (SHA-256 over every
input that decides the frame's bytes; ``null`` when one was unknown), the
frame's place, sizes and SHA-256 as the manifest has them, and the
prefix-bearing files it holds (plus what the packer noted about it).

Trust: a sidecar is used only when it checks out against its package (its
own checksum; the package's content hash; every shard's offset, sizes and
SHA-256; the sum of its file counts and bytes; its prefix files, in order,
equal to the manifest's).  The sidecar also records the package file's
identity once it was in place (device, inode, size, mtime and ctime —
ctime changes with any write and cannot be put back): while the file still
has it, nothing has written to it since its frames were hashed, and frames
are copied as they are, by the kernel (``copy_file_range``: no read into
this process, no hash; on a copy-on-write file system no bytes moved).
Otherwise (a copied, moved or touched package) a frame is copied only when
the bytes read have the SHA-256 the manifest names.  Anything else means
packing that shard (or everything) again, never a frame under the wrong
key.  The package is read through one descriptor opened at the start, so
removing it meanwhile (prune, ``rm``) changes nothing; writing to it
meanwhile fails the pack (:meth:`Previous.check_unchanged`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from ..support import leftovers
from .format import FORMAT_VERSION, PrefixFile, read_manifest

log = logging.getLogger("python_mpi_bcast")

SIDECAR_SUFFIX = ".shards"
SIDECAR_VERSION = 2
_MAGIC = "python-mpi-bcast-shards"


def sidecar_of(package: str) -> str:
    return package + SIDECAR_SUFFIX


def remove_sidecar(package: str) -> None:
    """The sidecar goes with its package (prune, ``rm``, a package replaced
    by one without); a file of that name that is no sidecar stays."""
    if is_sidecar(sidecar_of(package)):
        try:
            os.unlink(sidecar_of(package))
        except FileNotFoundError:
            pass


def is_sidecar(path: str) -> bool:
    """Whether ``path`` is a shard index this tool wrote (a user's file of
    that name is never replaced or removed)."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return False
        with open(path, encoding="utf-8") as f:
            return json.load(f)["body"]["format"] == _MAGIC
    except (OSError, ValueError, KeyError, TypeError):
        return False


_PACKER = None


def packer_identity() -> str:
    """What decides how this packer turns inputs into frames: its version,
    the format version, the zstandard module's version and the source of
    the package and packing layers (a changed packer never reuses frames
    of an older one, even at the same version number)."""
    global _PACKER
    if _PACKER is None:
        import zstandard
        from .. import __version__
        h = hashlib.sha256(f"{__version__}\0{FORMAT_VERSION}\0{zstandard.__version__}\0".encode())
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for layer in ("package", "packing"):
            d = os.path.join(top, layer)
            for fn in sorted(os.listdir(d)):
                if fn.endswith(".py"):
                    with open(os.path.join(d, fn), "rb") as f:
                        h.update(fn.encode() + b"\0" + hashlib.sha256(f.read()).digest())
        _PACKER = h.hexdigest()
    return _PACKER


def frame_key(level: int, inputs: str | None) -> str | None:
    """The key of one frame: the packer, the zstd level and the caller's
    digest of the members' inputs (None: unknown, never reused)."""
    if inputs is None:
        return None
    return hashlib.sha256(f"{packer_identity()}\0zstd {level}\0{inputs}".encode()).hexdigest()


class Frame:
    __slots__ = ("index", "offset", "csize", "usize", "nfiles", "fbytes", "sha256",
                 "prefix_files", "extra")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def stat_identity(s: os.stat_result) -> list:
    """What changes whenever a file is written to, renamed or replaced
    (ctime: even when its mtime is put back)."""
    return [s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]


def file_identity(fd: int) -> list:
    return stat_identity(os.fstat(fd))


def sidecar_text(m, keys: list, fbytes: list, prefix_files: list, extras: list,
                 package: list) -> str:
    """The sidecar of the package whose manifest is ``m`` (tail frame left
    out); ``package``: the package file's :func:`file_identity` in place."""
    shards = []
    for i, s in enumerate(m.shards[:-1]):
        shards.append({"key": keys[i], "offset": s.offset, "csize": s.csize, "usize": s.usize,
                       "nfiles": s.nfiles, "fbytes": fbytes[i], "sha256": s.sha256,
                       "prefix_files": [[p.mode, p.path, p.placeholder] for p in prefix_files[i]],
                       "extra": extras[i]})
    body = {"format": _MAGIC, "version": SIDECAR_VERSION, "content_hash": m.content_hash,
            "package": package, "shards": shards}
    return json.dumps({"body": body, "sha256": _checksum(body)}, separators=(",", ":"))


def write_sidecar_tmp(out_dir: str, text: str) -> str:
    """The sidecar in a journaled temporary file of ``out_dir`` (renamed
    beside the package once the package is in place)."""
    fd, tmp = leftovers.mkstemp(prefix=".pmb-index-", suffix=".json", dir=out_dir)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    return tmp


class Previous:
    """A previous package whose frames may be reused, by key."""

    def __init__(self, path: str, fd: int, start: int, frames: dict, identity: list | None):
        self.path, self.fd, self.start, self.frames = path, fd, start, frames
        # the package file's identity when its sidecar was written, if it still
        # has it (its frames are then copied unread), else None
        self.identity = identity

    @classmethod
    def open(cls, path: str) -> "Previous | None":
        """The package ``path`` and its sidecar, checked against each other;
        None (and why, in the log) when they cannot be trusted."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.info("not reusing %s: %s", path, e.strerror or e)
            return None
        try:
            why = None
            frames = {}
            try:
                with open(sidecar_of(path), encoding="utf-8") as f:
                    doc = json.load(f)
                body = doc["body"]
                if body.get("format") != _MAGIC or body.get("version") != SIDECAR_VERSION:
                    why = "its shard index has another format"
                elif doc.get("sha256") != _checksum(body):
                    why = "its shard index is damaged"
            except FileNotFoundError:
                why = "it has no shard index (" + os.path.basename(sidecar_of(path)) + ")"
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                why = "its shard index is unreadable"
            if why is None:
                m, start = _manifest_at(fd, path)
                why = _mismatch(body, m, start, os.fstat(fd).st_size)
            if why is None:
                for i, s in enumerate(body["shards"]):
                    if s["key"]:
                        frames[s["key"]] = Frame(
                            index=i, offset=s["offset"], csize=s["csize"], usize=s["usize"],
                            nfiles=s["nfiles"], fbytes=s["fbytes"], sha256=s["sha256"],
                            prefix_files=[PrefixFile(*p) for p in s["prefix_files"]],
                            extra=s["extra"])
            if why is not None:
                log.info("not reusing %s: %s; packing everything", path, why)
                os.close(fd)
                return None
            now = file_identity(fd)
            same = body.get("package") == now
            log.debug("%s: %s", path, "untouched since its shard index was written: frames are "
                      "copied unread" if same else "written to, moved or copied since its shard "
                      "index was written: frames are read and checked")
            return cls(path, fd, start, frames, now if same else None)
        except BaseException:
            os.close(fd)
            raise

    def copy(self, fr: Frame, out) -> bool:
        """Copy frame ``fr`` into ``out`` (``write(bytes)``, and
        ``hexdigest()``: the SHA-256 of what it was given, which it computes
        anyway for the new manifest; ``copy_range(fd, offset, n, sha256)``:
        those bytes of the file, known to have that SHA-256); False when the
        bytes are not the ones the manifest names (the caller then forgets
        what went to ``out``)."""
        pos, left = self.start + fr.offset, fr.csize
        if self.identity is not None:  # untouched since its frames were hashed
            out.copy_range(self.fd, pos, left, fr.sha256)
            return True
        while left:
            try:  # (an error writing is the new package's: it goes up)
                buf = os.pread(self.fd, min(left, 16 << 20), pos)
            except OSError:
                buf = b""
            if not buf:
                break
            out.write(buf)
            pos += len(buf)
            left -= len(buf)
        if left or out.hexdigest() != fr.sha256:
            log.info("not reusing shard %d of %s: its bytes changed", fr.index, self.path)
            return False
        return True

    def check_unchanged(self) -> None:
        """Frames copied unread came from the bytes that were hashed: the
        package must not have been written to while it was being copied."""
        from ..support.errors import PmbError
        if self.identity is not None and file_identity(self.fd) != self.identity:
            raise PmbError(f"{self.path} was written to while its shards were being reused; "
                           f"pack again")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _manifest_at(fd: int, path: str):
    from ..support.errors import PmbError
    try:
        return read_manifest(f"/proc/self/fd/{fd}")
    except (PmbError, OSError):
        return None, 0


def _mismatch(body: dict, m, start: int, size: int) -> str | None:
    """Why the sidecar ``body`` does not describe the package (None: it does)."""
    if m is None:
        return "it is not a readable package"
    if start + m.payload_size != size:
        return "it is truncated or padded"
    if body.get("content_hash") != m.content_hash:
        return "its shard index belongs to another package"
    shards = body.get("shards")
    if not isinstance(shards, list) or len(shards) != len(m.shards) - 1:
        return "its shard index belongs to another package"
    pfs = []
    fbytes = nfiles = 0
    for s, ms in zip(shards, m.shards):
        if not isinstance(s, dict) or (s.get("offset"), s.get("csize"), s.get("usize"),
                                       s.get("nfiles"), s.get("sha256")) != (
                ms.offset, ms.csize, ms.usize, ms.nfiles, ms.sha256):
            return "its shard index belongs to another package"
        if not isinstance(s.get("fbytes"), int) or not isinstance(s.get("prefix_files"), list):
            return "its shard index is damaged"
        if s.get("key") is not None and not isinstance(s.get("key"), str):
            return "its shard index is damaged"
        if not isinstance(s.get("extra"), dict):
            return "its shard index is damaged"
        fbytes += s["fbytes"]
        nfiles += s["nfiles"]
        for p in s["prefix_files"]:
            if not (isinstance(p, list) and len(p) == 3 and all(isinstance(x, str) for x in p)):
                return "its shard index is damaged"
            pfs.append(tuple(p))
    if fbytes != m.unpacked_size or nfiles != m.files:
        return "its shard index belongs to another package"
    if pfs != [(p.mode, p.path, p.placeholder) for p in m.prefix_files]:
        return "its shard index belongs to another package"
    return None


class Reuse:
    """What :func:`archive.write_package` needs to reuse frames of a
    previous package (``previous``, may be None) and to write the new
    package's sidecar.  The packer gives the three functions:
    ``inputs(entries)`` → a digest of everything that decides those
    entries' members (None: unknown), ``shard_info(i)`` → (prefix files,
    JSON-able notes) of a shard it wrote, ``restore(i, prefix_files,
    notes)`` for a shard copied instead."""

    def __init__(self, previous: Previous | None, inputs, shard_info, restore):
        self.previous = previous
        self.inputs, self.shard_info, self._restore = inputs, shard_info, restore
        self.reused = self.shards = 0
        self.reused_bytes = self.total_bytes = 0

    def key(self, level: int, entries) -> str | None:
        """The key of the frame of ``entries`` (an archive.Plan): of its
        inputs and, when it cuts a split file, of the piece's range (the
        whole file's identity is among the inputs)."""
        inputs = self.inputs(entries)
        head, cut = getattr(entries, "head", 0), getattr(entries, "cut", None)
        if inputs is not None and (head or cut is not None):
            inputs += f" piece {head} {cut}"
        return frame_key(level, inputs)

    def frame(self, key: str | None) -> Frame | None:
        if key is None or self.previous is None:
            return None
        return self.previous.frames.get(key)

    def restore(self, i: int, fr: Frame) -> None:
        self._restore(i, fr.prefix_files, fr.extra)

    def note(self, m, reused: list[bool], fbytes: list[int]) -> None:
        self.shards = len(reused)
        self.reused = sum(reused)
        self.total_bytes = sum(fbytes)
        self.reused_bytes = sum(b for b, r in zip(fbytes, reused) if r)

    def sidecar_tmp(self, m, keys: list, fbytes: list, out_dir: str, package: list) -> str:
        infos = [self.shard_info(i) for i in range(len(keys))]
        return write_sidecar_tmp(out_dir, sidecar_text(m, keys, fbytes, [pf for pf, _ in infos],
                                                       [x for _, x in infos], package))

    def summary(self) -> str:
        """"reused 812 of 815 shards, 2.61 of 2.69 GB" (of the files' bytes)."""
        gb = 1e9 if self.total_bytes >= 1e9 else 1e6
        unit = "GB" if gb == 1e9 else "MB"
        return (f"reused {self.reused} of {self.shards} shards, "
                f"{self.reused_bytes / gb:.2f} of {self.total_bytes / gb:.2f} {unit}")

    def close(self) -> None:
        if self.previous is not None:
            self.previous.close()
