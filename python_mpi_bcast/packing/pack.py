"""``python-mpi-bcast pack``: find → relocate → compile → archive, in one
pass over the source files (stream.py): collect stages a skeleton that names
them, the package writer reads each once."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import stat
import tempfile

from . import collect, relocatable, slim as slimming, stream
from ..support import leftovers
from ..source import pyinfo
from ..package.archive import SPLIT_FACTOR, write_package
from ..support.errors import PmbError
from ..package.format import DEFAULT_LEVEL, SUFFIX, Manifest, read_manifest
from ..support.progress import Progress

log = logging.getLogger("python_mpi_bcast")


def _check_output_dir(output_dir: str) -> str:
    output_dir = os.path.abspath(output_dir)
    if not os.path.isdir(output_dir):
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as e:
            raise PmbError(f"cannot create output directory {output_dir}: {e.strerror}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise PmbError(f"output directory {output_dir} is not writable; choose another with -o")
    return output_dir


def _target(output_dir: str, name: str, force: bool) -> str:
    if "/" in name or name.startswith(".") or not name:
        raise PmbError(f"invalid package name {name!r}")
    path = os.path.join(output_dir, name + SUFFIX)
    if os.path.lexists(path) and not force:
        raise PmbError(f"{path} already exists; choose another --name or pass --force to replace it")
    if os.path.lexists(path):
        # --force replaces only a package; anything else is someone's data
        try:
            ours = os.path.isfile(path) and read_manifest(path) is not None
        except (PmbError, OSError):
            ours = False
        if not ours:
            raise PmbError(f"{path} already exists and is not a python-mpi-bcast package; it "
                           f"was left as it is: remove it yourself or choose another name")
    return path


def pack(venv: str | None = None, python: str | None = None, with_python: bool = False,
         directory: str | None = None, output_dir: str = ".", name: str | None = None,
         excludes: list[str] | None = None, slim: bool = True, level: int = DEFAULT_LEVEL,
         threads: int = 0, shard_size: int = 8 << 20, force: bool = False,
         quiet: bool = False, tmpdir: str | None = None,
         drop_unused: bool = False, copy: bool = False,
         refuse_editable: bool = False,
         reuse: str | None = None, split: bool = True) -> list[tuple[str, Manifest]]:
    """Pack an interpreter and/or a venv, a conda env (interpreter and
    packages in one package), or a plain directory.  ``drop_unused``
    (``--slim``): leave out tests, headers, documents and debug info
    (slim.py says which).  Editable installs are packed as copies of what
    they make importable (source/editable.py), or with ``refuse_editable``
    refused as before.  ``copy``: copy the tree into ``tmpdir``, relocate
    and compile it there, then archive it (how packing worked before it
    streamed; the reference tests/packing/test_pack.py holds the streaming writer to).
    ``reuse``: a previous package of the same source whose shards are
    copied where nothing they hold changed (package/reuse.py); with
    ``force``, the package being replaced is that one unless told otherwise.
    ``split=False`` (``--no-split``): every file whole (a package of format
    version 2, which launchers older than version 3 read).

    Returns ``[(path, manifest), ...]`` for the files written, interpreter first.
    """
    excludes = list(excludes or [])
    output_dir = _check_output_dir(output_dir)
    if reuse is not None:
        if copy:
            raise PmbError("--reuse works with the streaming packer only (not with --copy)")
        if not os.path.isfile(reuse):
            raise PmbError(f"--reuse {reuse}: no such package")
        read_manifest(reuse)  # one line if it is not a package
    jobs = []  # (kind, source)
    if (venv is None and directory is None and python is not None
            and os.path.isdir(python) and pyinfo.is_venv(python)):
        # 'pack --python VENV': --python took the venv as its argument and
        # packs its base interpreter (as documented: README's quick start
        # packs the interpreter and the venv in two commands); say so, as a
        # user may have meant the venv too (said once it is packed, so a
        # failure stays one line)
        note = (f"--python {python}: packed that venv's base interpreter only, not the "
                f"venv; to pack the venv too: pack {shlex.quote(python)} --python")
    else:
        note = None
    if venv is not None and collect.classify(venv) == "conda":
        if with_python or python is not None or directory is not None:
            raise PmbError(f"{venv} is a conda environment, which holds its own interpreter: "
                           f"pack it alone (one package, no --python)")
        jobs.append(("conda", venv))
        venv = None
    if with_python or python is not None:
        jobs.append(("interpreter", python if python is not None else venv))
    if venv is not None:
        jobs.append(("environment", venv))
    if directory is not None:
        jobs.append(("directory", directory))
    if not jobs:
        raise PmbError("nothing to pack: give a venv, --python [PREFIX] or --directory DIR")
    if name is not None and len(jobs) > 1:
        raise PmbError("--name applies to one package; pack the interpreter and the venv "
                       "in two commands to name both")
    # fail early: every package's name is free (or --force may replace it) and
    # the output directory has room, before any file of a source is read
    for kind, source in jobs:
        _target(output_dir, _job_name(kind, source, name), force)
    _check_output_room(output_dir, sum(_source_bytes(kind, source) for kind, source in jobs))
    written = []
    threads = threads or os.cpu_count() or 1
    for kind, source in jobs:
        staging = _staging_dir(tmpdir)
        try:
            interp = pyinfo.resolve_interpreter(source) if kind == "interpreter" else None
            with _lazy(not copy), _room_for_staging(staging, None if interp else source, interp):
                if kind == "interpreter":
                    exe = pyinfo.resolve_interpreter(source)
                    st = collect.stage_interpreter(exe, staging, excludes, slim, name)
                    compiler = exe
                elif kind == "conda":
                    st = collect.stage_conda(source, staging, excludes, name,
                                             refuse_editable=refuse_editable)
                    compiler = pyinfo.interpreter_of(os.path.abspath(source), st.info.version)
                elif kind == "environment":
                    st = collect.stage_venv(source, staging, excludes, name,
                                            refuse_editable=refuse_editable)
                    compiler = pyinfo.base_interpreter_of_venv(source)
                else:
                    exe = pyinfo.resolve_interpreter(None)
                    st = collect.stage_directory(source, staging, excludes, name,
                                                 pyinfo.query(exe))
                    compiler = exe
                out = _target(output_dir, st.name, force)  # again: it may have appeared since
                if drop_unused:
                    _drop_unused(st, conda_env=kind == "conda")
                if copy:
                    prefix_files = _prepare(st, compiler, threads)
                    written.append(_archive(st, prefix_files, out, level, threads, shard_size,
                                            quiet, replace=force, split=split))
                else:
                    # -f over an earlier package: its unchanged shards are reused
                    # (the keys decide; one of another source shares none)
                    prev = reuse if reuse is not None else (
                        out if force and os.path.isfile(out) else None)
                    written.append(_stream(st, compiler, out, level, threads, shard_size, quiet,
                                           replace=force, reuse_from=prev, split=split))
                _say_changed_binaries(st)
            _say_editables(st)
        finally:
            leftovers.remove(staging)
    if note:
        log.info("%s", note)
    return written


def _job_name(kind: str, source: str | None, name: str | None) -> str:
    """The name the package of one job gets (as collect's stage_* name it),
    known before anything is staged."""
    if name is not None:
        return name
    if kind == "interpreter":
        return f"python-{pyinfo.query(pyinfo.resolve_interpreter(source)).version}"
    return os.path.basename(os.path.abspath(source).rstrip("/"))


def _source_bytes(kind: str, source: str | None) -> int:
    """About how many bytes a job reads: its files' sizes (from their
    metadata only), byte code left out as packing leaves it out."""
    if kind == "interpreter":
        try:
            return _tree_bytes(pyinfo.query(pyinfo.resolve_interpreter(source)).stdlib)
        except (PmbError, KeyError, OSError):
            return 0
    return _tree_bytes(source) if source and os.path.isdir(source) else 0


# No Python environment compresses below this fraction of its files' bytes
# (measured: numpy+scipy venv about 1/3, torch with CUDA 1/2.1, pure-Python
# trees about 1/5); a directory with less free space than that cannot hold
# the package, and the pack is refused before it starts.
MIN_PACKAGE_FRACTION = 1 / 8


def _check_output_room(output_dir: str, source_bytes: int) -> None:
    need = int(source_bytes * MIN_PACKAGE_FRACTION)
    try:
        sv = os.statvfs(output_dir)
    except OSError:
        return
    free = sv.f_bavail * sv.f_frsize
    if free < need:
        raise PmbError(f"no space left in {output_dir} for the package: its sources hold "
                       f"{source_bytes / 1e6:.0f} MB, so the package needs at least about "
                       f"{need / 1e6:.0f} MB, and {free / 1e6:.0f} MB are free; free space "
                       f"there or choose another -o directory")


def _drop_unused(st: collect.Staged, conda_env: bool = False) -> None:
    """--slim: tests, headers and documents of venv environments, debug
    info of the interpreter; says what went.  Conda envs (staged as an
    interpreter package) are left whole: conda's records list their files
    for relocation."""
    if conda_env:
        log.info("slim: %s: a conda environment is packed whole", st.name)
        return
    if st.kind == "interpreter":
        dropped = slimming.strip_interpreter(st.root)
    elif st.kind == "environment":
        dropped = slimming.slim_environment(st.root, st.site_dir)
    else:
        log.info("slim: %s: a %s package is packed whole", st.name, st.kind)
        return
    log.info("%s", dropped.summary(st.name))


def _staging_dir(tmpdir: str | None) -> str:
    where = os.path.abspath(tmpdir or tempfile.gettempdir())
    try:
        return leftovers.mkdtemp(prefix="pmb-stage-", dir=where)
    except OSError as e:
        raise PmbError(f"cannot create a staging directory in {where}: {e.strerror or e}; set "
                       f"TMPDIR to a writable directory (it holds the tree's directories and "
                       f"links only)") from None


def _tree_bytes(top: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                total += st.st_size
    return total


def staging_room(source: str | None, interpreter: str | None) -> int:
    """The bytes of ``source``'s files (and of the interpreter's standard
    library): what a staging copy (``pack(copy=True)``) takes, and what the
    skeleton's virtual files stand for."""
    total = _tree_bytes(source) if source and os.path.isdir(source) else 0
    if interpreter:
        try:
            info = pyinfo.query(interpreter)
            total += _tree_bytes(info.stdlib)
        except (PmbError, KeyError, OSError):
            pass
    return total


