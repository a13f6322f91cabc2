"""Find what to pack and copy it into a staging tree laid out like a Python
installation prefix (``bin/``, ``lib/``, ``lib/pythonX.Y/...``).

Layers stack: the interpreter package provides ``bin/pythonX.Y``, the shared
``libpython`` and the standard library; environment packages add their
``site-packages``, scripts and data on top, in the same tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import os
import re
import shutil
import stat as stat_mod

from ..source import conda, editable, pyinfo
from ..support.errors import PmbError

# Parts of the standard library that batch jobs do not need (left out unless
# --keep-all).  Patterns match paths relative to the stdlib directory.
SLIM_EXCLUDES = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip",
                 "lib2to3/tests", "unittest/test", "ctypes/test", "distutils/tests",
                 "sqlite3/test", "tkinter/test", "lib-dynload/_test*", "lib-dynload/_ctypes_test*",
                 "lib-dynload/_tkinter*", "lib-dynload/xxlimited*", "config-*")
ALWAYS_EXCLUDES = ("__pycache__", "*.pyc", "*.pyo", "site-packages", "dist-packages",
                   # Debian's PEP 668 marker: the distribution manages /usr, not our tree
                   "EXTERNALLY-MANAGED")

# Prefixes that exist on every compute node: paths under them are never
# rewritten (Debian's python3 lives in /usr).
SYSTEM_PREFIXES = ("/", "/usr", "/usr/local", "/opt", "/bin", "/lib", "/lib64")

VENV_BIN_SKIP = ("python", "python3", "python3.*", "pypy*", "activate", "activate.*",
                 "activate_this.py", "Activate.ps1", "deactivate*")


@dataclasses.dataclass
class Staged:
    """What collect produced: a staging directory plus facts for the manifest."""
    root: str
    kind: str
    name: str
    info: pyinfo.PyInfo             # the interpreter's facts (pyinfo.query)
    site_dir: str = ""              # relative, where environments put packages
    libpython: str = ""             # relative path, interpreter kind only
    executable: str = ""            # relative path, interpreter kind only
    scrub: list[str] = dataclasses.field(default_factory=list)   # old prefixes
    moves: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # old abs dir -> tree rel
    site_abs_old: str = ""          # the old absolute site-packages directory
    compiled_in: list[str] = dataclasses.field(default_factory=list)  # binaries keeping an old path
    # conda's records: relative path -> (file_mode, recorded build placeholder)
    recorded: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # binaries conda recorded with a placeholder but changed since: path -> package
    changed_binaries: dict[str, str] = dataclasses.field(default_factory=dict)
    maps: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # --map OLD NEW
    warnings: list[str] = dataclasses.field(default_factory=list)
    editables: list = dataclasses.field(default_factory=list)  # editable.Editable, packed
    reused: str = ""                # what a re-pack reused ("reused 812 of 815 shards, ...")


# Stream, don't copy: while lazy_copies() is active, a file "copied" into a
# staging tree is not written at all: it is a *virtual* file, an entry that
# names its source and holds the source's stat (size, mode, times) taken when
# it was copied.  Directories, links and the few files we write ourselves are
# real.  Every step that looks at a staged tree does so through the view
# functions below (walk, listdir, lstat, stat, isfile, lexists, exists,
# unlink, rmtree), which show virtual files as regular files; the package
# writer reads their bytes from the source (packing/stream.py).  A step that
# must change a file's bytes in place materialize()s it first.  Outside
# lazy_copies() the view functions are the os ones.
class _Virtual:
    def __init__(self):
        self.files: dict[str, tuple[str, os.stat_result]] = {}  # key -> (source, stat)
        self.names: dict[str, set[str]] = {}    # real directory -> virtual names in it
        self.real_dirs: dict[str, str] = {}     # directory as given -> its real path
        self.keys: dict[str, str] = {}          # path as given -> key (same lifetime)

    def real_dir(self, d: str) -> str:
        r = self.real_dirs.get(d)
        if r is None:
            r = self.real_dirs[d] = os.path.realpath(d)
        return r

    def key(self, path: str) -> str:
        k = self.keys.get(path)
        if k is None:
            d, n = os.path.split(path)
            if n in ("", ".", ".."):
                d, n = os.path.split(os.path.normpath(path))
            k = self.keys[path] = self.real_dir(d) + "/" + n
        return k

    def add(self, path: str, src: str, st: os.stat_result) -> None:
        k = self.key(path)
        self.files[k] = (src, st)
        d, n = os.path.split(k)
        self.names.setdefault(d, set()).add(n)

    def get(self, path: str):
        return self.files.get(self.key(path))

    def resolve(self, path: str):
        """The entry of ``path``, following a real link to a virtual file."""
        e = self.get(path)
        if e is None and os.path.islink(path):
            e = self.get(os.path.realpath(path))
        return e

    def pop(self, path: str):
        k = self.key(path)
        e = self.files.pop(k, None)
        if e is not None:
            d, n = os.path.split(k)
            self.names[d].discard(n)
        return e

    def links_changed(self) -> None:
        self.real_dirs.clear()
        self.keys.clear()


_lazy: _Virtual | None = None


@contextlib.contextmanager
def lazy_copies():
    global _lazy
    prev, _lazy = _lazy, _Virtual()
    try:
        yield _lazy
    finally:
        _lazy = prev


def is_virtual(path: str) -> bool:
    return _lazy is not None and _lazy.get(path) is not None


def content_path(path: str) -> str:
    """Where the bytes of the staged file ``path`` are: its source while it
    is virtual, else itself."""
    if _lazy is not None:
        e = _lazy.resolve(path)
        if e is not None:
            return e[0]
    return path


def lstat(path: str) -> os.stat_result:
    if _lazy is not None:
        e = _lazy.get(path)
        if e is not None:
            return e[1]
    return os.lstat(path)


def stat(path: str) -> os.stat_result:
    """os.stat of a staged path (a link to a virtual file: its stat)."""
    if _lazy is not None:
        e = _lazy.resolve(path)
        if e is not None:
            return e[1]
    return os.stat(path)


def getsize(path: str) -> int:
    return stat(path).st_size


def isfile(path: str) -> bool:
    if _lazy is not None and _lazy.resolve(path) is not None:
        return True
    return os.path.isfile(path)


def exists(path: str) -> bool:
    return isfile(path) or os.path.exists(path)


def lexists(path: str) -> bool:
    if _lazy is not None and _lazy.get(path) is not None:
        return True
    return os.path.lexists(path)


def virtual_names(path: str):
    """The names of the virtual files in the staged directory ``path``."""
    if _lazy is None:
        return ()
    return _lazy.names.get(_lazy.key(path), ())


def listdir(path: str) -> list[str]:
    names = os.listdir(path)
    if _lazy is not None:
        names += _lazy.names.get(_lazy.key(path), ())
    return names


def walk(top: str):
    """os.walk (top down, links not followed) with virtual files among the
    file names."""
    for dirpath, dirnames, filenames in os.walk(top):
        if _lazy is not None:
            filenames += _lazy.names.get(_lazy.key(dirpath), ())
        yield dirpath, dirnames, filenames


def unlink(path: str) -> None:
    if _lazy is not None:
        if _lazy.pop(path) is not None:
            return
        if os.path.islink(path):
            _lazy.links_changed()
    os.unlink(path)


def rmtree(path: str) -> None:
    """Remove a staged directory and the virtual files under it."""
    if _lazy is not None:
        top = _lazy.key(path)
        for d in [d for d in _lazy.names if d == top or d.startswith(top + "/")]:
            for n in list(_lazy.names[d]):
                _lazy.pop(os.path.join(d, n))
        _lazy.links_changed()
    shutil.rmtree(path)


def materialize(path: str) -> None:
    """Give a staged file bytes of its own (a step will change them): a
    virtual file gets its source's bytes; a link is replaced by a copy of
    what it leads to, so the write never goes through it to the file it
    names (which may be the user's own, outside the environment)."""
    if os.path.islink(path):
        src = content_path(path)  # a virtual file's source, else the link (followed)
        tmp = path + ".pmb-own"
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
        unlink(path)
        os.rename(tmp, path)
        return
    if _lazy is not None:
        e = _lazy.pop(path)
        if e is not None:
            shutil.copy2(e[0], path)


def _own(path: str) -> str:
    """``path`` is about to be written with bytes of our own: no longer a
    virtual copy of a source."""
    if _lazy is not None:
        _lazy.pop(path)
    return path


def copy_file(src: str, dst: str, st: os.stat_result | None = None) -> None:
    """Copy one regular file (virtually while lazy_copies() is active;
    ``st``: the source's stat, if the caller has it)."""
    if _lazy is None:
        shutil.copy2(src, dst)
        return
    if lexists(dst):
        unlink(dst)
    _lazy.add(dst, os.path.abspath(src), st if st is not None else os.stat(src))


def _excluded(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    whole, part = _matchers(tuple(patterns))
    if whole is not None and whole.match(rel):
        return True
    return part is not None and any(part.match(p) for p in rel.split("/"))


@functools.lru_cache(maxsize=64)
def _matchers(patterns: tuple[str, ...]):
    """Two regular expressions for ``patterns`` (fnmatch's rules): one for
    the patterns with a '/', matched against the whole path (or a parent of
    it), one for the others, matched against each component."""
    paths = [p for p in patterns if "/" in p]
    names = [p for p in patterns if "/" not in p]
    whole = "|".join(f"(?:{fnmatch.translate(p)})|(?:{fnmatch.translate(p + '/*')})"
                     for p in paths)
    part = "|".join(f"(?:{fnmatch.translate(p)})" for p in names)
    return (re.compile(whole) if whole else None), (re.compile(part) if part else None)


def copy_tree(src: str, dst: str, excludes=(), rel_base: str = "") -> None:
    """Copy ``src`` into ``dst`` keeping symlinks as symlinks, skipping
    paths (relative to ``src``) that match ``excludes``."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = os.path.join(rel_dir, d)
            full = os.path.join(dirpath, d)
            if _excluded(rel, excludes) or _excluded(os.path.join(rel_base, rel), excludes):
                continue
            if os.path.islink(full):
                _copy_link(full, os.path.join(dst, rel))
                continue
            keep.append(d)
        dirnames[:] = keep
        os.makedirs(os.path.join(dst, rel_dir), exist_ok=True)
        for fn in sorted(filenames):
            rel = os.path.join(rel_dir, fn)
            if _excluded(rel, excludes) or _excluded(os.path.join(rel_base, rel), excludes):
                continue
            _copy_entry(os.path.join(dirpath, fn), os.path.join(dst, rel), made=True)


def _copy_link(src: str, dst: str, made: bool = False) -> None:
    if not made:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    if lexists(dst):
        unlink(dst)
    os.symlink(os.readlink(src), dst)
    if _lazy is not None:
        _lazy.links_changed()


def _copy_entry(src: str, dst: str, made: bool = False) -> None:
    """``made``: dst's directory exists (copy_tree has just made it)."""
    if not made:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        s = os.lstat(src)
    except FileNotFoundError:
        return  # gone meanwhile
    if stat_mod.S_ISLNK(s.st_mode):
        _copy_link(src, dst, made=True)
        return
    if not stat_mod.S_ISREG(s.st_mode):
        return  # sockets, fifos, devices: nothing a Python job needs
    try:
        if _lazy is not None and not os.access(src, os.R_OK):
            raise PermissionError
        copy_file(src, dst, s)
    except PermissionError:
        raise PmbError(f"{src}: permission denied while reading; packing needs read "
                       f"access to every file") from None


def _real_variants(path: str) -> list[str]:
    out = [os.path.abspath(path).rstrip("/")]
    real = os.path.realpath(path).rstrip("/")
    if real not in out:
        out.append(real)
    return [p for p in out if p and p not in SYSTEM_PREFIXES]


def find_libpython(info: pyinfo.PyInfo) -> str | None:
    names = [n for n in (info.instsoname, info.ldlibrary) if n and ".so" in n]
    dirs = [info.libdir]
    if info.multiarch:
        dirs.append(os.path.join(info.libdir, info.multiarch))
        dirs.append(os.path.join("/usr/lib", info.multiarch))
    dirs.append(os.path.join(info.base_prefix, "lib"))
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if d and os.path.isfile(p):
                return os.path.realpath(p) if n == info.instsoname else p
    return None


def site_rel(info: pyinfo.PyInfo) -> str:
    """Where packages go inside a tree whose prefix is the interpreter's own:
    the first site directory that the interpreter reports under its prefix
    (``lib/python3.11/site-packages``; Debian's python3 reports
    ``local/lib/python3.11/dist-packages``)."""
    for s in info.sites:
        return os.path.relpath(s, info.prefix)
    return f"lib/python{info.version}/site-packages"


def stage_interpreter(exe: str, staging: str, excludes: list[str], slim: bool,
                      name: str | None) -> Staged:
    info = pyinfo.query(exe)
    ver = info.version
    prefix = info.prefix
    st = Staged(root=staging, kind="interpreter", name=name or f"python-{ver}", info=info)
    stdlib_rel = f"lib/python{ver}"
    pats = list(ALWAYS_EXCLUDES) + (list(SLIM_EXCLUDES) if slim else []) + list(excludes)
    copy_tree(info.stdlib, os.path.join(staging, stdlib_rel), pats)
    if os.path.realpath(info.platstdlib) != os.path.realpath(info.stdlib):
        copy_tree(info.platstdlib, os.path.join(staging, stdlib_rel), pats)
    # the interpreter itself, under its versioned name, plus the usual links
    bindir = os.path.join(staging, "bin")
    os.makedirs(bindir, exist_ok=True)
    real_exe = os.path.realpath(info.executable)
    copy_file(real_exe, os.path.join(bindir, f"python{ver}"))
    for link in ("python3", "python"):
        os.symlink(f"python{ver}", os.path.join(bindir, link))
    st.executable = f"bin/python{ver}"
    lib = find_libpython(info)
    if lib:
        soname = info.instsoname or os.path.basename(lib)
        copy_file(lib, os.path.join(staging, "lib", soname))
        dev = f"libpython{ver}.so"
        if soname != dev:
            os.symlink(soname, os.path.join(staging, "lib", dev))
        st.libpython = f"lib/{soname}"
    else:
        st.warnings.append(f"{exe} has no shared libpython; the launcher's embed mode "
                           f"needs one (use PYTHON_MPI_MODE=exec or a Python built with "
                           f"--enable-shared)")
    st.site_dir = site_rel(info)
    add_staged_hook(staging, st.site_dir)
    st.scrub = _real_variants(prefix)
    st.moves = [(p, "") for p in st.scrub]
    return st


STAGED_HOOK = "_python_mpi_bcast_staged"  # staged_site.py, as installed in a package


def add_staged_hook(staging: str, site_dir: str) -> None:
    """The start-up hook of staged trees (staged_site.py: children use the
    launcher's MPI; nothing is written into the tree), run by site through
    a .pth file."""
    site = os.path.join(staging, site_dir)
    os.makedirs(site, exist_ok=True)
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "staged_site.py"),
                    _own(os.path.join(site, STAGED_HOOK + ".py")))
    with open(_own(os.path.join(site, STAGED_HOOK + ".pth")), "w") as f:
        f.write(f"import {STAGED_HOOK}\n")


