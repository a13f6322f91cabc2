"""Make a staging tree relocatable: apply the byte rewrites of
:mod:`package.prefixes` to the right files, fix ELF RPATHs and symlinks, record the
files that must keep an absolute prefix, and byte-compile everything.
"""

from __future__ import annotations

import logging
import os
import stat

from . import collect, elf
from ..package import prefixes
from ..package.scan import find_any
from .collect import Staged
from ..support.errors import PmbError
from ..support.proc import run_checked
from ..package.format import PrefixFile

log = logging.getLogger("python_mpi_bcast")


def _under(path: str, roots: list[str]) -> str | None:
    for p in sorted(roots, key=len, reverse=True):
        if path == p or path.startswith(p + "/"):
            return p
    return None


def _map_abs(path: str, moves: list[tuple[str, str]]) -> str | None:
    """Where an absolute path of the old install lives inside the tree."""
    for old, new in sorted(moves, key=lambda m: len(m[0]), reverse=True):
        if path == old or path.startswith(old + "/"):
            return os.path.normpath(os.path.join(new, path[len(old):].lstrip("/")))
    return None


def fix_symlinks(st: Staged, keep_outside: bool = False) -> None:
    """Absolute links into the old prefixes become relative; links to
    anything outside the tree are replaced by a copy of their target (or, with
    ``keep_outside``, kept as they are: a relocated venv still links to its
    base interpreter).  Absolute links under a ``--map`` OLD are re-aimed."""
    root = st.root
    maps = [(o.encode(), n.encode()) for o, n in st.maps]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                continue
            rel = os.path.relpath(full, root)
            target = os.readlink(full)
            if os.path.isabs(target):
                inside = _map_abs(target, st.moves)
                if inside is not None:
                    collect.unlink(full)
                    os.symlink(os.path.relpath(inside, os.path.dirname(rel) or "."), full)
                    continue
                if maps:
                    mapped = prefixes.apply_maps(target.encode(), maps).decode()
                    if mapped != target:
                        collect.unlink(full)
                        os.symlink(mapped, full)
                        continue
                if keep_outside:
                    continue
                resolved = target
            else:
                norm = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                if not norm.startswith("../") and norm != "..":
                    continue  # stays inside the tree
                if keep_outside:
                    continue
                resolved = os.path.realpath(full)
            collect.unlink(full)
            if os.path.isfile(resolved):
                collect.copy_file(resolved, full)
            elif os.path.isdir(resolved):
                raise PmbError(f"{rel}: symlink to directory {target} outside the packed "
                               f"tree; copy that directory into the environment or drop the link")
            else:
                st.warnings.append(f"{rel}: dangling symlink to {target} left out")


BIG_FILE = 64 << 20


def _restore_conda_placeholder(data: bytes, rel: str, recorded: str, scrub_b: list[bytes],
                               prefix_files: list[PrefixFile], kept: list[str],
                               warnings: list[str]) -> bytes:
    """A binary file conda recorded with a build placeholder: each string
    that holds the env prefix was padded with NULs up to the placeholder's
    length when conda installed it.  Put a placeholder of our own of that
    length back, so the unpacker can write a tree path of up to that length."""
    ph = prefixes.make_placeholder(len(recorded.encode()))
    out = data
    try:
        for p in scrub_b:
            if len(p) > len(ph):
                raise ValueError("prefix longer than the recorded placeholder")
            out = prefixes.restore_binary_placeholder(out, p, ph)
    except ValueError:
        warnings.append(f"{rel}: conda recorded it as holding the prefix, but the prefix in it "
                        f"has no NUL padding up to the recorded placeholder; kept as it is")
        kept.append(rel)
        return data
    prefix_files.append(PrefixFile("binary", rel, ph.decode()))
    return out