class _room_for_staging:
    """Turn 'no space left' while staging into one line that says what the
    staging directory holds and what to do (TMPDIR)."""

    def __init__(self, staging: str, source: str | None, interpreter: str | None):
        self.staging, self.source, self.interpreter = staging, source, interpreter

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or \
            (isinstance(e, PmbError) and "No space left on device" in str(e))
        if not full:
            return False
        where = os.path.dirname(self.staging)
        try:  # the skeleton's directories: out of inodes rather than blocks?
            sv = os.statvfs(where)
            inodes = " and no free inodes" if sv.f_files and not sv.f_favail else ""
        except OSError:
            inodes = ""
        leftovers.remove(self.staging)  # so the free space shown is the real one
        need = staging_room(self.source, self.interpreter)
        try:
            sv = os.statvfs(where)
            free = f", {sv.f_bavail * sv.f_frsize / 1e6:.0f} MB free{inodes}"
        except OSError:
            free = ""
        raise PmbError(f"no space left in {where} for the staging skeleton of "
                       f"{self.source or self.interpreter} (the directories and links of "
                       f"its {need / 1e6:.0f} MB of files{free}); set TMPDIR "
                       f"to a directory with more room") from None


def _lazy(on: bool):
    return collect.lazy_copies() if on else contextlib.nullcontext()


