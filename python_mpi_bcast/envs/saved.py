"""Saved environments: ``create``, ``save``, ``load``, ``list``, ``rm``,
``activate``.

The cache is a package root: ``save NAME`` packs the environment together
with its interpreter into ``NAME.tar.zst`` there (atomically: written under a
temporary name, renamed when complete, so a failed or killed save never
damages the previous entry), so ``PYTHON_MPI_PKGROOT=<cache>
PYTHON_MPI_PACKAGES=NAME.tar.zst`` launches it on any number of ranks.  A
small ``NAME.json`` beside it records what ``list`` shows; it is advisory
(checked against the package's content hash, written before the package
is renamed into place).  ``load`` is ``unpack`` into node-local scratch plus
activation scripts and a record of what was loaded (and from which entry),
so a changed environment shows as dirty; the tree appears only complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

from ..source import pyinfo
from ..support.errors import PmbError
from ..support.files import write_atomic
from ..package.format import DEFAULT_LEVEL, SUFFIX, read_manifest
from ..package.reuse import remove_sidecar
from ..package.store import LOAD_RECORD, is_held, load_record

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name.endswith(SUFFIX):
        raise PmbError(f"invalid environment name {name!r}: use letters, digits and . _ + - "
                       f"(not starting with a dot or dash)")
    return name


def scratch_dir() -> str:
    """Node-local scratch: $SLURM_TMPDIR in a job, else $TMPDIR, else /tmp."""
    for var in ("SLURM_TMPDIR", "TMPDIR"):
        v = os.environ.get(var)
        if v and os.path.isabs(v):
            return os.path.join(v, "python-mpi-bcast")
    return os.path.join("/tmp", f"python-mpi-bcast-{os.geteuid()}")


def site_fingerprint(prefix: str, site_dir: str) -> tuple[str, list[list[str]]]:
    """What is installed: the distributions (name, version) and a hash over
    their RECORD files.  Cheap: no file of the packages themselves is read."""
    site = os.path.join(prefix, site_dir)
    dists = []
    h = hashlib.sha256()
    try:
        entries = sorted(os.listdir(site))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.endswith(".dist-info"):
            continue
        name, _, version = entry[:-len(".dist-info")].partition("-")
        dists.append([name, version])
        h.update(entry.encode() + b"\0")
        try:
            with open(os.path.join(site, entry, "RECORD"), "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        except OSError:
            h.update(b"-")
    return h.hexdigest(), dists


def _entry(cache: str, name: str) -> str:
    return os.path.join(cache, check_name(name) + SUFFIX)


def _write_json_atomic(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", chmod=0o644)


def active_environment() -> str:
    """The environment a user means by 'the active one'."""
    for var in ("PYTHON_MPI_BCAST_LOADED", "VIRTUAL_ENV", "CONDA_PREFIX"):
        v = os.environ.get(var)
        if v and os.path.isdir(v):
            return v
    raise PmbError("no active environment (VIRTUAL_ENV and CONDA_PREFIX are unset); "
                   "activate one or give --venv PATH")


def save(cache: str, name: str, source: str | None = None, force: bool = False,
         quiet: bool = True, level: int = DEFAULT_LEVEL) -> dict:
    """Pack ``source`` (default: the active environment) with its
    interpreter into the cache as ``name``.  The record ``list`` shows is
    written before the package appears under its name (the one it replaces
    is kept in it as ``previous``), so the package is never listed without
    its own record; without ``force`` the name is checked again at the
    moment of the rename, so of two saves of one name exactly one wins."""
    from ..package.archive import Exists
    from ..packing.pack import pack_whole
    check_name(name)
    source = os.path.abspath(source or active_environment())
    path = _entry(cache, name)
    if os.path.exists(path) and not force:
        raise PmbError(f"a saved environment '{name}' already exists in {cache}; pass -f to "
                       f"replace it")
    os.makedirs(cache, exist_ok=True)
    side = os.path.join(cache, name + ".json")
    record = {}

    def write_record(m) -> None:
        fp, dists = site_fingerprint(source, _site_of(source, m.site_dir))
        record.update({"name": name, "content_hash": m.content_hash, "python": m.python,
                       "source": source, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "distributions": dists, "fingerprint": fp, "site_dir": m.site_dir})
        prev = _read_json(side)
        if not force and os.path.exists(path):
            return  # the rename will refuse: leave the winner's record alone
        if prev.get("content_hash"):
            prev.pop("previous", None)
            record["previous"] = prev
        _write_json_atomic(side, record)

    try:
        # -f over a saved package: its unchanged shards are reused (checked by key)
        out, m, st = pack_whole(source, cache, name, force=force, quiet=quiet, level=level,
                                before_rename=write_record,
                                reuse_from=path if force and os.path.isfile(path) else None)
    except Exists:
        now = _read_json(side)
        if record and now.get("content_hash") == record.get("content_hash"):
            if now.get("previous"):  # ours was written just before the other's rename
                _write_json_atomic(side, now["previous"])
        raise PmbError(f"a saved environment '{name}' was saved by another command while this "
                       f"one ran; it was kept as it is (pass -f to replace it, or save under "
                       f"another name)") from None
    record.pop("previous", None)
    record["size"] = os.path.getsize(out)
    _write_json_atomic(side, record)
    if load_record(source) is not None:  # saved from a loaded tree: clean again
        _mark_loaded(source, name, m.content_hash, m.site_dir, entry=name, cache=cache)
    return record


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _site_of(source: str, tree_site_dir: str) -> str:
    """The site directory of ``source`` relative to it (a venv's may differ
    from the tree's: Debian's dist-packages)."""
    if pyinfo.is_venv(source):
        info = pyinfo.query(pyinfo.interpreter_of(source))
        return os.path.relpath(info.purelib, source)
    return tree_site_dir


RUN_RE = re.compile(r"^(run|rundir)-.+-[0-9a-f]{16}$")


def entries(cache: str, internal: bool = True) -> list[dict]:
    """The saved environments, each with what ``list`` shows.  Packages
    ``run`` made for itself (``run-*``/``rundir-*``) carry ``"made_by":
    "run"`` (left out with ``internal=False``); a package that cannot be
    read or is cut short carries ``"error"``."""
    out = []
    try:
        names = sorted(os.listdir(cache))
    except FileNotFoundError:
        return out
    for fn in names:
        if fn.startswith(".") or not fn.endswith(SUFFIX):
            continue
        path = os.path.join(cache, fn)
        name = fn[:-len(SUFFIX)]
        made_by = {"made_by": "run"} if RUN_RE.match(name) else {}
        if made_by and not internal:
            continue
        try:
            m, start = read_manifest(path)
            size = os.path.getsize(path)
            if start + m.payload_size != size:
                raise PmbError(f"truncated or padded package (expected "
                               f"{start + m.payload_size} bytes, file has {size}); save it "
                               f"again or remove it with 'python-mpi-bcast rm {name}'")
        except (PmbError, OSError) as e:
            out.append({"name": name, "path": path, "error": str(e), **made_by})
            continue
        rec = _read_json(os.path.join(cache, name + ".json"))
        if rec.get("content_hash") != m.content_hash:
            # a save killed before its rename leaves the record of the package it meant to
            # replace as 'previous'; anything else describes another save
            rec = rec.get("previous") or {}
            if not isinstance(rec, dict) or rec.get("content_hash") != m.content_hash:
                rec = {}
        st = os.stat(path)
        out.append({"name": name, "path": path, "size": st.st_size, "python": m.python,
                    "packages": len(rec["distributions"]) if "distributions" in rec else None,
                    "saved": rec.get("saved") or time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                               time.localtime(st.st_mtime)),
                    "source": rec.get("source") or (f"(packed by run from {_run_source(m)})"
                                                    if made_by else "(unknown: no record)"),
                    "content_hash": m.content_hash, "kind": m.kind, **made_by})
    return out


def _run_source(m) -> str:
    srcs = [s for s in m.sources.split(":") if s]
    return srcs[-1] if m.kind == "directory" or len(srcs) < 2 else ", ".join(srcs)


def _unknown(cache: str, name: str) -> PmbError:
    known = [e["name"] for e in entries(cache, internal=False)]
    listing = ", ".join(known) if known else "none saved yet"
    return PmbError(f"no saved environment '{name}' in {cache} (saved: {listing})")


def remove(cache: str, name: str) -> str:
    path = _entry(cache, name)
    if not os.path.exists(path):
        raise _unknown(cache, name)
    if is_held(path):
        raise PmbError(f"{path} is in use by a running job (started by 'python-mpi-bcast "
                       f"run'); remove it after the job ends")
    os.unlink(path)
    remove_sidecar(path)
    side = os.path.join(cache, name + ".json")
    if os.path.exists(side):
        os.unlink(side)
    return path


def load(cache: str, name: str, as_name: str | None = None, to: str | None = None,
         force: bool = False) -> str:
    """Unpack a saved environment into node-local scratch (or ``to``) under
    ``as_name``; returns the directory.  The directory appears only
    complete, with its activation scripts and its load record (which names
    the entry it came from, whatever name it was loaded as)."""
    from ..package.unpack import unpack
    path = _entry(cache, name)
    if not os.path.exists(path):
        raise _unknown(cache, name)
    m = read_manifest(path)[0]
    if m.kind == "directory":
        raise PmbError(f"'{name}' is a {m.kind} package"
                       + (" ('run --with-dir' made it for a job)" if RUN_RE.match(name) else "")
                       + ", not an environment: there is nothing to load and activate")
    new = check_name(as_name or name)
    dest = os.path.abspath(to) if to else os.path.join(scratch_dir(), new)
    if os.path.lexists(dest):
        # --force replaces only a copy 'load' made (it carries the load record);
        # anything else is someone's data and is never touched
        if os.path.islink(dest) or not os.path.isdir(dest) or load_record(dest) is None:
            other = ("choose a --to that does not exist yet" if to
                     else "load under another name with --as")
            raise PmbError(f"{dest} already exists and is not an environment loaded by "
                           f"python-mpi-bcast; it was left as it is: {other}")
        how = (f"source {_sq(dest + '/bin/activate')}" if to
               else f"eval \"$(python-mpi-bcast activate {new})\"")
        if not force:
            raise PmbError(f"{dest} already exists (an environment loaded before); activate it "
                           f"with '{how}', load under another name with --as, or pass --force "
                           f"to replace it")
    try:
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    except OSError as e:
        raise PmbError(f"cannot create {os.path.dirname(dest)}: {e.strerror or e}") from None
    room = ("load it elsewhere with --to DIR" if to else
            "load it elsewhere with --to DIR, or set "
            + ("SLURM_TMPDIR" if os.environ.get("SLURM_TMPDIR") else "TMPDIR")
            + " to a directory with more room")

    def finish(tmp: str) -> None:
        _write_activation(tmp, dest, new, m.site_dir)
        _mark_loaded(tmp, new, m.content_hash, m.site_dir, entry=name, cache=cache)

    unpack([path], dest, force=force, room_hint=room, before_rename=finish,
           ours=lambda d: load_record(d) is not None)
    return dest


def _mark_loaded(tree: str, name: str, content_hash: str, site_dir: str,
                 entry: str | None = None, cache: str | None = None) -> None:
    """Record what a loaded tree holds now (its clean state): the name it
    was loaded as, and the saved entry (``entry`` in ``cache``) it now
    matches."""
    old = load_record(tree) or {}
    fp, _ = site_fingerprint(tree, site_dir)
    site = os.path.join(tree, site_dir)
    with open(os.path.join(tree, MTIME_FILE), "w") as f:
        f.write(f"{int(os.stat(site).st_mtime) if os.path.isdir(site) else 0}\n")
    _write_json_atomic(os.path.join(tree, LOAD_RECORD), {
        "name": old.get("name", name), "entry": entry or name,
        "cache": cache or old.get("cache"), "content_hash": content_hash,
        "site_dir": site_dir, "fingerprint": fp})


def came_from(tree: str, cache: str, name: str) -> bool:
    """Whether the loaded ``tree`` is a copy of the entry ``name`` of
    ``cache`` (loaded from it or last saved as it), whatever name it was
    loaded as."""
    rec = load_record(tree)
    if rec is None:
        return False
    where = rec.get("cache")
    if where and os.path.realpath(where) != os.path.realpath(cache):
        return False
    return rec.get("entry", rec.get("name")) == name


def changed_since_saved(tree: str | None, cache: str, name: str) -> bool:
    """Whether ``tree`` (the loaded environment, PYTHON_MPI_BCAST_LOADED) is
    a copy of the entry ``name`` of ``cache`` that changed since it was
    loaded or saved (``list`` marks that entry)."""
    return bool(tree) and came_from(tree, cache, name) and bool(is_dirty(tree))


def is_dirty(tree: str) -> bool | None:
    """Whether a loaded environment's installed distributions differ from
    what was loaded or last saved (None: not a loaded environment)."""
    rec = load_record(tree)
    if rec is None:
        return None
    return site_fingerprint(tree, rec["site_dir"])[0] != rec["fingerprint"]


_ACTIVATE_SH = r'''# Activate the environment loaded by python-mpi-bcast: source this file
# (bash/zsh).  'deactivate' undoes it.  The prompt shows '*' once packages
# were installed or removed since the environment was loaded or saved.
deactivate() {
    if [ -n "${_PMB_OLD_PATH+x}" ]; then PATH="$_PMB_OLD_PATH"; export PATH; unset _PMB_OLD_PATH; fi
    if [ -n "${_PMB_OLD_PS1+x}" ]; then PS1="$_PMB_OLD_PS1"; unset _PMB_OLD_PS1; fi
    unset PYTHON_MPI_BCAST_LOADED PYTHON_MPI_BCAST_NAME
    hash -r 2>/dev/null
    if [ "${1-}" != nondestructive ]; then unset -f _pmb_dirty_mark deactivate; fi
}
deactivate nondestructive
PYTHON_MPI_BCAST_LOADED=@TREE@
PYTHON_MPI_BCAST_NAME=@NAME@
export PYTHON_MPI_BCAST_LOADED PYTHON_MPI_BCAST_NAME
_PMB_OLD_PATH="$PATH"
PATH="$PYTHON_MPI_BCAST_LOADED/bin:$PATH"
export PATH
# dirty: the site directory changed (pip adds or removes a .dist-info there)
_pmb_dirty_mark() {
    [ "$(stat -c %Y "$PYTHON_MPI_BCAST_LOADED/@SITE@" 2>/dev/null)" = \
      "$(cat "$PYTHON_MPI_BCAST_LOADED/@MTIMEFILE@" 2>/dev/null)" ] || printf '*'
}
if [ -z "${PYTHON_MPI_BCAST_NO_PROMPT:-}" ]; then
    _PMB_OLD_PS1="${PS1-}"
    if [ -n "${ZSH_VERSION:-}" ]; then
        setopt PROMPT_SUBST
    fi
    PS1='('"$PYTHON_MPI_BCAST_NAME"'$(_pmb_dirty_mark)) '"${PS1-}"
fi
hash -r 2>/dev/null
'''

_ACTIVATE_FISH = r'''# Activate the environment loaded by python-mpi-bcast: source this file
# (fish).  'deactivate' undoes it.
function deactivate
    if set -q _PMB_OLD_PATH
        set -gx PATH $_PMB_OLD_PATH
        set -e _PMB_OLD_PATH
    end
    if functions -q _pmb_old_fish_prompt
        functions -e fish_prompt
        functions -c _pmb_old_fish_prompt fish_prompt
        functions -e _pmb_old_fish_prompt
    end
    set -e PYTHON_MPI_BCAST_LOADED
    set -e PYTHON_MPI_BCAST_NAME
    if test "$argv[1]" != nondestructive
        functions -e deactivate
    end
end
deactivate nondestructive
set -gx PYTHON_MPI_BCAST_LOADED @TREE@
set -gx PYTHON_MPI_BCAST_NAME @NAME@
set -g _PMB_OLD_PATH $PATH
set -gx PATH $PYTHON_MPI_BCAST_LOADED/bin $PATH
if not set -q PYTHON_MPI_BCAST_NO_PROMPT; and functions -q fish_prompt
    functions -c fish_prompt _pmb_old_fish_prompt
    function fish_prompt
        set -l mark ""
        test (stat -c %Y $PYTHON_MPI_BCAST_LOADED/@SITE@ 2>/dev/null) = (cat $PYTHON_MPI_BCAST_LOADED/@MTIMEFILE@ 2>/dev/null); or set mark "*"
        printf '(%s%s) ' $PYTHON_MPI_BCAST_NAME $mark
        _pmb_old_fish_prompt
    end
end
'''


def _sq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


MTIME_FILE = ".python-mpi-bcast-site-mtime"


def _write_activation(where: str, tree: str, name: str, site_dir: str) -> None:
    """Activation scripts into ``where``/bin for the tree that will be at ``tree``."""
    for fn, text in (("activate", _ACTIVATE_SH), ("activate.fish", _ACTIVATE_FISH)):
        body = (text.replace("@TREE@", _sq(tree)).replace("@NAME@", _sq(name))
                .replace("@SITE@", site_dir).replace("@MTIMEFILE@", MTIME_FILE))
        with open(os.path.join(where, "bin", fn), "w") as f:
            f.write(body)


def activation(name_or_dir: str, shell: str = "bash") -> str:
    """Shell code that activates a loaded environment (for eval)."""
    tree = name_or_dir if os.path.isabs(name_or_dir) else os.path.join(
        scratch_dir(), check_name(name_or_dir))
    if load_record(tree) is None:
        here = loaded_here()
        listing = ", ".join(os.path.basename(t) for t in here) or "none"
        raise PmbError(f"no loaded environment at {tree} (loaded in {scratch_dir()}: "
                       f"{listing}); load one with 'python-mpi-bcast load NAME'")
    script = os.path.join(tree, "bin", "activate.fish" if shell == "fish" else "activate")
    return f"source {_sq(script)}\n"


def loaded_here() -> list[str]:
    base = scratch_dir()
    try:
        return [os.path.join(base, d) for d in sorted(os.listdir(base))
                if load_record(os.path.join(base, d)) is not None]
    except FileNotFoundError:
        return []


def create(version: str | None, name: str | None) -> str:
    """A new venv in node-local scratch with python3.X from PATH."""
    if version is not None and not re.match(r"^3\.\d+$", version):
        raise PmbError(f"version {version!r}: give it as 3.X, e.g. 3.11")
    name = check_name(name or f"env-{os.getpid()}-{int(time.time())}")
    exe_name = f"python{version}" if version else "python3"
    exe = shutil.which(exe_name)
    if exe is None:
        raise PmbError(f"{exe_name} is not on PATH; load a module that provides it (e.g. "
                       f"'module load python/{version or '3'}') or create the venv with another "
                       f"version")
    dest = os.path.join(scratch_dir(), name)
    if os.path.exists(dest):
        raise PmbError(f"{dest} already exists; choose another name")
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    try:
        r = subprocess.run([exe, "-m", "venv", "--prompt", name, dest], capture_output=True,
                           text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(dest, ignore_errors=True)
        raise PmbError(f"{exe} -m venv did not finish within 10 minutes") from None
    if r.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise PmbError(f"{exe} -m venv {dest} failed: {last}")
    return dest