def _relocate_content(data: bytes, fn: str, rel: str, scrub_b: list[bytes],
                      site_old: bytes, site_olds: list[bytes], site_tree: str,
                      prefix_files: list[PrefixFile], kept: list[str],
                      force_text: bool = False) -> bytes:
    """Rewrite one file that still names an old prefix; what cannot be made
    relative is recorded in ``prefix_files`` for the unpacker to patch."""
    if prefixes.python_shebang_target(data, scrub_b) is not None:
        data = prefixes.rewrite_shebang(data, b"python3")
    elif fn.endswith(".pth") and site_old:
        data, foreign = prefixes.relativize_pth(data, site_old, scrub_b, site_tree.encode())
        if foreign:
            raise PmbError(f"{rel}: refers to {foreign[0].decode(errors='replace')}, "
                           f"outside the packed environment; remove that line or "
                           f"install the package into the venv")
    elif fn == "RECORD" and site_old:
        data = prefixes.relocate_record(data, site_old, scrub_b)
    if not prefixes.has_prefix(data, scrub_b):
        return data
    if prefixes.is_binary(data) and not force_text:
        # A path compiled into a binary (libpython's PREFIX, a string in an
        # extension module) is left exactly as it is.  Rewriting it in place
        # is unsafe: linkers merge a string into the tail of a longer one
        # (CPython's "3.11.7" is the end of "/opt/python/3.11.7"), and the
        # padded rewrite cuts such a string.  Nothing needs it either: CPython
        # finds its prefix from where its executable and library are, and
        # ELF loaders use the $ORIGIN RPATHs set above; the compiled-in path
        # is only a fallback.  Only files whose placeholders were recorded
        # when they were built (conda's) get a binary rewrite.
        kept.append(rel)
        return data
    # the old site directory first: it may sit elsewhere in the tree
    for old_site in site_olds:
        data = prefixes.replace_text_prefix(
            data, old_site, prefixes.PLACEHOLDER + b"/" + site_tree.encode())
    for p in scrub_b:
        data = prefixes.replace_text_prefix(data, p, prefixes.PLACEHOLDER)
    prefix_files.append(PrefixFile("text", rel, prefixes.PLACEHOLDER.decode()))
    return data


