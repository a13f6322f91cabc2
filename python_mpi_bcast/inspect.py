"""``inspect`` (show a manifest) and ``verify`` (check hashes, scan the
unpacked content for leftover source paths)."""

from __future__ import annotations

import io
import tarfile

import zstandard

from .archive import iter_frames
from .errors import PmbError
from .pkgformat import Manifest, read_manifest


def inspect(path: str) -> Manifest:
    return read_manifest(path)[0]


def verify(path: str, forbidden: list[str] | None = None) -> dict:
    """Check every shard's hash and the content hash; decompress everything
    and report files that still contain any of ``forbidden`` (byte strings of
    old locations) and are not listed as prefix-bearing.  Binary files that
    keep such a path (a compiled-in fallback, left alone on purpose) are
    listed apart as ``compiled_in``."""
    forbidden_b = [f.encode() for f in (forbidden or []) if f]
    dctx = zstandard.ZstdDecompressor()
    files = 0
    size = 0
    leftovers = []
    compiled_in = []
    m = None
    for m, i, data in iter_frames(path, verify=True):
        try:
            raw = dctx.decompress(data, max_output_size=m.shards[i].usize or 1)
        except zstandard.ZstdError as e:
            raise PmbError(f"{path}: corrupt package (shard {i}: {e})") from None
        if len(raw) != m.shards[i].usize:
            raise PmbError(f"{path}: corrupt package (shard {i} unpacks to {len(raw)} bytes, "
                           f"manifest says {m.shards[i].usize})")
        listed = {p.path for p in m.prefix_files}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for ti in tf:
                if ti.isreg():
                    files += 1
                    size += ti.size
                    if forbidden_b and ti.name not in listed:
                        content = tf.extractfile(ti).read()
                        if any(f in content for f in forbidden_b):
                            # binaries keep compiled-in paths on purpose (fixup.py)
                            (compiled_in if b"\0" in content else leftovers).append(ti.name)
                elif ti.issym() and any(f in ti.linkname.encode() for f in forbidden_b):
                    leftovers.append(ti.name)
    assert m is not None
    if files != m.files or size != m.unpacked_size:
        raise PmbError(f"{path}: manifest says {m.files} files / {m.unpacked_size} bytes, "
                       f"content has {files} / {size}")
    return {"files": files, "unpacked_size": size, "leftovers": leftovers,
            "compiled_in": compiled_in, "manifest": m}
