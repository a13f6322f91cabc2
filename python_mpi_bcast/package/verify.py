"""``inspect`` (show a manifest) and ``verify`` (everything the readers
check, plus every shard's SHA-256 and the content hash, plus a scan of the
unpacked content for leftover source paths)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from .archive import iter_frames, unpack_packages
from ..support.errors import PmbError
from .format import Manifest, content_hash, read_manifest
from .prefixes import has_prefix, prefix_regex


def inspect(path: str) -> Manifest:
    return read_manifest(path)[0]


def verify(path: str, forbidden: list[str] | None = None) -> dict:
    """Check the SHA-256 of every shard and the content hash, unpack with the
    launcher's unpacker into a temporary directory (so verify refuses at
    least what the readers refuse), and report files that still contain any
    of ``forbidden`` (old locations) and are not listed as prefix-bearing.
    Binary files that keep such a path (a compiled-in fallback, left alone on
    purpose) are listed apart as ``compiled_in``."""
    forbidden_b = [f.encode() for f in (forbidden or []) if f]
    m = None
    for m, i, data in iter_frames(path):
        if hashlib.sha256(data).hexdigest() != m.shards[i].sha256:
            raise PmbError(f"{path}: corrupt package (shard {i} fails its SHA-256 check)")
    assert m is not None
    if content_hash([s.sha256 for s in m.shards]) != m.content_hash:
        raise PmbError(f"{path}: corrupt package (shard table does not match the content hash)")
    tmp = tempfile.mkdtemp(prefix="pmb-verify-")
    try:
        tree = os.path.join(tmp, "tree")
        os.mkdir(tree, 0o700)
        unpack_packages([path], tree)
        listed = {p.path for p in m.prefix_files}
        files = size = 0
        leftovers = []
        compiled_in = []
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in sorted(filenames + [d for d in dirnames
                                            if os.path.islink(os.path.join(dirpath, d))]):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, tree)
                if os.path.islink(full):
                    if has_prefix(os.readlink(full).encode(), forbidden_b):
                        leftovers.append(rel)
                    continue
                files += 1
                size += os.path.getsize(full)
                if forbidden_b and rel not in listed:
                    found, binary = _scan(full, forbidden_b)
                    if found:
                        # binaries keep compiled-in paths on purpose (fixup.py)
                        (compiled_in if binary else leftovers).append(rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"files": files, "unpacked_size": size, "leftovers": leftovers,
            "compiled_in": compiled_in, "manifest": m}


def _scan(path: str, needles: list[bytes], chunk: int = 16 << 20) -> tuple[bool, bool]:
    """Whether the file holds any of ``needles`` as a whole path prefix
    (relocate.PATH_END: a longer sibling name is no leftover), and whether
    it is binary (holds a NUL byte)."""
    mid, last = prefix_regex(needles, at_end=False), prefix_regex(needles)
    keep = max(len(n) for n in needles)
    tail = b""
    found = binary = False
    with open(path, "rb") as f:
        buf = f.read(chunk)
        while True:
            nxt = f.read(chunk)
            binary = binary or b"\0" in buf
            data = tail + buf
            found = found or (any(n in data for n in needles)
                              and (mid if nxt else last).search(data) is not None)
            if (found and binary) or not nxt:
                return found, binary
            tail, buf = data[-keep:], nxt