class Relocator:
    """The rewrites of one staged tree, file by file: :meth:`file` takes a
    file's bytes and returns what the package holds, plus what the manifest
    must list.  Used on a tree on disk (:func:`relocate_files`) and on the
    way into a package (stream.py); no state changes per file, so threads
    may share one."""

    def __init__(self, st: Staged):
        self.st = st
        scrub = sorted({p for p in st.scrub}, key=len, reverse=True)
        self.scrub = scrub
        self.scrub_b = [p.encode() for p in scrub]
        self.site_old = st.site_abs_old.encode()
        self.site_tree = st.site_dir
        self.maps = [(o.encode(), n.encode()) for o, n in st.maps]
        # an RPATH entry elf.rpath_change rewrites starts with one of these: an
        # ELF file that holds none keeps its RPATH (no patchelf run to read it)
        self.move_olds = [o.rstrip("/").encode() for o, _ in st.moves]
        self.site_olds = sorted({self.site_old, os.path.realpath(st.site_abs_old).encode()}
                                - {b""}, key=len, reverse=True) if self.site_old else []
        # where the old site directory sat relative to its venv, for RECORD's ../ entries
        self.old_site_rel = b""
        for old, new in st.moves:
            if new == "" and st.site_abs_old.startswith(old + "/"):
                self.old_site_rel = os.path.relpath(st.site_abs_old, old).encode()
                break

    def file(self, rel: str, data: bytes, set_rpath=None
             ) -> tuple[bytes, list[PrefixFile], list[str], list[str]]:
        """(new bytes, prefix files, kept, warnings) for the file ``rel``
        whose bytes are ``data``.  ``set_rpath(rpath) -> bytes`` gives the
        file's bytes with another RPATH (None: ELF files keep theirs);
        ``elf_rpath`` tells which one an ELF file needs."""
        st, scrub_b, maps = self.st, self.scrub_b, self.maps
        fn = os.path.basename(rel)
        prefix_files: list[PrefixFile] = []
        kept: list[str] = []
        warnings: list[str] = []
        mode_ph = st.recorded.get(rel)
        if mode_ph and mode_ph[0] == "binary":
            if prefixes.has_prefix(data, scrub_b):
                data = _restore_conda_placeholder(data, rel, mode_ph[1], scrub_b,
                                                  prefix_files, kept, warnings)
            return data, prefix_files, kept, warnings
        if (maps and not prefixes.is_binary(data)
                and prefixes.has_prefix(data, [o for o, _ in maps])):
            data = prefixes.apply_maps(data, maps)
        if (set_rpath is not None and prefixes.is_elf(data) and self.scrub
                and any(o in data for o in self.move_olds)):
            new = set_rpath(rel)
            if new is not None:
                data = new
        if fn == "RECORD" and self.old_site_rel:
            data = prefixes.rebase_record(data, self.old_site_rel, self.site_tree.encode())
        if prefixes.has_prefix(data, scrub_b):
            data = _relocate_content(data, fn, rel, scrub_b, self.site_old, self.site_olds,
                                     self.site_tree, prefix_files, kept,
                                     force_text=bool(mode_ph))
        return data, prefix_files, kept, warnings

    def untouched(self, rel: str, data: bytes) -> bool:
        """Whether :meth:`file` gives ``data`` back as it is, noting nothing
        (no conda record of it, not a RECORD to rebase, none of the old
        locations, maps or moves anywhere in it): such a file may be split
        across shards (stream.py), as it is never a prefix file."""
        if self.st.recorded.get(rel):
            return False
        if os.path.basename(rel) == "RECORD" and self.old_site_rel:
            return False
        needles = self.scrub_b + [o for o, _ in self.maps] + self.move_olds
        return not any(n and n in data for n in needles)

    def big_file_keeps_prefix(self, rel: str) -> list[str]:
        """A file over BIG_FILE is never loaded: one that holds an old prefix is
        recorded as keeping it (a text file this large is data: it is kept as
        it is, as binaries are)."""
        return [rel]


def relocate_files(st: Staged, progress=None) -> list[PrefixFile]:
    """Rewrite every file of the tree on disk that refers to an old prefix.

    Returns the prefix-bearing files for the manifest.
    """
    rl = Relocator(st)
    prefix_files: list[PrefixFile] = []
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(st.root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, st.root)
            mode = os.stat(full).st_mode
            read_only = not mode & stat.S_IWUSR
            if read_only:  # patchelf and our own rewrites need to write
                os.chmod(full, mode | stat.S_IWUSR)
            try:
                if rl.scrub_b and os.path.getsize(full) > BIG_FILE:
                    if find_any(full, rl.scrub_b) is not None:
                        kept += rl.big_file_keeps_prefix(rel)
                    continue
                with open(full, "rb") as f:
                    orig = f.read()

                def set_rpath(rel, full=full):
                    try:
                        changed = elf.relocate_rpath(full, rel, st.moves, st.root)
                    except PmbError:
                        return None  # not a dynamic object (static, or odd ELF)
                    if not changed:
                        return None
                    with open(full, "rb") as f:
                        return f.read()

                data, pf, kp, warn = rl.file(rel, orig, set_rpath)
                prefix_files += pf
                kept += kp
                st.warnings += warn
                if data != orig:
                    with open(full, "wb") as f:
                        f.write(data)
            finally:
                if read_only:
                    os.chmod(full, mode)
    for rel in kept:
        log.debug("%s: keeps a compiled-in path of the old location (a fallback only; "
                  "not rewritten)", rel)
    st.compiled_in = kept
    return prefix_files


