"""Read a conda environment's own records (``conda-meta/*.json``).

A conda env differs from a venv in two ways only (DESIGN.md): it holds its
own interpreter, and conda recorded which files hold the build prefix.  Each
installed package has ``conda-meta/NAME-VERSION-BUILD.json`` whose
``paths_data.paths[]`` entries carry ``_path`` and, for prefix-bearing
files, ``prefix_placeholder`` (the build prefix compiled or written into the
file) and ``file_mode`` (``text`` or ``binary``).  At install, conda replaced
the placeholder by the env's prefix: in text files plainly, in binary files
inside each NUL-terminated string, padding the string with NULs so the file
keeps its layout.  Files pip installed into the env have no record.  A
``noarch: python`` package's files are ``site-packages/...`` and
``python-scripts/...`` in the package; conda places them under the env's
``lib/pythonX.Y/site-packages`` and ``bin/``, and its record names the placed
paths (conda < 4.4 wrote the package's own into ``paths_data``: mapped here).

The disk is the truth: most envs have had ``pip install`` run in them, and pip
replaces and removes files conda recorded without telling conda.  A file a
pip ``RECORD`` lists (a ``*.dist-info`` whose ``INSTALLER`` is not conda) is
pip's, whatever conda's record says; conda's records of files that are gone
become one warning per conda package, not an error.  A prefix file whose
content no longer matches conda's record (the size of a binary one, the
``sha256_in_prefix`` of a text one) is scanned for the prefix like any other
file, not rewritten as the record says.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import os

from ..support.errors import PmbError

# Top-level entries of a conda prefix that are not part of the environment
# (the base env of an installation holds the package cache and other envs).
IGNORED_TOP = frozenset({"pkgs", "envs", "conda-bld", ".conda_lock", ".index", ".unionfs",
                         ".nonadmin", "conda-recipes"})
# Scripts that older conda versions dropped into child envs, unrecorded.
UNRECORDED_CONDA_SCRIPTS = frozenset({"bin/conda", "bin/activate", "bin/deactivate"})


@dataclasses.dataclass
class PrefixRecord:
    mode: str          # "text" or "binary"
    placeholder: str   # the build prefix conda replaced by the env prefix


@dataclasses.dataclass
class CondaEnv:
    prefix: str
    python_version: str                     # "3.11.7", "" when python is not installed
    managed: set[str]                       # every path conda installed (relative)
    prefix_files: dict[str, PrefixRecord]   # the recorded prefix-bearing files
    packages: list[str]                     # "name-version-build"
    specs: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)
    # (name, version, build, channel) of each record, for environment.yml
    pip_owned: set[str] = dataclasses.field(default_factory=set)  # listed by pip's RECORDs
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per changed package
    # conda package name -> the Python distribution of its (dist-info spelling) that
    # pip replaced or removed: its recorded *.dist-info is gone or now pip's
    pip_replaced: dict[str, str] = dataclasses.field(default_factory=dict)
    # recorded binary prefix files changed since conda wrote them (path -> the
    # "name-version-build" of their package): their record no longer applies
    changed_binaries: dict[str, str] = dataclasses.field(default_factory=dict)


def is_conda_env(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "conda-meta"))


def looks_like_conda_env(path: str) -> bool:
    """A prefix with conda's traces but without ``conda-meta``."""
    return any(os.path.exists(os.path.join(path, p))
               for p in ("etc/conda", "condabin", "bin/conda", "conda-meta"))


