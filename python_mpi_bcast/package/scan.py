"""What a leftover is: the one scanner that ``verify``, ``relocate``,
``migrate`` and the packer use to find a source location still named in a
file or a tree.

A location counts only as a whole path prefix (:data:`prefixes.PATH_END`:
``/x/ana-data`` is no ``/x/ana``).  Large files are read in chunks; a match
at the end of a chunk is decided by the next byte, or by the end of the
file."""

from __future__ import annotations

import os
from typing import Iterator

from .prefixes import has_prefix, prefix_regex


def scan_file(path: str, needles: list[bytes], chunk: int = 16 << 20,
              classify: bool = False) -> tuple[bytes | None, bool]:
    """(the first of ``needles`` the file holds as a whole path prefix, or
    None; whether it is binary, i.e. holds a NUL byte).  Reading stops at
    the first match, unless ``classify`` asks to read on until a NUL byte
    shows (or the file ends), so that the binary flag is exact."""
    if not any(needles):
        return None, False
    with open(path, "rb") as f:
        return scan_chunks(iter(lambda: f.read(chunk), b""), needles, classify)


def scan_chunks(chunks: Iterator[bytes], needles: list[bytes],
                classify: bool = False) -> tuple[bytes | None, bool]:
    """:func:`scan_file` of the content given as non-empty ``chunks`` (a
    file's, or an archive member's as it is decoded: ``verify``); taken one
    ahead of the scan, and no further than :func:`scan_file` reads."""
    needles = [n for n in needles if n]
    if not needles:
        return None, False
    mid, last = prefix_regex(needles, at_end=False), prefix_regex(needles)
    keep = max(len(n) for n in needles)
    tail = b""
    found = None
    binary = False
    buf = next(chunks, b"")
    while True:
        nxt = next(chunks, b"")
        binary = binary or b"\0" in buf
        window = tail + buf
        if found is None and any(n in window for n in needles):
            m = (mid if nxt else last).search(window)
            found = m.group(0) if m else None
        if (found is not None and (binary or not classify)) or not nxt:
            return found, binary
        tail, buf = window[-keep:], nxt


def find_any(path: str, needles: list[bytes], chunk: int = 16 << 20) -> bytes | None:
    """The first of ``needles`` a (large) file holds as a whole path prefix."""
    return scan_file(path, needles, chunk)[0]


def scan_tree(root: str, needles: list[bytes], skip=frozenset(),
              classify: bool = False) -> Iterator[tuple[str, str, bool, bool, bool]]:
    """Every file and symlink under ``root`` (each directory's names in
    order) as (relative path, full path, is a symlink, is a leftover, is
    binary).  A symlink is a leftover when its target names one of
    ``needles``, a file when its content does; files whose relative path is
    in ``skip`` are not read.  ``classify`` as for :func:`scan_file`."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + [d for d in dirnames
                                        if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                yield rel, full, True, has_prefix(os.readlink(full).encode(), needles), False
            elif rel in skip:
                yield rel, full, False, False, False
            else:
                found, binary = scan_file(full, needles, classify=classify)
                yield rel, full, False, found is not None, binary