def absorb_editables(st: Staged, site: str, inside: list[str], refuse: bool) -> None:
    """The editable installs of ``site`` (source/editable.py): their importable
    files are copied into the staged site directory, under the same module
    names, and their hooks (finder modules, ``.pth`` lines, ``.egg-link``
    files, ``direct_url.json``) are dropped, so ranks import the copy and
    never the source.  ``refuse`` (``--refuse-editable``): stop instead."""
    if refuse:
        line = editable.refusal(site, inside)
        if line:
            raise PmbError(line)
        return
    found = editable.find(site, inside)
    staged = os.path.join(st.root, st.site_dir)
    for ed in found.editables:
        kept = []
        for src, rel in ed.files:
            dst = os.path.join(staged, rel)
            if lexists(dst):
                continue  # an earlier entry on sys.path has that name
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                open(src, "rb").close()  # unreadable: said now, not by the package writer
                copy_file(src, dst)
            except OSError as e:
                raise PmbError(f"{src}: cannot read ({e.strerror}); it belongs to the editable "
                               f"project {ed.name} installed from {ed.origin}") from None
            kept.append((src, rel))
        ed.files = kept
        st.editables.append(ed)
    for rel in found.hooks:
        full = os.path.join(staged, rel)
        if lexists(full):
            unlink(full)
    for pth, drop in found.pth_drop.items():
        full = os.path.join(staged, pth)
        if not isfile(full):
            continue
        materialize(full)  # its bytes change here
        with open(full, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
        rest = [ln for ln in lines if ln not in drop]
        if any(ln.strip() and not ln.strip().startswith("#") for ln in rest):
            with open(full, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(ln + "\n" for ln in rest))
        else:
            os.unlink(full)
    _drop_from_records(staged, set(found.hooks) | set(found.pth_drop))
    st.warnings += found.warnings
    st.warnings += editable.other_pythons(_extensions(staged, site), st.info.version)


def _extensions(staged_site: str, site: str) -> list[str]:
    """The CPython extension modules of a staged site directory, named by
    the file they were copied from."""
    out = []
    for dirpath, dirnames, filenames in walk(staged_site):
        dirnames.sort()
        for fn in sorted(filenames):
            if ".cpython-" in fn and fn.endswith(".so"):
                full = os.path.join(dirpath, fn)
                src = content_path(full)
                if src == full:
                    orig = os.path.join(site, os.path.relpath(full, staged_site))
                    src = orig if os.path.lexists(orig) else full
                out.append(src)
    return out


def _drop_from_records(staged_site: str, gone: set[str]) -> None:
    """RECORD lines of hook files the packed tree no longer has."""
    gone = {g for g in gone if not lexists(os.path.join(staged_site, g))}
    if not gone or not os.path.isdir(staged_site):
        return
    for rec in sorted(os.path.join(staged_site, d, "RECORD") for d in os.listdir(staged_site)
                      if d.endswith(".dist-info")):
        if not isfile(rec):
            continue
        with open(content_path(rec), encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        rest = [ln for ln in lines if os.path.normpath(ln.split(",", 1)[0]) not in gone]
        if rest != lines:
            materialize(rec)
            with open(rec, "w", encoding="utf-8") as f:
                f.writelines(rest)


def stage_venv(venv: str, staging: str, excludes: list[str], name: str | None,
               refuse_editable: bool = False) -> Staged:
    venv = os.path.abspath(venv)
    if not os.path.isdir(venv):
        raise PmbError(f"{venv}: no such directory")
    cfg = pyinfo.read_pyvenv_cfg(venv)
    base_exe = pyinfo.base_interpreter_of_venv(venv)
    base = pyinfo.query(base_exe)
    vinfo = pyinfo.query(pyinfo.interpreter_of(venv))
    if vinfo.version != base.version:
        raise PmbError(f"{venv}: runs Python {vinfo.version} but its base interpreter "
                       f"{base_exe} is {base.version}; recreate the venv")
    st = Staged(root=staging, kind="environment",
                name=name or os.path.basename(venv.rstrip("/")), info=base)
    st.site_dir = site_rel(base)
    if cfg.get("include-system-site-packages", "false").lower() == "true":
        st.warnings.append(f"{venv} uses system site-packages; those are not packed "
                           f"(pack the base interpreter's packages separately if jobs need them)")
    else:
        # as in the venv: no user site (~/.local/lib/pythonX.Y/site-packages on
        # the shared filesystem).  site reads pyvenv.cfg beside the executable;
        # without a 'home' line the interpreter's own paths stay the tree's, and
        # the tree's root is no venv to python-mpi-bcast's own commands
        os.makedirs(os.path.join(staging, "bin"), exist_ok=True)
        with open(_own(os.path.join(staging, "bin", "pyvenv.cfg")), "w", encoding="utf-8") as f:
            f.write("# python-mpi-bcast: as in the venv this was packed from, no user site\n"
                    "include-system-site-packages = false\n")
    sites = [vinfo.purelib] if os.path.isdir(vinfo.purelib) else []
    inside = _real_variants(venv) + _real_variants(base.prefix)
    for s in sites:
        copy_tree(s, os.path.join(staging, st.site_dir),
                  list(ALWAYS_EXCLUDES[:2]) + list(excludes))
    for s in sites:
        absorb_editables(st, s, inside, refuse_editable)
    st.site_abs_old = sites[0] if sites else ""
    # scripts and data; the interpreter layer provides python itself
    for entry in sorted(os.listdir(venv)):
        full = os.path.join(venv, entry)
        if entry in ("lib", "lib64", "pyvenv.cfg") or os.path.islink(full):
            continue
        if entry == "bin":
            for fn in sorted(os.listdir(full)):
                if any(fnmatch.fnmatch(fn, p) for p in VENV_BIN_SKIP):
                    continue
                if _excluded("bin/" + fn, excludes):
                    continue
                _copy_entry(os.path.join(full, fn), os.path.join(staging, "bin", fn))
        elif os.path.isdir(full):
            copy_tree(full, os.path.join(staging, entry), list(ALWAYS_EXCLUDES[:2]) + list(excludes),
                      rel_base=entry)
        elif not _excluded(entry, excludes):
            _copy_entry(full, os.path.join(staging, entry))
    st.scrub = _real_variants(venv) + [p for p in _real_variants(base.prefix)
                                       if p not in _real_variants(venv)]
    st.moves = []
    for v in _real_variants(venv):
        for s in sites:
            for sv in dict.fromkeys((s, os.path.realpath(s))):  # (in order: a set's
                # order changes from run to run, and with it the re-pack keys)
                if sv.startswith(v + "/") or os.path.realpath(sv).startswith(v + "/"):
                    st.moves.append((sv, st.site_dir))
        st.moves.append((v, ""))
    st.moves += [(p, "") for p in _real_variants(base.prefix)]
    return st


def stage_directory(src: str, staging: str, excludes: list[str], name: str | None,
                    info: pyinfo.PyInfo) -> Staged:
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise PmbError(f"{src}: no such directory")
    st = Staged(root=staging, kind="directory", name=name or os.path.basename(src), info=info)
    copy_tree(src, staging, list(ALWAYS_EXCLUDES[:2]) + list(excludes))
    st.scrub = _real_variants(src)
    st.moves = [(p, "") for p in st.scrub]
    return st


def classify(path: str) -> str:
    """"venv" or "conda"; anything else is refused with one line."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise PmbError(f"{path}: no such directory")
    if pyinfo.is_venv(path):
        return "venv"
    if conda.is_conda_env(path):
        return "conda"
    if conda.looks_like_conda_env(path):
        raise PmbError(f"{path}: looks like a conda environment but conda-meta/ is missing, "
                       f"so conda's records of which files hold the prefix are gone; "
                       f"recreate the environment with conda")
    raise PmbError(f"{path} is not a venv (no pyvenv.cfg) and not a conda environment (no "
                   f"conda-meta/); give the directory made by 'python -m venv' or 'conda create'")


def copy_conda_prefix(env: "conda.CondaEnv", staging: str, excludes: list[str]) -> None:
    """The whole env, as conda-pack takes it: every top-level entry but the
    package cache and other envs, without byte code (compiled again later)."""
    pats = list(ALWAYS_EXCLUDES[:2]) + list(excludes)
    os.makedirs(staging, exist_ok=True)
    for entry in sorted(os.listdir(env.prefix)):
        if entry in conda.IGNORED_TOP or entry.endswith("~") or _excluded(entry, pats):
            continue
        full = os.path.join(env.prefix, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            copy_tree(full, os.path.join(staging, entry), pats, rel_base=entry)
        else:
            _copy_entry(full, os.path.join(staging, entry))
    for rel in conda.UNRECORDED_CONDA_SCRIPTS - env.managed:
        if lexists(os.path.join(staging, rel)):
            unlink(os.path.join(staging, rel))


def stage_conda(prefix: str, staging: str, excludes: list[str], name: str | None,
                for_launcher: bool = True, refuse_editable: bool = False) -> Staged:
    """A conda env is interpreter and packages in one tree: one package of
    kind interpreter (PYTHON_MPI_PACKAGES=NAME.tar.zst alone)."""
    prefix = os.path.abspath(prefix)
    env = conda.read_env(prefix)
    exe = pyinfo.interpreter_of(prefix, env.python_version)
    info = pyinfo.query(exe)
    if os.path.realpath(info.prefix) != os.path.realpath(prefix):
        raise PmbError(f"{exe} reports sys.prefix {info.prefix}, not {prefix}; is "
                       f"PYTHONHOME set, or is bin/python a link to another installation?")
    st = Staged(root=staging, kind="interpreter",
                name=name or os.path.basename(prefix.rstrip("/")), info=info)
    st.warnings += env.warnings  # conda packages pip changed: packed as on disk
    copy_conda_prefix(env, staging, excludes)
    ver = info.version
    if lexists(os.path.join(staging, "bin", f"python{ver}")):
        st.executable = f"bin/python{ver}"
    else:
        st.executable = os.path.relpath(exe, prefix)
    for n in (info.instsoname, info.ldlibrary, f"libpython{ver}.so"):
        if n and ".so" in n and exists(os.path.join(staging, "lib", n)):
            st.libpython = f"lib/{n}"
            break
    else:
        st.warnings.append(f"{prefix} has no lib/libpython{ver}.so; the launcher's embed mode "
                           f"needs one (use PYTHON_MPI_MODE=exec or stage-only)")
    st.site_dir = site_rel(info)
    st.site_abs_old = os.path.join(prefix, st.site_dir)
    st.scrub = _real_variants(prefix)
    st.moves = [(p, "") for p in st.scrub]
    absorb_editables(st, st.site_abs_old, st.scrub, refuse_editable)
    st.recorded = {rel: (r.mode, r.placeholder) for rel, r in env.prefix_files.items()
                   if isfile(os.path.join(staging, rel))}
    st.changed_binaries = env.changed_binaries
    if for_launcher and os.path.isdir(os.path.join(staging, st.site_dir)):
        with open(_own(os.path.join(staging, st.site_dir, conda.ACTIVATE_PTH)), "w") as f:
            f.write(conda.ACTIVATE_PTH_TEXT)
        add_staged_hook(staging, st.site_dir)
    return st


def stage_whole_venv(venv: str, staging: str) -> Staged:
    """A venv as it is (for relocate): bin/ with its interpreter links,
    pyvenv.cfg, activate scripts, site-packages; byte code left out."""
    venv = os.path.abspath(venv)
    pyinfo.read_pyvenv_cfg(venv)
    vinfo = pyinfo.query(pyinfo.interpreter_of(venv))
    st = Staged(root=staging, kind="environment", name=os.path.basename(venv), info=vinfo)
    copy_tree(venv, staging, list(ALWAYS_EXCLUDES[:2]))
    st.site_dir = os.path.relpath(vinfo.purelib, vinfo.prefix)
    st.site_abs_old = os.path.join(venv, st.site_dir)
    st.scrub = _real_variants(venv)
    st.moves = [(p, "") for p in st.scrub]
    return st


def _merge(interp: Staged, env: Staged) -> Staged:
    """One tree holding an interpreter layer and an environment layer."""
    st = dataclasses.replace(interp, name=env.name, site_dir=env.site_dir,
                             site_abs_old=env.site_abs_old)
    st.scrub = sorted(set(interp.scrub) | set(env.scrub), key=lambda p: (-len(p), p))
    st.moves = env.moves + [m for m in interp.moves if m not in env.moves]
    st.warnings = interp.warnings + env.warnings
    st.editables = interp.editables + env.editables
    return st


def stage_whole(source: str, staging: str, excludes: list[str], name: str) -> tuple[Staged, str]:
    """Stage an environment together with its interpreter, for one package:
    a venv (its base interpreter, then its packages), or a Python prefix
    that holds its own packages (a tree made by ``load``).  Returns the
    staged tree and the interpreter that byte-compiles it."""
    source = os.path.abspath(source)
    if not os.path.isdir(source):
        raise PmbError(f"{source}: no such directory")
    if conda.is_conda_env(source):  # a conda env holds its own interpreter
        st = stage_conda(source, staging, excludes, name)
        return st, pyinfo.interpreter_of(source, st.info.version)
    if pyinfo.is_venv(source):
        exe = pyinfo.base_interpreter_of_venv(source)
        interp = stage_interpreter(exe, staging, excludes, True, name)
        return _merge(interp, stage_venv(source, staging, excludes, name)), exe
    exe = pyinfo.interpreter_of(source)
    interp = stage_interpreter(exe, staging, excludes, True, name)
    info = interp.info
    if os.path.realpath(info.prefix) != os.path.realpath(source):
        raise PmbError(f"{exe} belongs to the Python installed in {info.prefix}, not to "
                       f"{source}; give a venv or a Python prefix")
    # everything else of the prefix: its packages, scripts, data (not the
    # interpreter files stage_interpreter took, nor load's activation files)
    taken = {"bin/python", "bin/python3", f"bin/python{info.version}", interp.libpython}
    skip = list(ALWAYS_EXCLUDES[:2]) + list(excludes) + [
        f"lib/python{info.version}", "bin/activate", "bin/activate.fish",
        ".python-mpi-bcast-load.json", ".python-mpi-bcast-site-mtime",
        ".python-mpi-bcast-relocate.json"]
    for entry in sorted(os.listdir(source)):
        full = os.path.join(source, entry)
        if entry == "lib":
            for sub in sorted(os.listdir(full)):
                rel = f"lib/{sub}"
                if rel in taken or _excluded(rel, skip) or sub.startswith("libpython"):
                    continue
                _copy_any(os.path.join(full, sub), os.path.join(staging, rel), skip, rel)
            continue
        if entry == "bin":
            for fn in sorted(os.listdir(full)):
                rel = f"bin/{fn}"
                if rel in taken or _excluded(rel, skip):
                    continue
                _copy_entry(os.path.join(full, fn), os.path.join(staging, rel))
            continue
        if _excluded(entry, skip):
            continue
        _copy_any(full, os.path.join(staging, entry), skip, entry)
    site = os.path.join(source, interp.site_dir)
    if os.path.isdir(site):
        copy_tree(site, os.path.join(staging, interp.site_dir),
                  list(ALWAYS_EXCLUDES[:2]) + list(excludes))
        absorb_editables(interp, site, _real_variants(source) + interp.scrub, False)
    interp.site_abs_old = site
    interp.moves = [(site, interp.site_dir)] + interp.moves
    interp.name = name
    return interp, exe


def _copy_any(src: str, dst: str, excludes: list[str], rel: str) -> None:
    if os.path.isdir(src) and not os.path.islink(src):
        copy_tree(src, dst, excludes, rel_base=rel)
    else:
        _copy_entry(src, dst)
