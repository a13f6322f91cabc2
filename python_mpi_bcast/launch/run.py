"""``python-mpi-bcast run LAUNCHER... python SCRIPT ARGS``: find the env →
key its content cheaply → pack into the cache only if that key is new →
rewrite the line (launchline.py) → export PYTHON_MPI_* → exec
(``plan``, then the CLI shows the line and calls ``launch``).

The environment is the one the line's python belongs to: a python named by
path → that environment; a bare ``python``/``python3`` → ``$VIRTUAL_ENV``,
else ``$CONDA_PREFIX``, else the python found on PATH.  The key is a hash of
what an install changes (the interpreter file, each distribution's name,
version and RECORD, ``.pth`` files, the site directory's top-level names,
``bin/``, ``conda-meta/``, and the size and time of each file an editable
install makes importable), never of the packages' bytes; the package is
``CACHE/run-<env>-<key>.tar.zst``.  The job holds a shared ``flock`` on the
packages it runs (an inherited descriptor that lives as long as the
launcher), so pruning (``--keep``) and ``rm`` never remove them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from typing import NoReturn

from .. import __version__
from ..source import conda, editable, pyinfo
from ..support.errors import PmbError
from ..support.report import log, say
from .launchline import LAUNCHERS, LaunchLine, LaunchLineError, export_fix, rewrite
from ..package.format import DEFAULT_LEVEL, FORMAT_VERSION, SUFFIX, read_manifest
from ..package.reuse import remove_sidecar, sidecar_of
from ..package.store import Lock, hold, is_held, load_record

TREE_SUBDIR = "pmb-run"


def is_env(path: str) -> bool:
    return (pyinfo.is_venv(path) or conda.is_conda_env(path)
            or load_record(path) is not None)


def _prefix_of(exe: str) -> str:
    """The environment a python executable belongs to (no symlink resolved:
    a venv's bin/python links to its base)."""
    exe = os.path.abspath(exe)
    guess = os.path.dirname(os.path.dirname(exe))
    if is_env(guess):
        return guess
    return pyinfo.query(exe).prefix


def find_env(python_word: str, environ: dict) -> tuple[str, str]:
    """(prefix, the rule that chose it)."""
    if "/" in python_word:
        if not os.path.isfile(python_word):
            raise PmbError(f"{python_word}: no such file (the python on the launch line)")
        prefix, rule = _prefix_of(python_word), f"the python named on the line ({python_word})"
    else:
        for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
            v = environ.get(var)
            if v and os.path.isdir(v):
                prefix, rule = v, f"${var}"
                break
        else:
            exe = shutil.which(python_word, path=environ.get("PATH", os.defpath))
            if exe is None:
                raise PmbError(f"{python_word} is not on PATH and no environment is active; "
                               f"activate your venv or conda env, or name its python by path")
            prefix, rule = _prefix_of(exe), f"{python_word} on PATH ({exe})"
    prefix = os.path.abspath(prefix)
    if not is_env(prefix):
        raise PmbError(f"{prefix} (from {rule}) is not a venv or conda environment; activate "
                       f"one, or name its python by path (e.g. $HOME/envs/x/bin/python)")
    asked = re.match(r"^python(3\.\d+)$", os.path.basename(python_word))
    have = _version_of(prefix)
    if asked and have and asked.group(1) != have:
        raise PmbError(f"the line asks for {os.path.basename(python_word)} but {prefix} (from "
                       f"{rule}) is Python {have}; write python3 or python{have}, or activate "
                       f"a Python {asked.group(1)} environment")
    return prefix, rule


def _version_of(prefix: str) -> str | None:
    """X.Y of an environment, from its files (no interpreter started)."""
    if pyinfo.is_venv(prefix):
        cfg = pyinfo.read_pyvenv_cfg(prefix)
        v = cfg.get("version_info") or cfg.get("version") or ""
        return ".".join(v.split(".")[:2]) or None
    found = glob.glob(os.path.join(prefix, "lib", "python3.*", "os.py"))
    return os.path.basename(os.path.dirname(found[0]))[6:] if len(found) == 1 else None


def _stat_bits(path: str) -> bytes:
    try:
        st = os.lstat(path)
    except OSError:
        return b"-"
    return f"{st.st_size}:{st.st_mtime_ns}".encode()


def _interpreter(prefix: str) -> str:
    """The interpreter file a package of ``prefix`` runs (a venv's base)."""
    if pyinfo.is_venv(prefix):
        return pyinfo.base_interpreter_of_venv(prefix)
    return os.path.realpath(pyinfo.interpreter_of(prefix))


def content_key(prefix: str) -> str:
    """16 hex digits that change whenever an install or uninstall changes
    the environment (and with this tool's version)."""
    h = hashlib.sha256()

    def add(*parts) -> None:
        for p in parts:
            h.update(p if isinstance(p, bytes) else str(p).encode())
            h.update(b"\0")

    add(__version__, FORMAT_VERSION, os.path.realpath(prefix))
    exe = _interpreter(prefix)
    add("interpreter", exe, _stat_bits(exe))
    cfg = os.path.join(prefix, "pyvenv.cfg")
    if os.path.isfile(cfg):
        with open(cfg, "rb") as f:
            add("pyvenv.cfg", f.read())
    sites = sorted(set(glob.glob(os.path.join(prefix, "lib*", "python3*", "site-packages"))
                       + glob.glob(os.path.join(prefix, "lib*", "python3*", "dist-packages"))))
    for site in sites:
        add("site", os.path.relpath(site, prefix))
        for entry in sorted(os.listdir(site)):
            full = os.path.join(site, entry)
            if entry == "__pycache__":
                continue
            add(entry)
            if entry.endswith(".pth"):
                add(_file_hash(full))
            elif entry.endswith((".dist-info", ".egg-info")):
                rec = os.path.join(full, "RECORD" if entry.endswith(".dist-info") else "PKG-INFO")
                add(_stat_bits(rec), _file_hash(rec))
        # editable installs: the files packed from their sources (an edit, a new module)
        inside = [os.path.abspath(prefix), os.path.realpath(prefix)]
        for ed in editable.find(site, inside).editables:
            add("editable", ed.name, ed.origin)
            for src, rel in ed.files:
                add(rel, _stat_bits(src))
            for src in ed.watch:  # a meson project's C sources: an edit is a rebuild to pack
                add("watch", src, _stat_bits(src))
    bindir = os.path.join(prefix, "bin")
    if os.path.isdir(bindir):
        for entry in sorted(os.listdir(bindir)):
            add("bin", entry, _stat_bits(os.path.join(bindir, entry)))
    meta = os.path.join(prefix, "conda-meta")
    if os.path.isdir(meta):
        for entry in sorted(os.listdir(meta)):
            add("conda-meta", entry, _stat_bits(os.path.join(meta, entry)))
    return h.hexdigest()[:16]


def dir_key(directory: str) -> str:
    """The --with-dir layer's key: every file's path, size and mtime (the
    directory is small and its files are what changes between runs)."""
    h = hashlib.sha256()
    h.update(f"{__version__}\0{FORMAT_VERSION}\0{os.path.realpath(directory)}\0".encode())
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            h.update(os.path.relpath(full, directory).encode() + b"\0" + _stat_bits(full) + b"\0")
    return h.hexdigest()[:16]


def _file_hash(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return b"-"


def safe_name(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", os.path.basename(os.path.abspath(path))) or "env"
    return name.lstrip(".-") or "env"


def _made_from(cache: str, kind: str, name: str, source: str, current: str) -> list[str]:
    """The ``<kind>-<name>-<key>`` packages made from ``source`` other than
    ``current``, newest first."""
    pat = re.compile(re.escape(f"{kind}-{name}-") + r"[0-9a-f]{16}" + re.escape(SUFFIX) + "$")
    sources = {os.path.abspath(source), os.path.realpath(source)}
    cands = []
    for fn in os.listdir(cache):
        path = os.path.join(cache, fn)
        if not pat.match(fn) or path == current:
            continue
        try:
            m = read_manifest(path)[0]
        except (PmbError, OSError):
            continue
        if sources & set(m.sources.split(":")):
            cands.append((os.stat(path).st_mtime, path))
    cands.sort(reverse=True)
    return [path for _, path in cands]


def previous_package(cache: str, kind: str, name: str, source: str, current: str) -> str | None:
    """The newest other package made from ``source`` that has a shard index
    (its unchanged shards are reused by the next pack)."""
    for path in _made_from(cache, kind, name, source, current):
        if os.path.exists(sidecar_of(path)):
            return path
    return None


def prune(cache: str, kind: str, name: str, source: str, keep: int, current: str) -> list[str]:
    """Remove the oldest ``<kind>-<name>-<key>`` packages made from
    ``source`` beyond the newest ``keep`` (the current one always stays),
    each with its shard index; one a running job holds is kept.  Returns
    what was removed."""
    removed = []
    for path in _made_from(cache, kind, name, source, current)[max(0, keep - 1):]:
        if is_held(path):
            log.info("keeping %s: a running job uses it", path)
            continue
        os.unlink(path)
        remove_sidecar(path)
        removed.append(path)
    return removed


def _ensure(cache: str, kind: str, name: str, key: str, source: str, keep: int, repack: bool,
            make) -> tuple[str, int]:
    """The package ``<kind>-<name>-<key>``, packed by ``make(out_name,
    previous)`` if missing (or ``repack``), reusing the unchanged shards of
    the newest previous package of ``source`` (``make`` returns what it
    reused, to say); held for the job; older ones pruned."""
    entry = f"{kind}-{name}-{key}"
    path = os.path.join(cache, entry + SUFFIX)
    with Lock(os.path.join(cache, f".{kind}-{name}.lock")):
        if os.path.exists(path) and not repack:
            say(f"using cached package {path}")
        else:
            # --repack: everything packed afresh, nothing taken from earlier packages
            old = None if repack else previous_package(cache, kind, name, source, path)
            say(f"packing {source} into {path}"
                + (f", reusing what did not change from {os.path.basename(old)}" if old else ""))
            reused = make(entry, old)
            if reused:
                say(f"packed {os.path.basename(path)}: {reused}")
        fd = hold(path)
        for gone in prune(cache, kind, name, source, keep, path):
            say(f"removed old package {gone}")
    return path, fd


def plan(line: list[str], with_dir: str | None = None, repack: bool = False, keep: int = 3,
         cache: str | None = None, dry_run: bool = False, environ: dict | None = None,
         quiet: bool = True, level: int = DEFAULT_LEVEL) -> tuple[LaunchLine, dict, list[int]]:
    """Pack what is missing and return (the rewritten line, the variables to
    export, the descriptors that hold the packages).  ``quiet``: no progress
    while packing."""
    from ..support.paths import launcher_path
    from ..support.paths import cache_dir
    environ = dict(os.environ if environ is None else environ)
    if keep < 1:
        raise PmbError(f"--keep {keep}: keep at least 1 package per environment")
    # the active env's own interpreters count as python whatever their names
    own = tuple(os.path.join(environ[v], "bin", n) for v in ("VIRTUAL_ENV", "CONDA_PREFIX")
                if environ.get(v) for n in ("python", "python3"))
    ll = rewrite(line, launcher_path(), own)
    prefix, rule = find_env(ll.python, environ)
    say(f"environment: {prefix} (from {rule})")
    run_dir = None
    if with_dir is not None:
        if ll.script_index is None:
            raise LaunchLineError("--with-dir needs a script on the line (python SCRIPT ARGS), "
                                  "not -c, -m or -")
        script = os.path.abspath(ll.script)
        if not os.path.isfile(script):
            raise PmbError(f"{ll.script}: no such script (for --with-dir)")
        run_dir = os.path.abspath(with_dir or os.path.dirname(script))
        if not os.path.isdir(run_dir):
            raise PmbError(f"--with-dir={with_dir}: no such directory")
        if not script.startswith(run_dir.rstrip("/") + "/"):
            raise PmbError(f"{ll.script} is not inside {run_dir}; give --with-dir the "
                           f"directory that holds the script")
    cache = cache_dir(cache)
    key = content_key(prefix)
    name = safe_name(prefix)
    exports = {"PYTHON_MPI_PKGROOT": cache}
    fds: list[int] = []
    entry = os.path.join(cache, f"run-{name}-{key}{SUFFIX}")
    if dry_run:
        packages = [os.path.basename(entry)]
        say(("using cached package " if os.path.exists(entry) and not repack
             else "would pack ") + entry)
    else:
        from ..packing.pack import pack_whole
        os.makedirs(cache, exist_ok=True)
        path, fd = _ensure(cache, "run", name, key, prefix, keep, repack,
                           lambda e, old: pack_whole(prefix, cache, e, force=True, quiet=quiet,
                                                     level=level, reuse_from=old,
                                                     tell_reused=False)[2].reused)
        fds.append(fd)
        packages = [os.path.basename(path)]
    if run_dir is not None:
        dname = safe_name(run_dir)
        dkey = dir_key(run_dir)
        sub = f"{TREE_SUBDIR}/{dname}"
        dentry = os.path.join(cache, f"rundir-{dname}-{dkey}{SUFFIX}")
        if dry_run:
            say(("using cached package " if os.path.exists(dentry) and not repack
                 else "would pack ") + dentry)
        else:
            from ..packing.pack import pack_run_dir
            compiler = _interpreter(prefix) if pyinfo.is_venv(prefix) else \
                pyinfo.interpreter_of(prefix)
            path, fd = _ensure(cache, "rundir", dname, dkey, run_dir, keep, repack,
                               lambda e, old: pack_run_dir(run_dir, cache, e, sub, compiler,
                                                           level=level, quiet=quiet,
                                                           reuse_from=old))
            fds.append(fd)
        packages.append(os.path.basename(dentry))
        ll.argv[ll.script_index] = f"{sub}/{os.path.relpath(os.path.abspath(ll.script), run_dir)}"
        exports["PYTHON_MPI_TREE_ARG"] = str(ll.script_index - ll.python_index)
    exports["PYTHON_MPI_PACKAGES"] = ":".join(packages)
    # every PYTHON_MPI_* setting the ranks will see, the user's own included
    passed = {k: v for k, v in environ.items()
              if k.startswith("PYTHON_MPI_") and k != "PYTHON_MPI_TREE_ARG"}
    passed.update(exports)
    export_fix(ll, passed, is_open_mpi(line[0], environ))
    return ll, exports, fds


def is_open_mpi(launcher: str, environ: dict) -> bool:
    """Whether the launcher word is Open MPI's mpirun/mpiexec: by its name
    where that tells (mpirun.openmpi, orterun, prterun), else by what its
    --version prints ("mpirun (Open MPI) 4.1.4"; hydra's says HYDRA)."""
    family = LAUNCHERS.get(os.path.basename(launcher))
    if family != "hydra" or os.path.basename(launcher) not in ("mpiexec", "mpirun"):
        return family == "ompi"
    try:
        r = subprocess.run([launcher, "--version"], capture_output=True, text=True,
                           timeout=30, env=environ, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in r.stdout + r.stderr


def shown(ll: LaunchLine, exports: dict) -> str:
    """The exports and the rewritten line, as a shell would take them."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in sorted(exports.items())]
                    + [shlex.join(ll.argv)])


def launch(ll: LaunchLine, exports: dict, fds: list[int]) -> NoReturn:
    """Exec the planned line with the exports (a PmbError if it cannot start)."""
    os.environ.pop("PYTHON_MPI_TREE_ARG", None)
    os.environ.update(exports)
    try:
        os.execvp(ll.argv[0], ll.argv)
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise PmbError(f"cannot start {ll.argv[0]}: {e.strerror}; is it on PATH?") from None
