"""``python-mpi-bcast pack``: find → copy → relocate → compile → archive."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from . import collect, fixup, pyinfo, slim as slimming
from .archive import write_package
from .errors import PmbError
from .pkgformat import SUFFIX, Manifest
from .progress import Progress

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
    if os.path.exists(path) and not force:
        raise PmbError(f"{path} already exists; choose another --name or pass --force to replace it")
    return path


def pack(venv: str | None = None, python: str | None = None, with_python: bool = False,
         directory: str | None = None, output_dir: str = ".", name: str | None = None,
         excludes: list[str] | None = None, slim: bool = True, level: int = 10,
         threads: int = 0, shard_size: int = 8 << 20, force: bool = False,
         quiet: bool = False, tmpdir: str | None = None,
         drop_unused: bool = False) -> list[tuple[str, Manifest]]:
    """Pack an interpreter and/or a venv, a conda env (interpreter and
    packages in one package), or a plain directory.  ``drop_unused``
    (``--slim``): leave out tests, headers, documents and debug info
    (slim.py says which).

    Returns ``[(path, manifest), ...]`` for the files written, interpreter first.
    """
    excludes = list(excludes or [])
    output_dir = _check_output_dir(output_dir)
    jobs = []  # (kind, source)
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
    written = []
    threads = threads or os.cpu_count() or 1
    for kind, source in jobs:
        staging = tempfile.mkdtemp(prefix="pmb-stage-", dir=tmpdir)
        try:
            if kind == "interpreter":
                exe = pyinfo.resolve_interpreter(source)
                st = collect.stage_interpreter(exe, staging, excludes, slim, name)
                compiler = exe
            elif kind == "conda":
                st = collect.stage_conda(source, staging, excludes, name)
                compiler = collect.conda_python(os.path.abspath(source), st.info["version"])
            elif kind == "environment":
                st = collect.stage_venv(source, staging, excludes, name)
                compiler = pyinfo.base_interpreter_of_venv(source)
            else:
                exe = pyinfo.resolve_interpreter(None)
                st = collect.stage_directory(source, staging, excludes, name, pyinfo.query(exe))
                compiler = exe
            out = _target(output_dir, st.name, force)
            if drop_unused:
                _drop_unused(st)
            written.append(_finish(st, compiler, out, level, threads, shard_size, quiet))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def _drop_unused(st: collect.Staged) -> None:
    """--slim: tests, headers and documents of venv environments, debug
    info of the interpreter; says what went.  Conda envs are left whole
    (conda's records list their files for relocation)."""
    if st.kind == "interpreter":
        dropped = slimming.strip_interpreter(st.root)
    elif st.kind == "environment":
        dropped = slimming.slim_environment(st.root, st.site_dir)
    else:
        log.info("slim: %s: a %s package is packed whole", st.name, st.kind)
        return
    log.info("%s", dropped.summary(st.name))


def _finish(st: collect.Staged, compiler: str, out: str, level: int, threads: int,
            shard_size: int, quiet: bool) -> tuple[str, Manifest]:
    """relocate → compile → archive a staged tree into ``out`` (atomically)."""
    fixup.fix_symlinks(st)
    prefix_files = fixup.relocate_files(st)
    fixup.byte_compile(st, compiler, prefix_files, threads)
    for w in st.warnings:
        log.warning("%s", w)
    prog = Progress(f"packing {st.name}", enabled=False if quiet else None)
    m = write_package(st, prefix_files, out, level=level, threads=threads,
                      shard_size=shard_size, progress=prog)
    prog.finish()
    return out, m


def pack_whole(source: str, output_dir: str, name: str, excludes: list[str] | None = None,
               level: int = 10, threads: int = 0, shard_size: int = 8 << 20,
               force: bool = False, quiet: bool = True, tmpdir: str | None = None,
               ) -> tuple[str, Manifest, collect.Staged]:
    """Pack an environment *with* its interpreter into one package (what the
    cache saves): find → copy → relocate → compile → archive."""
    output_dir = _check_output_dir(output_dir)
    out = _target(output_dir, name, force)
    threads = threads or os.cpu_count() or 1
    staging = tempfile.mkdtemp(prefix="pmb-stage-", dir=tmpdir)
    try:
        st, compiler = collect.stage_whole(source, staging, list(excludes or []), name)
        out, m = _finish(st, compiler, out, level, threads, shard_size, quiet)
        return out, m, st
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pack_run_dir(src: str, output_dir: str, name: str, subdir: str, compiler: str,
                 level: int = 10, threads: int = 0, quiet: bool = True,
                 tmpdir: str | None = None) -> tuple[str, Manifest]:
    """A directory as a layer staged at TREE/``subdir`` (``run --with-dir``):
    find → copy → compile → archive.  Not relocated: what its files name
    stays as it is."""
    output_dir = _check_output_dir(output_dir)
    out = _target(output_dir, name, True)
    threads = threads or os.cpu_count() or 1
    staging = tempfile.mkdtemp(prefix="pmb-stage-", dir=tmpdir)
    try:
        src = os.path.abspath(src)
        info = pyinfo.query(compiler)
        st = collect.Staged(root=staging, kind="directory", name=name, info=info)
        collect.copy_tree(src, os.path.join(staging, subdir), list(collect.ALWAYS_EXCLUDES[:2]))
        st.moves = [(src, subdir)]
        fixup.fix_symlinks(st)
        fixup.byte_compile(st, compiler, [], threads)
        st.scrub = [src]  # recorded as the package's source
        prog = Progress(f"packing {name}", enabled=False if quiet else None)
        m = write_package(st, [], out, level=level, threads=threads, shard_size=8 << 20,
                          progress=prog)
        prog.finish()
        return out, m
    finally:
        shutil.rmtree(staging, ignore_errors=True)