def _stream(st: collect.Staged, compiler: str | None, out: str, level: int, threads: int,
            shard_size: int, quiet: bool, replace: bool = True, before_rename=None,
            relocate: bool = True, reuse_from: str | None = None,
            tell_reused: bool = True, split: bool = True) -> tuple[str, Manifest]:
    """relocate → compile → archive a staged skeleton into ``out``, reading
    each source file once (stream.py).  ``tell_reused=False``: the caller
    says what was reused (``run``)."""
    relocatable.fix_symlinks(st)
    prog = Progress(f"packing {st.name}", enabled=False if quiet else None)
    m = stream.write(st, compiler, out, level, threads, shard_size, progress=prog,
                     replace=replace, before_rename=before_rename, relocate=relocate,
                     reuse_from=reuse_from, split=split)
    prog.finish()
    if st.reused and not quiet and tell_reused:
        log.info("packing %s: %s", st.name, st.reused)
    for rel in st.compiled_in:
        log.debug("%s: keeps a compiled-in path of the old location (a fallback only; "
                  "not rewritten)", rel)
    for w in st.warnings:
        log.warning("%s", w)
    return out, m


def _say_changed_binaries(st: collect.Staged) -> None:
    """One line per binary that still names the source location although
    conda's record of where is void (the file changed since conda wrote it):
    packed as it is, so on the nodes it would look there."""
    for rel in st.compiled_in:
        pkg = st.changed_binaries.get(rel)
        if pkg:
            log.warning("%s: a binary conda recorded as holding the environment's location "
                        "(package %s) has changed since (its size is not the recorded one), "
                        "so it was packed as it is and still names %s; reinstall that "
                        "package with conda, or rebuild the file, and pack again",
                        rel, pkg, st.scrub[0] if st.scrub else "the source")