def read_env(prefix: str) -> CondaEnv:
    """Read every ``conda-meta/*.json`` record of ``prefix`` and check that
    the files they list are there."""
    prefix = os.path.abspath(prefix)
    meta = os.path.join(prefix, "conda-meta")
    if not os.path.isdir(meta):
        raise PmbError(f"{prefix}: conda-meta/ is missing, so conda's records of which files "
                       f"hold the prefix are gone; recreate the environment with conda")
    env = CondaEnv(prefix=prefix, python_version="", managed=set(), prefix_files={},
                   packages=[])
    records: list[tuple[str, dict, list[str], list]] = []
    for fn in sorted(os.listdir(meta)):
        if not fn.endswith(".json"):
            continue
        path = os.path.join(meta, fn)
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except ValueError as e:
            raise PmbError(f"{path}: corrupt JSON ({e}); restore it or reinstall that package "
                           f"with conda") from None
        except OSError as e:
            raise PmbError(f"{path}: cannot read: {e.strerror}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise PmbError(f"{path}: not a conda package record (no 'name'); restore it or "
                           f"reinstall that package with conda")
        env.packages.append(f"{rec['name']}-{rec.get('version', '?')}-{rec.get('build', '?')}")
        # "https://conda.anaconda.org/conda-forge/linux-64" or "conda-forge"
        parts = [c for c in str(rec.get("channel") or "").split("/") if c]
        if parts and (parts[-1] == rec.get("subdir") or parts[-1] == "noarch"
                      or parts[-1].startswith(("linux-", "osx-", "win-"))):
            parts.pop()
        channel = parts[-1] if parts and ":" not in parts[-1] else ""
        env.specs.append((rec["name"], str(rec.get("version", "")), str(rec.get("build", "")),
                          channel))
        if rec["name"] == "python":
            env.python_version = str(rec.get("version", ""))
        paths = (rec.get("paths_data") or {}).get("paths")
        files = [p.get("_path") for p in paths] if isinstance(paths, list) else rec.get("files", [])
        if not isinstance(files, list) or not all(isinstance(p, str) for p in files):
            raise PmbError(f"{path}: corrupt record (its file list is not a list of paths); "
                           f"restore it or reinstall that package with conda")
        records.append((fn, rec, files, paths if isinstance(paths, list) else []))
    site = f"lib/python{'.'.join(env.python_version.split('.')[:2])}/site-packages"
    for i, (fn, rec, files, paths) in enumerate(records):
        if _is_noarch_python(rec) and env.python_version:
            files = [_noarch_target(rel, site) for rel in files]
            paths = [dict(p, _path=_noarch_target(p["_path"], site)) for p in paths]
            records[i] = (fn, rec, files, paths)
        for rel in files:
            if os.path.isabs(rel) or ".." in rel.split("/"):
                raise PmbError(f"{os.path.join(meta, fn)}: lists {rel!r}, outside the "
                               f"environment")
            env.managed.add(rel)
    env.pip_owned = pip_owned_files(prefix, env.managed)
    for idx, (fn, rec, files, paths) in enumerate(records):
        # a .pyc that failed to compile is recorded but absent (conda-pack does the same)
        gone = [rel for rel in files
                if not rel.endswith(".pyc") and not os.path.lexists(os.path.join(prefix, rel))]
        taken = [rel for rel in files if rel in env.pip_owned]
        if gone or taken:
            env.warnings.append(_changed_line(fn, rec, gone, taken))
            dist = _dist_of(gone + taken)
            if dist:
                env.pip_replaced[rec["name"]] = dist
        for p in paths:
            ph = p.get("prefix_placeholder")
            if not ph or p.get("_path") in env.pip_owned:
                continue
            if not _as_installed(prefix, p):
                if p.get("file_mode") == "binary":
                    env.changed_binaries[p["_path"]] = env.packages[idx]
            else:
                mode = p.get("file_mode") or "text"
                if mode not in ("text", "binary"):
                    raise PmbError(f"{os.path.join(meta, fn)}: {p['_path']} has file_mode "
                                   f"{mode!r} (expected text or binary); restore the record "
                                   f"or reinstall the package")
                env.prefix_files[p["_path"]] = PrefixRecord(mode, ph)
    return env


def _is_noarch_python(rec: dict) -> bool:
    """A ``noarch: python`` package: conda's record says ``"noarch": "python"``
    (or ``{"type": "python"}``), or ``"package_type": "noarch_python"``."""
    n = rec.get("noarch")
    if isinstance(n, dict):
        n = n.get("type")
    return n == "python" or rec.get("package_type") == "noarch_python"


def _noarch_target(rel: str, site: str) -> str:
    """Where conda placed a noarch: python package's file: its
    ``site-packages/...`` under the env's lib/pythonX.Y/site-packages, its
    ``python-scripts/...`` under bin/.  Records name the placed paths, but
    conda < 4.4 wrote the package's own paths into ``paths_data``."""
    if rel.startswith("site-packages/"):
        return site + rel[len("site-packages"):]
    if rel.startswith("python-scripts/"):
        return "bin" + rel[len("python-scripts"):]
    return rel


