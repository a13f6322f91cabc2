"""Temporaries a killed command leaves behind, and their removal.

Every big temporary a command makes (the staging skeleton of ``save``/``pack``/
``run`` in $TMPDIR, the shards and ``.part`` file in the output directory,
the half-unpacked tree of ``load``/``unpack``, the hidden copy of
``migrate``/``relocate``) is made through :func:`mkdtemp`/:func:`mkstemp`,
which first write its path into a journal of the running process,
``<data home>/running/<host>.<pid>.<start>.json`` (the process start time
tells a reused pid apart), and drop it again once the temporary is gone or
renamed into place.  A journal whose process is no longer alive on this
host names what a killed run left: the next run of the same command removes
it (:func:`sweep` with ``command``), ``python-mpi-bcast clean`` removes all.

A journal of another host is never judged (its pid means nothing here).
Journaling is best effort: if the data home cannot be written, commands
still run, they only cannot clean up after a kill.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import stat
import tempfile

from .files import write_atomic

from .paths import data_home

log = logging.getLogger("python_mpi_bcast")

#: the command this process runs (set by the CLI); recorded in the journal
COMMAND = "python-mpi-bcast"

_paths: list[str] = []


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _host() -> str:
    return socket.gethostname().replace("/", "_")


def journal_dir() -> str:
    return os.path.join(data_home(), "running")


def _journal() -> str:
    return os.path.join(journal_dir(),
                        f"{_host()}.{os.getpid()}.{_start_time(os.getpid()) or 0}.json")


def _write() -> None:
    path = _journal()
    try:
        if not _paths:
            if os.path.exists(path):
                os.unlink(path)
            return
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps({"command": COMMAND, "pid": os.getpid(), "host": _host(),
                                       "paths": _paths}))
    except OSError as e:  # best effort: a full or read-only home must not stop the command
        log.debug("cannot write the journal %s: %s", path, e)


def register(path: str) -> str:
    """Record ``path`` (about to be made) as a temporary of this process."""
    _paths.append(os.path.abspath(path))
    _write()
    return path


def release(path: str) -> None:
    """``path`` is gone or renamed into place: no longer a temporary."""
    path = os.path.abspath(path)
    if path in _paths:
        _paths.remove(path)
        _write()


def _name(prefix: str, suffix: str = "") -> str:
    return f"{prefix}{_host()}.{os.getpid()}.{secrets.token_hex(3)}{suffix}"


def _create(prefix: str, suffix: str, dir: str | None, make) -> tuple:
    """(what ``make(path)`` returned, path) for a new journaled name in
    ``dir``; ``make`` raises FileExistsError when the name is taken."""
    dir = os.path.abspath(dir or tempfile.gettempdir())
    for _ in range(100):
        path = register(os.path.join(dir, _name(prefix, suffix)))
        try:
            return make(path), path
        except FileExistsError:
            release(path)
        except BaseException:
            release(path)
            raise
    raise FileExistsError(f"no free temporary name in {dir}")


def mkdtemp(prefix: str, dir: str | None = None) -> str:
    """``tempfile.mkdtemp`` whose directory is journaled (and names the
    host and pid that made it)."""
    return _create(prefix, "", dir, lambda path: os.mkdir(path, 0o700))[1]


def mkstemp(prefix: str, suffix: str = "", dir: str | None = None) -> tuple[int, str]:
    return _create(prefix, suffix, dir, lambda path: os.open(
        path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def remove(path: str) -> None:
    """Remove a temporary (file or tree, no symlink followed) and release it."""
    _remove(path)
    release(path)


def _remove(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if st.st_uid != os.geteuid():
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):  # read-only directories inside (a staged tree)
            for dirpath, dirnames, _ in os.walk(path):
                for d in dirnames:
                    try:
                        os.chmod(os.path.join(dirpath, d), 0o700)
                    except OSError:
                        pass
            shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)
    return True


def _alive(pid: int, start: str) -> bool:
    now = _start_time(pid)
    return now is not None and (start == "0" or now == start)


def sweep(command: str | None = None, dry_run: bool = False) -> list[tuple[str, dict]]:
    """Remove what dead processes of this host left (only those that ran
    ``command``, if given).  Returns ``[(path, journal), ...]``."""
    out = []
    jdir = journal_dir()
    try:
        names = sorted(os.listdir(jdir))
    except OSError:
        return out
    host = _host()
    for fn in names:
        parts = fn[:-len(".json")].rsplit(".", 2) if fn.endswith(".json") else []
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid, start = int(parts[1]), parts[2]
        if pid == os.getpid() or _alive(pid, start):
            continue
        jpath = os.path.join(jdir, fn)
        try:
            with open(jpath) as f:
                j = json.load(f)
        except (OSError, ValueError):
            j = {"paths": []}
        if command is not None and j.get("command") != command:
            continue
        for p in j.get("paths", []):
            if isinstance(p, str) and os.path.isabs(p) and os.path.lexists(p):
                out.append((p, j))
                if not dry_run:
                    _remove(p)
        if not dry_run:
            try:
                os.unlink(jpath)
            except OSError:
                pass
    return out