def _prepare(st: collect.Staged, compiler: str, threads: int) -> list:
    """relocate → compile a staged tree; returns the prefix-bearing files."""
    relocatable.fix_symlinks(st)
    prefix_files = relocatable.relocate_files(st)
    relocatable.byte_compile(st, compiler, prefix_files, threads)
    for w in st.warnings:
        log.warning("%s", w)
    return prefix_files


def _say_editables(st: collect.Staged) -> None:
    """One line per editable project packed (once the package is written,
    so a failure stays one line)."""
    for ed in st.editables:
        log.info("editable project %s (%s): packed %d files from %s; an edit there needs a "
                 "new pack", f"{ed.name} {ed.version}".strip(), ed.kind, len(ed.files),
                 ed.origin)


def _archive(st: collect.Staged, prefix_files: list, out: str, level: int, threads: int,
             shard_size: int, quiet: bool, replace: bool = True,
             before_rename=None, split: bool = True) -> tuple[str, Manifest]:
    """archive a prepared tree into ``out`` (atomically)."""
    prog = Progress(f"packing {st.name}", enabled=False if quiet else None)
    m = write_package(st, prefix_files, out, level=level, threads=threads,
                      shard_size=shard_size, progress=prog, replace=replace,
                      before_rename=before_rename, split=SPLIT_FACTOR if split else 0)
    prog.finish()
    return out, m


def pack_whole(source: str, output_dir: str, name: str, excludes: list[str] | None = None,
               level: int = DEFAULT_LEVEL, threads: int = 0, shard_size: int = 8 << 20,
               force: bool = False, quiet: bool = True, tmpdir: str | None = None,
               before_rename=None, reuse_from: str | None = None, tell_reused: bool = True
               ) -> tuple[str, Manifest, collect.Staged]:
    """Pack an environment *with* its interpreter into one package (what the
    cache saves): find → stage a skeleton (directories; files virtual) →
    stream each file, relocated and compiled, into the package.  Without
    ``force`` an existing package is never replaced, even one that appears
    while this one is written (see :func:`archive.write_package`).
    ``reuse_from``: a previous package whose unchanged shards are copied."""
    output_dir = _check_output_dir(output_dir)
    out = _target(output_dir, name, force)
    _check_output_room(output_dir, _tree_bytes(source) if os.path.isdir(source) else 0)
    threads = threads or os.cpu_count() or 1
    staging = _staging_dir(tmpdir)
    try:
        interp = None
        if pyinfo.is_venv(source):
            try:
                interp = pyinfo.base_interpreter_of_venv(source)
            except PmbError:
                pass
        with _lazy(True), _room_for_staging(staging, source, interp):
            st, compiler = collect.stage_whole(source, staging, list(excludes or []), name)
            out, m = _stream(st, compiler, out, level, threads, shard_size, quiet,
                             replace=force, before_rename=before_rename,
                             reuse_from=reuse_from, tell_reused=tell_reused)
        _say_changed_binaries(st)
        _say_editables(st)
        return out, m, st
    finally:
        leftovers.remove(staging)


def pack_run_dir(src: str, output_dir: str, name: str, subdir: str, compiler: str,
                 level: int = DEFAULT_LEVEL, threads: int = 0, quiet: bool = True,
                 tmpdir: str | None = None, reuse_from: str | None = None) -> str:
    """A directory as a layer staged at TREE/``subdir`` (``run --with-dir``):
    find → stage a skeleton → stream each file, compiled, into the package.
    Not relocated: what its files name
    stays as it is.  Returns what it reused of ``reuse_from``."""
    output_dir = _check_output_dir(output_dir)
    out = _target(output_dir, name, True)
    threads = threads or os.cpu_count() or 1
    staging = _staging_dir(tmpdir)
    try:
        src = os.path.abspath(src)
        info = pyinfo.query(compiler)
        st = collect.Staged(root=staging, kind="directory", name=name, info=info)
        with _lazy(True):
            collect.copy_tree(src, os.path.join(staging, subdir),
                              list(collect.ALWAYS_EXCLUDES[:2]))
            st.moves = [(src, subdir)]
            st.scrub = [src]  # recorded as the package's source; nothing is rewritten
            _stream(st, compiler, out, level, threads, 8 << 20, quiet, relocate=False,
                    reuse_from=reuse_from, tell_reused=False)
            return st.reused
    finally:
        leftovers.remove(staging)
