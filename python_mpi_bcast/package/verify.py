"""``inspect`` (show a manifest) and ``verify`` (everything the readers
check, plus every shard's SHA-256 and the content hash, plus a scan of the
content for leftover source paths)."""

from __future__ import annotations

import dataclasses
import os

import zstandard

from .archive import Check
from ..support.errors import PmbError
from .format import Manifest, read_manifest
from .prefixes import has_prefix
from .scan import scan_chunks, scan_tree

CHUNK = 1 << 20  # what verify reads of the decoded stream at a time
MAX_PAX = 1 << 20  # the largest pax header the unpacker reads (PMB_MAX_PAX in unpack.c)


def inspect(path: str) -> Manifest:
    return read_manifest(path)[0]


@dataclasses.dataclass(frozen=True)
class Verified:
    """What ``verify`` found in a package whose hashes check out."""
    files: int
    unpacked_size: int
    leftovers: list[str]    # files (or links) that still name a forbidden path
    compiled_in: list[str]  # binaries that keep one as a compiled-in fallback
    manifest: Manifest


def verify(path: str, forbidden: list[str] | None = None, into: str | None = None) -> Verified:
    """Everything unpacking checks, by the launcher's unpacker (every frame's
    SHA-256, reported first when a shard fails it; the content hash; tar
    headers, paths, sizes, files, totals, prefix lines), and a report of
    files that still contain any of ``forbidden`` (old locations) and are
    not listed as prefix-bearing.  Binary files that keep such a path (a
    compiled-in fallback, left alone on purpose) are listed apart as
    ``compiled_in``.

    Without ``into`` nothing is written: the unpacker checks without
    creating anything (``--pmb-unpack --check``) while this process decodes
    the same frames and scans each member as it goes.  With ``into`` (a
    directory that does not exist yet) the package is unpacked there, kept
    as ``unpack`` would make it, and that tree is scanned."""
    if into is not None and os.path.lexists(into):  # before any work
        raise PmbError(f"{into} already exists; give verify --into a directory that does not "
                       f"exist yet")
    forbidden_b = [f.encode() for f in (forbidden or []) if f]
    m, start = read_manifest(path)  # the content hash: the manifest's own check
    size = os.path.getsize(path)
    if start + m.payload_size != size:
        raise PmbError(f"{path}: truncated or padded package (expected "
                       f"{start + m.payload_size} bytes, file has {size})")
    if into is not None:
        from .unpack import RECORD, unpack
        unpack([path], into, room_hint="choose a --into directory with more room", verify=True)
        return _scan(os.path.abspath(into), m, forbidden_b, {RECORD})
    check = Check([path])
    try:
        try:
            found = _scan_stream(path, m, start, forbidden_b, check.failed)
        except (_Refused, zstandard.ZstdError, EOFError, OSError, ValueError) as e:
            found = e
        check.result()  # the unpacker's refusal, if any, is the verdict
        if isinstance(found, BaseException):  # accepted there, unreadable here: never seen
            raise PmbError(f"{path}: corrupt package (its archive cannot be read: {found})")
        return found
    finally:
        check.close()


class _Refused(Exception):
    """The unpacker refused the package: stop scanning, report its line."""