_COMPILE = r"""
import sys
# what start-up imported before any .pth file ran (here: before this script)
START = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
import compileall, importlib.util, os, py_compile
root, workers, ddir, checked = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, sys.argv[4:]
M = py_compile.PycInvalidationMode
U = M.TIMESTAMP if ddir else M.UNCHECKED_HASH
compileall.compile_dir(root, quiet=2, workers=workers, invalidation_mode=U, stripdir=root,
                       prependdir=ddir)
# -O/-OO: the modules imported before the staged tree's start-up hook can keep
# the import system from writing (staged_site.py), and the hook itself
early = [os.path.join(root, os.path.relpath(f, sys.prefix)) for f in START
         if f and f.endswith(".py") and f.startswith(sys.prefix + "/")]
for d, _, files in os.walk(root):
    early += [os.path.join(d, f) for f in files if f == "HOOK.py"]
for f in early:
    if os.path.isfile(f) and not ddir:
        for opt in (1, 2):
            py_compile.compile(f, importlib.util.cache_from_source(f, optimization=opt),
                               f[len(root) + 1:], doraise=True, optimize=opt,
                               invalidation_mode=U)
for rel in checked:
    if ddir:
        compileall.compile_file(root + "/" + rel, quiet=2, invalidation_mode=M.TIMESTAMP,
                                stripdir=root, prependdir=ddir)
    else:  # the unpacker rewrites the source: a .pyc made now would be stale
        try:
            os.unlink(importlib.util.cache_from_source(root + "/" + rel))
        except FileNotFoundError:
            pass
"""


def byte_compile(st: Staged, python: str, prefix_files: list[PrefixFile], workers: int,
                 ddir: str | None = None) -> None:
    """Compile every ``.py`` with the packed interpreter (its magic number),
    as unchecked-hash ``.pyc`` so no rank stats sources at run time.  Files
    whose source the unpacker patches (``_sysconfigdata_*.py``) get no
    ``.pyc``: one made now would be stale once patched, and the staged
    tree's start-up hook (staged_site.py) keeps the import system from
    caching one in the tree; they are compiled in memory when imported.
    With ``ddir`` (relocate: the tree's final place, where users may edit
    sources) ``.pyc`` are timestamp-checked and name their sources there."""
    checked = [p.path for p in prefix_files if p.path.endswith(".py")]
    run_checked([python, "-I", "-c", _COMPILE.replace("HOOK", collect.STAGED_HOOK), st.root,
                 str(max(1, workers)), ddir or ""] + checked, 3600,
                failed=f"byte-compiling with {python} failed",
                too_slow="byte-compiling took more than an hour; giving up")


def write_final_paths(root: str, prefix_files: list[PrefixFile], final: str) -> None:
    """Write ``final`` in place of the placeholders of a tree this process
    made itself (``relocate``), with the same byte rules as the launcher's
    unpacker (launcher/unpack.c, pmb_patch_prefixes): text by replacement
    (in a ``.py`` file escaped for a string literal);
    binary inside NUL-terminated strings, padded with NULs, never past the
    recorded placeholder's length.  Packages from elsewhere are patched by
    the launcher's unpacker only."""
    new = os.path.abspath(final).encode()
    for p in prefix_files:
        full = os.path.join(root, p.path)
        with open(full, "rb") as f:
            data = f.read()
        old = p.placeholder.encode()
        if p.mode == "text":
            # in Python source the path lands inside a string literal
            data = prefixes.replace_text_prefix(
                data, old, prefixes.py_literal_body(new) if p.path.endswith(".py") else new)
        elif len(new) <= len(old):
            data = prefixes.replace_binary_prefix(data, old, new)
        else:
            raise PmbError(f"{p.path} can hold a path of at most {len(old)} bytes (its recorded "
                           f"placeholder), but {final} has {len(new)}; choose a destination "
                           f"whose path is at most {len(old)} bytes long")
        mode = stat.S_IMODE(os.stat(full).st_mode)
        if not mode & stat.S_IWUSR:
            os.chmod(full, mode | stat.S_IWUSR)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, mode)