def _as_installed(prefix: str, p: dict) -> bool:
    """Whether the prefix file of the record ``p`` is still the file conda
    wrote, so the record describes it: a binary one still has its recorded
    size (conda pads the prefix and keeps binary sizes, and so does every
    later move of the env: conda-unpack, relocate); a text one still has
    the sha256 conda recorded after its rewrite (``sha256_in_prefix``, where
    present; a text file whose prefix a move rewrote fails it, and is then
    scanned for the prefix, which rewrites text files the same way).  A file
    changed since (an edit, a rebuild, a wrapper script in its place) is
    scanned for the prefix like any file instead of being rewritten as the
    record says."""
    full = os.path.join(prefix, p["_path"])
    if os.path.islink(full) or not os.path.isfile(full):
        return False
    if p.get("file_mode") == "binary":
        size = p.get("size_in_bytes")
        return not isinstance(size, int) or os.path.getsize(full) == size
    want = p.get("sha256_in_prefix")
    if isinstance(want, str) and want:
        h = hashlib.sha256()
        try:
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return True  # unreadable: collect names it
        return h.hexdigest() == want.lower()
    return True


def _dist_of(paths: list[str]) -> str:
    """The distribution name of the first ``site-packages/NAME-VERSION.dist-info/``
    among ``paths`` (as the directory spells it), or ''."""
    for rel in paths:
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.endswith(".dist-info") and i and parts[i - 1] == "site-packages":
                return part[:-len(".dist-info")].split("-")[0]
    return ""


def _changed_line(fn: str, rec: dict, gone: list[str], taken: list[str]) -> str:
    """One line for a conda package whose files pip (or someone) changed."""
    what = []
    if gone:
        what.append(f"{len(gone)} of its files are gone")
    if taken:
        what.append(f"{len(taken)} {'are' if gone else 'of its files are'} now pip's")
    # pip removes a distribution's whole .dist-info; nothing else does that
    by_pip = taken or any(".dist-info/" in rel for rel in gone)
    why = ("pip replaced/removed them" if by_pip else
           "removed outside conda (pip uninstalling another package, or by hand)")
    return (f"conda package {rec['name']} {rec.get('version', '?')} (conda-meta/{fn}): "
            f"{' and '.join(what)}; {why}, so the env is taken as it is on disk")


def pip_owned_files(prefix: str, conda_managed: set[str]) -> set[str]:
    """The files (relative to ``prefix``) that pip's ``RECORD``s list: those
    of every ``*.dist-info`` in the env's site directories that pip (or uv...)
    installed, not conda.  A dist-info is conda's when its ``INSTALLER`` says
    ``conda``, or when it has none and conda's records list it."""
    owned: set[str] = set()
    real = os.path.realpath(prefix)
    records = []
    for libdir in sorted(glob.glob(os.path.join(prefix, "lib", "python*"))):
        if not os.path.islink(libdir):  # lib/python3.1 -> python3.12: the same files again
            records += sorted(glob.glob(os.path.join(libdir, "site-packages", "*.dist-info",
                                                     "RECORD")))
    for record in records:
        dist = os.path.dirname(record)
        site = os.path.dirname(dist)
        try:
            with open(os.path.join(dist, "INSTALLER"), encoding="utf-8",
                      errors="replace") as f:
                installer = f.read().strip()
        except OSError:
            installer = None
        rel_record = os.path.relpath(record, prefix)
        if installer == "conda" or (installer is None and rel_record in conda_managed):
            continue
        try:
            with open(record, encoding="utf-8", errors="surrogateescape") as f:
                rows = list(csv.reader(io.StringIO(f.read())))
        except (OSError, csv.Error):
            continue  # an unreadable RECORD: its files stay conda's, as before
        for row in rows:
            if not row or not row[0]:
                continue
            p = row[0]
            full = os.path.normpath(p if os.path.isabs(p) else os.path.join(site, p))
            for base in (prefix, real):
                if full.startswith(base + "/"):
                    owned.add(os.path.relpath(full, base))
                    break
    return owned


ACTIVATE_PTH = "_python_mpi_bcast_conda.pth"
# Run by site at start-up in every rank started by python-mpi: what
# 'conda activate' would have set for the staged tree.  The activate.d
# scripts are not run (no shell starts on the ranks); see README.
ACTIVATE_PTH_TEXT = (
    "import os, sys; t = os.environ.get('PYTHON_MPI_TREE'); "
    "t and os.path.realpath(t) == os.path.realpath(sys.prefix) and (os.environ.update("
    "CONDA_PREFIX=sys.prefix, CONDA_DEFAULT_ENV=sys.prefix, CONDA_SHLVL='1', "
    "PATH=os.path.join(sys.prefix, 'bin') + os.pathsep + os.environ.get('PATH', '')))\n"
)