class _Payload:
    """The package's payload (its frames), read no further than its end."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _scan_stream(path: str, m: Manifest, start: int, forbidden_b: list[bytes],
                 refused) -> Verified:
    """:func:`_scan` of the tree the package would unpack to, from its
    members as they are decoded (the last member of a name is the one the
    tree keeps); stops when ``refused()``."""
    listed = {p.path for p in m.prefix_files}
    final: dict[str, tuple[bool, bool, bool, int]] = {}  # is_link, left, binary, size
    with open(path, "rb") as f:
        f.seek(start)
        reader = zstandard.ZstdDecompressor().stream_reader(
            _Payload(f, m.payload_size), read_size=1 << 20, read_across_frames=True)
        tar = _Tar(reader, refused)
        for kind, name, link, size in tar.members():
            if kind == "2":
                target = link.encode("utf-8", "surrogateescape")
                final[name] = (True, has_prefix(target, forbidden_b), False, 0)
            elif kind == "0":
                left = binary = False
                if forbidden_b and name not in listed:
                    found, binary = scan_chunks(tar.data(size), forbidden_b, classify=True)
                    left = found is not None
                final[name] = (False, left, binary, size)
            tar.skip()  # what the scan left of the member's data, and its padding
    return _verdict(((rel,) + final[rel] for rel in sorted(final, key=_walk_order)), m)


def _verdict(entries, m: Manifest) -> Verified:
    """What ``verify`` reports of the tree's files and links, given in walk
    order as (rel, is_link, holds a forbidden path, binary, size)."""
    files = size = 0
    leftovers = []
    compiled_in = []
    for rel, is_link, left, binary, n in entries:
        if is_link:
            if left:
                leftovers.append(rel)
            continue
        files += 1
        size += n
        if left:
            # binaries keep compiled-in paths on purpose (packing/relocatable.py)
            (compiled_in if binary else leftovers).append(rel)
    return Verified(files, size, leftovers, compiled_in, m)


class _Tar:
    """The members of a POSIX tar stream as the unpacker reads them (pax
    ``path``, ``linkpath`` and ``size``, else the ustar fields), without
    its checks: the unpacker running beside it refuses what breaks a rule,
    and then this reading is dropped (a field it cannot read: ValueError)."""

    def __init__(self, reader, refused):
        self.r, self.refused = reader, refused
        self.buf, self.pos = b"", 0
        self.left = 0  # data and padding of the current member not yet read

    def _read(self, n: int) -> bytes:
        """1 to n bytes: what the buffer holds, refilled when empty."""
        if self.pos == len(self.buf):
            if self.refused():
                raise _Refused()
            self.buf, self.pos = self.r.read(CHUNK), 0
            if not self.buf:
                raise EOFError("the archive ends inside a member")
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def _exactly(self, n: int) -> bytes:
        parts = []
        while n:
            b = self._read(n)
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def data(self, size: int):
        """The current member's data in chunks (its padding is left to skip)."""
        while size:
            b = self._read(size)
            size -= len(b)
            self.left -= len(b)
            yield b

    def skip(self) -> None:
        while self.left:
            self.left -= len(self._read(self.left))

    def members(self):
        """(type, name, link target, size) of each member, up to the end blocks."""
        pax: dict[bytes, bytes] = {}
        while True:
            h = self._exactly(512)
            if not h.strip(b"\0"):
                return
            kind = h[156:157].decode("latin-1")
            size = int(pax.get(b"size") or _octal(h[124:136]))
            self.left = size + (-size) % 512
            if kind == "x":
                if not 0 < size <= MAX_PAX:  # the unpacker refuses it: never buffer it
                    raise ValueError(f"pax header of {size} bytes")
                pax = _pax(self._exactly(self.left)[:size])
                self.left = 0
                continue
            name = pax.get(b"path")
            if name is None:
                name, prefix = _field(h[0:100]), _field(h[345:500])
                name = prefix + b"/" + name if prefix else name
            if kind == "5" and len(name) > 1 and name.endswith(b"/"):
                name = name[:-1]
            link = pax.get(b"linkpath")
            link = _field(h[157:257]) if link is None else link
            pax = {}
            yield (kind, name.decode("utf-8", "surrogateescape"),
                   link.decode("utf-8", "surrogateescape"), size if kind == "0" else 0)


def _field(b: bytes) -> bytes:
    n = b.find(b"\0")
    return b if n < 0 else b[:n]


def _octal(b: bytes) -> int:
    return int(b.strip(b" \0") or b"0", 8)


def _pax(data: bytes) -> dict[bytes, bytes]:
    """pax records "LEN key=value\n" (the unpacker checks them strictly)."""
    out, i = {}, 0
    while i < len(data):
        sp = data.index(b" ", i)
        n = int(data[i:sp])
        if n <= sp - i:
            raise ValueError("bad pax record")
        key, _, value = data[sp + 1:i + n - 1].partition(b"=")
        out[key] = value
        i += n
    return out


def _walk_order(rel: str) -> tuple:
    """Where ``rel`` comes in a walk of the tree (scan_tree's: a directory's
    files and links by name, then its subdirectories by name)."""
    parts = rel.split("/")
    return tuple((1, p) for p in parts[:-1]) + ((0, parts[-1]),)


def _scan(tree: str, m: Manifest, forbidden_b: list[bytes], ours: set[str]) -> Verified:
    """What ``verify`` reports of the unpacked ``tree`` (``ours``: files
    the unpack itself added at the top, not counted)."""
    listed = {p.path for p in m.prefix_files}
    return _verdict(((rel, is_link, left, binary, 0 if is_link else os.path.getsize(full))
                     for rel, full, is_link, left, binary
                     in scan_tree(tree, forbidden_b, listed | ours, classify=True)
                     if rel not in ours), m)
