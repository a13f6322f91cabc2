"""``python-mpi-bcast relocate``: collect → relocate → verify → place.

Copies a venv or a conda env to a new location with every reference
rewritten, using the same engine as ``pack`` (``collect`` copies,
``packing.relocatable`` rewrites to placeholders and records what must hold a path,
``relocatable.write_final_paths`` writes the final path by the launcher
unpacker's rules), then scans the copy for any old path left and only then renames it
into place (or writes it as an archive with ``--tar``).  The source is never
modified; nothing appears under the final name unless it is complete.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile

from ..packing import collect, relocatable
from ..source import pyinfo
from ..support import config, leftovers
from ..package.scan import scan_tree
from ..support.errors import PmbError, os_error
from ..package.prefixes import ACTIVATION_SHELLS, requote_activation


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_paths(src: str, dest: str, tar: str | None, force: bool) -> str:
    """Refuse a DEST inside SRC (or the other way round); return the path
    that will be written (DEST, or the --tar file)."""
    for s in {src, os.path.realpath(src)}:
        for d in {dest, os.path.realpath(dest)}:
            if _inside(d, s):
                raise PmbError(f"{dest} is inside {src}; choose a DEST outside the "
                               f"environment being relocated")
            if not tar and _inside(s, d):
                raise PmbError(f"{src} is inside {dest}; choose a DEST that does not "
                               f"contain the environment being relocated")
    final = os.path.abspath(tar) if tar else dest
    if tar and _inside(final, src):
        raise PmbError(f"{final} is inside {src}; write the archive elsewhere")
    if os.path.lexists(final):
        if not force:
            raise PmbError(f"{final} already exists; remove it or pass --force to replace it")
        # --force replaces only what relocate made (a tree with its record,
        # an archive); anything else is someone's data and is never touched
        if tar and not _is_archive(final):
            raise PmbError(f"{final} already exists and is not an archive; it was left as it "
                           f"is: choose another --tar file")
        if not tar and not _relocated_here(final):
            raise PmbError(f"{final} already exists and is not an environment relocated by "
                           f"python-mpi-bcast; it was left as it is: choose a DEST that does "
                           f"not exist yet")
    return final


# Written into every tree relocate makes (and its --tar archives): what
# --force may replace.  It names no path, so a relocated tree relocated
# again holds no old location in it.
RECORD = ".python-mpi-bcast-relocate.json"


def _relocated_here(path: str) -> bool:
    return (not os.path.islink(path) and os.path.isdir(path)
            and os.path.isfile(os.path.join(path, RECORD)))


def _is_archive(path: str) -> bool:
    """A regular file that is a tar archive (plain, gz, bz2, xz) or zstd."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"\x28\xb5\x2f\xfd":
                return True
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _leftovers(root: str, olds: list[bytes]) -> list[str]:
    return sorted(rel for rel, _, _, left, _ in scan_tree(root, olds) if left)


def _olds(st: collect.Staged) -> list[bytes]:
    olds = [p.encode() for p in st.scrub] + [o.encode() for o, _ in st.maps]
    return sorted({o.rstrip(b"/") for o in olds if o.rstrip(b"/")}, key=len, reverse=True)


def _requote_activation(tree: str, dest: str) -> None:
    """The venv's activation scripts name DEST inside shell quotes: quoted
    for each shell, so a '"', '$' or '`' in DEST stays part of the path."""
    for name, shell in ACTIVATION_SHELLS.items():
        path = os.path.join(tree, "bin", name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        new = requote_activation(data, dest.encode(), shell)
        if new is None:
            raise PmbError(f"bin/{name} cannot name {dest!r} ({shell} has no way to write its "
                           f"line break); choose a DEST without one")
        if new != data:
            with open(path, "wb") as f:
                f.write(new)


def _write_tar(root: str, arcname: str, out: str) -> None:
    mode = {".gz": "w:gz", ".tgz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(
        os.path.splitext(out)[1], "w")
    parent = os.path.dirname(out)
    fd, tmp = leftovers.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".part", dir=parent)
    os.close(fd)
    try:
        if out.endswith((".zst", ".tzst")):
            import zstandard
            with open(tmp, "wb") as raw:
                with zstandard.ZstdCompressor(level=10, threads=-1).stream_writer(raw) as z:
                    with tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                        tf.add(root, arcname=arcname)
        else:
            with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tf:
                tf.add(root, arcname=arcname)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        leftovers.release(tmp)
        tmp = None
    finally:
        if tmp:
            leftovers.remove(tmp)


