"""``pack --slim``: leave out what a job never uses at run time, so every
node creates fewer files and bytes.

Applied to a staged tree (collect's output) before relocation:

- environment layers: ``tests``/``test`` directories inside installed
  packages, unless a module of the same top-level package that is not a
  test imports from them (``numpy.testing`` is not such a directory and
  stays; a package whose own code says ``from .tests import ...`` keeps its
  tests); C headers (``include/`` directories and ``*.h`` files under
  site-packages, the venv's ``include/``); manuals and documents
  (``share/man``, ``share/doc``, ``share/info``, and ``doc``/``docs``
  directories in site-packages that hold no Python module);
- the interpreter layer: debug information, with ``strip --strip-debug``
  when it is installed (symbols stay, so tracebacks through C and
  ``ctypes`` lookups work as before).

Pure decisions (what to drop) are separate from the walk that applies them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess

from . import collect

TEST_DIRS = ("tests", "test")
DOC_DIRS = ("doc", "docs")
SHARE_DOCS = ("share/man", "share/doc", "share/info")


@dataclasses.dataclass
class Dropped:
    """What slimming left out, by reason: reason -> [files, bytes]."""
    by_reason: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def add(self, reason: str, files: int, size: int) -> None:
        f, b = self.by_reason.get(reason, (0, 0))
        self.by_reason[reason] = (f + files, b + size)

    @property
    def files(self) -> int:
        return sum(f for f, _ in self.by_reason.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.by_reason.values())

    def summary(self, name: str) -> str:
        parts = ", ".join(f"{r} {f} files {b / 1e6:.1f} MB" for r, (f, b)
                          in sorted(self.by_reason.items()))
        text = (f"slim: {name}: dropped {self.files} files, {self.bytes / 1e6:.1f} MB"
                + (f" ({parts})" if parts else ""))
        return "; ".join([text] + self.notes)


def _size_of(path: str) -> tuple[int, int]:
    """Files (non-directories) and bytes under path (symlinks not followed)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return 1, collect.lstat(path).st_size
    files = size = 0
    for dp, dns, fns in collect.walk(path):
        for fn in fns + [d for d in dns if os.path.islink(os.path.join(dp, d))]:
            files += 1
            size += collect.lstat(os.path.join(dp, fn)).st_size
    return files, size


def _remove(path: str, reason: str, out: Dropped) -> None:
    f, b = _size_of(path)
    if os.path.isdir(path) and not os.path.islink(path):
        collect.rmtree(path)
    else:
        collect.unlink(path)
    out.add(reason, f, b)


def is_test_path(rel_parts: list[str]) -> bool:
    """A path inside a test directory, or a test module / pytest config."""
    if any(p in TEST_DIRS for p in rel_parts[:-1]):
        return True
    leaf = rel_parts[-1] if rel_parts else ""
    return leaf == "conftest.py" or (leaf.startswith("test_") and leaf.endswith(".py"))


def references(source: str, dotted: str, relative_parent: bool, leaf: str) -> bool:
    """Does Python source text import the module ``dotted`` (a test
    package)?  Absolute: ``dotted`` as a word anywhere (imports, strings
    given to importlib); relative, when the source sits in the test
    package's parent: ``from .tests ...`` or ``from . import tests``."""
    if re.search(r"(?<![\w.])" + re.escape(dotted) + r"(?![\w])", source):
        return True
    if relative_parent:
        if re.search(r"from\s+\." + re.escape(leaf) + r"\b", source):
            return True
        if re.search(r"from\s+\.\s+import\s+[^\n]*\b" + re.escape(leaf) + r"\b", source):
            return True
    return False


def _package_sources(top: str) -> list[tuple[str, str]]:
    """(relative path, text) of the non-test .py files of a top-level package."""
    out = []
    for dp, dns, fns in collect.walk(top):
        rel_dir = os.path.relpath(dp, top)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if any(p in TEST_DIRS for p in parts):
            dns[:] = []
            continue
        for fn in fns:
            if fn.endswith(".py") and not is_test_path(parts + [fn]):
                try:
                    with open(collect.content_path(os.path.join(dp, fn)), encoding="utf-8",
                              errors="replace") as f:
                        out.append((os.path.join(*parts, fn) if parts else fn, f.read()))
                except OSError:
                    continue
    return out


def _has_python(path: str) -> bool:
    return any(fn.endswith((".py", ".so")) for _, _, fns in collect.walk(path) for fn in fns)


def _slim_site(site: str, out: Dropped) -> None:
    for top in sorted(os.listdir(site)):
        full_top = os.path.join(site, top)
        if not os.path.isdir(full_top) or os.path.islink(full_top) or top.endswith(
                (".dist-info", ".egg-info", ".data")):
            continue
        sources = None
        test_dirs = []
        for dp, dns, fns in os.walk(full_top):
            rel_dir = os.path.relpath(dp, site)
            for d in list(dns):
                if d in TEST_DIRS:
                    test_dirs.append(os.path.join(rel_dir, d))
                    dns.remove(d)
        for rel in test_dirs:
            parts = rel.split(os.sep)
            dotted = ".".join(parts)
            parent = os.sep.join(parts[1:-1])  # the test package's parent, inside top
            if sources is None:
                sources = _package_sources(full_top)
            keep = any(references(text, dotted, os.path.dirname(src) == parent, parts[-1])
                       for src, text in sources)
            if not keep:
                _remove(os.path.join(site, rel), "tests", out)
        for dp, dns, fns in collect.walk(full_top):
            for d in list(dns):
                p = os.path.join(dp, d)
                if d == "include" and not _has_python(p):
                    _remove(p, "headers", out)
                    dns.remove(d)
                elif d in DOC_DIRS and not _has_python(p):
                    _remove(p, "docs", out)
                    dns.remove(d)
            for fn in fns:
                if fn.endswith(".h"):
                    _remove(os.path.join(dp, fn), "headers", out)


def slim_environment(root: str, site_rel: str) -> Dropped:
    """Drop tests, headers and documents from an environment's staged tree."""
    out = Dropped()
    site = os.path.join(root, site_rel)
    if os.path.isdir(site):
        _slim_site(site, out)
    inc = os.path.join(root, "include")
    if os.path.isdir(inc) and not os.path.islink(inc):
        _remove(inc, "headers", out)
    for rel in SHARE_DOCS:
        p = os.path.join(root, rel)
        if collect.lexists(p):
            _remove(p, "docs", out)
    return out


def _is_elf(path: str) -> bool:
    try:
        with open(collect.content_path(path), "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def strip_interpreter(root: str, strip: str | None = None) -> Dropped:
    """strip --strip-debug every ELF file of the interpreter's staged tree."""
    out = Dropped()
    strip = strip or shutil.which("strip")
    if not strip:
        out.notes.append("debug info kept (no 'strip' program found; install binutils)")
        return out
    saved = 0
    for dp, _, fns in collect.walk(root):
        for fn in fns:
            p = os.path.join(dp, fn)
            if os.path.islink(p) or not _is_elf(p):
                continue
            before = collect.getsize(p)
            collect.materialize(p)  # strip changes it in place
            mode = os.stat(p).st_mode
            os.chmod(p, mode | 0o200)
            try:
                r = subprocess.run([strip, "--strip-debug", p], capture_output=True, text=True,
                                   timeout=120, check=False)
            except subprocess.TimeoutExpired:
                r = None
            os.chmod(p, mode)
            if r is None or r.returncode != 0:
                out.notes.append(f"debug info kept in {os.path.relpath(p, root)} (strip failed)")
                continue
            saved += before - os.path.getsize(p)
    out.add("debug info", 0, saved)
    return out
