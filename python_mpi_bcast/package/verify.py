"""``inspect`` (show a manifest) and ``verify`` (everything the readers
check, plus every shard's SHA-256 and the content hash, plus a scan of the
unpacked content for leftover source paths)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile

from .archive import iter_frames, unpack_packages
from ..support.errors import PmbError
from .format import Manifest, content_hash, read_manifest
from .scan import scan_tree


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
    """Check the SHA-256 of every shard and the content hash, unpack with the
    launcher's unpacker (which checks every frame's SHA-256 again, and
    everything else the readers check, so verify refuses at least what the
    readers refuse) into a temporary directory, or into ``into`` (a
    directory that does not exist yet, kept as ``unpack`` would make it), and
    report files that still contain any of ``forbidden`` (old locations) and
    are not listed as prefix-bearing.  Binary files that keep such a path (a
    compiled-in fallback, left alone on purpose) are listed apart as
    ``compiled_in``."""
    if into is not None and os.path.lexists(into):  # before any work
        raise PmbError(f"{into} already exists; give verify --into a directory that does not "
                       f"exist yet")
    forbidden_b = [f.encode() for f in (forbidden or []) if f]
    m = None
    for m, i, data in iter_frames(path):
        if hashlib.sha256(data).hexdigest() != m.shards[i].sha256:
            raise PmbError(f"{path}: corrupt package (shard {i} fails its SHA-256 check)")
    assert m is not None
    if content_hash([s.sha256 for s in m.shards]) != m.content_hash:
        raise PmbError(f"{path}: corrupt package (shard table does not match the content hash)")
    if into is not None:
        from .unpack import RECORD, unpack
        unpack([path], into, room_hint="choose a --into directory with more room")
        return _scan(os.path.abspath(into), m, forbidden_b, {RECORD})
    tmp = tempfile.mkdtemp(prefix="pmb-verify-")
    try:
        tree = os.path.join(tmp, "tree")
        os.mkdir(tree, 0o700)
        unpack_packages([path], tree)
        return _scan(tree, m, forbidden_b, set())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _scan(tree: str, m: Manifest, forbidden_b: list[bytes], ours: set[str]) -> Verified:
    """What ``verify`` reports of the unpacked ``tree`` (``ours``: files
    the unpack itself added at the top, not counted)."""
    listed = {p.path for p in m.prefix_files}
    files = size = 0
    leftovers = []
    compiled_in = []
    for rel, full, is_link, left, binary in scan_tree(tree, forbidden_b, listed | ours,
                                                      classify=True):
        if rel in ours:
            continue
        if is_link:
            if left:
                leftovers.append(rel)
            continue
        files += 1
        size += os.path.getsize(full)
        if left:
            # binaries keep compiled-in paths on purpose (packing/relocatable.py)
            (compiled_in if binary else leftovers).append(rel)
    return Verified(files, size, leftovers, compiled_in, m)