@dataclasses.dataclass(frozen=True)
class Relocated:
    """What ``relocate`` made."""
    kind: str               # "venv" or "conda"
    dest: str               # where the environment works from
    written: str            # DEST, or the --tar archive
    files: int              # files that name the location
    compiled_in: list[str]  # binaries that keep a compiled-in old path (a fallback)
    warnings: list[str]


def relocate(src: str, dest: str, maps: list[tuple[str, str]] | None = None,
             tar: str | None = None, force: bool = False, use_config: bool = True) -> Relocated:
    """Copy the venv or conda env ``src`` so that it works from ``dest``.

    ``maps`` are extra (OLD, NEW) rewrites (``--map``); site aliases from the
    config file come first and flags win.  With ``tar``, the relocated tree is
    written to that archive (members under ``basename(dest)/``) and ``dest``
    is only the location the tree is made for.
    """
    src = os.path.abspath(src)
    dest = os.path.abspath(dest)
    kind = collect.classify(src)
    final = _check_paths(src, dest, tar, force)
    maps = config.merge_maps(config.site_aliases() if use_config else [], list(maps or []))
    for old, new in maps:
        if _inside(old, src) or _inside(src, old):
            raise PmbError(f"--map {old} {new}: {old} overlaps the environment {src}, which is "
                           f"rewritten to {dest} anyway; map other paths only")
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PmbError(f"cannot create {parent}: {e.strerror}") from None
    work = leftovers.mkdtemp(prefix=f".{os.path.basename(final)}.relocate-", dir=parent)
    tree = os.path.join(work, "tree")
    try:
        try:
            if kind == "conda":
                st = collect.stage_conda(src, tree, [], None, for_launcher=False)
            else:
                st = collect.stage_whole_venv(src, tree)
            python = pyinfo.interpreter_of(src, st.info.version)
            st.maps = maps
            # collect → relocate (to placeholders) → write the final path
            relocatable.fix_symlinks(st, keep_outside=True)
            prefix_files = relocatable.relocate_files(st)
            relocatable.write_final_paths(tree, prefix_files, dest)
            _requote_activation(tree, dest)
            relocatable.byte_compile(st, python, [], os.cpu_count() or 1, ddir=dest)
        except OSError as e:
            raise os_error(e, f"relocating {src}", "free space there or choose another DEST",
                           full_doing=f"copying {src} into {parent}", name_file=True) from None
        # verify: nothing may still name the old locations
        left = _leftovers(tree, _olds(st))
        if left:
            raise PmbError(f"{len(left)} file(s) of the copy still refer to {src} or a mapped "
                           f"path (first: {left[0]}); nothing was written. Add --map OLD NEW "
                           f"for other locations, or report this file")
        try:
            with open(os.path.join(tree, RECORD), "w") as f:
                f.write('{"made_by": "python-mpi-bcast relocate"}\n')
            if tar:
                _write_tar(tree, os.path.basename(dest), final)
            else:
                os.chmod(tree, 0o755)
                trash = None
                if os.path.lexists(final):  # --force
                    trash = os.path.join(work, "old")
                    os.rename(final, trash)
                os.rename(tree, final)
        except OSError as e:
            raise os_error(e, f"writing {final}",
                           f"free space in {parent} or choose another location") from None
        return Relocated(kind, dest, final, len(prefix_files), st.compiled_in, st.warnings)
    finally:
        leftovers.remove(work)
