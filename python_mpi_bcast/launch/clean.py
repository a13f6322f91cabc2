"""``python-mpi-bcast clean``: remove what staging left in node directories
(the CLI first removes what killed commands of this host left anywhere:
leftovers.py).

Temporary unpack directories (``.env-<id>.XXXXXX``), staging buffers
(``.pmb-chunks-<id>.XXXXXX``; ``.pmb-chunks.XXXXXX`` from earlier launchers)
and staging locks (``.pmb-lock-<id>``) are left
only by a staging that was killed; they are removed unless a staging holds
the lock of their id.  Ready trees (``env-<id>``, ``env-<id>.<k>``) are
removed with ``--all`` or when older than ``--older-than`` hours, unless a
running job step holds them (every rank keeps a shared ``flock`` on the
tree's ``.pmb-ready``; see launcher/nodes.c): those are kept, with a line.
A tree goes with the files beside it (``.pmb-mpi-env-<id>``: which MPI
library interpreters started from the tree use; ``.pmb-jobs-env-<id>`` and
``.pmb-layers-env-<id>``: the jobs that used it and the layers it holds; ``.pmb-base-env-<id>``:
what it held before its last directory layer).  Only entries owned by the
caller are touched and no symlink is followed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import string
import time

from ..support.errors import PmbError

TMP_RE = re.compile(r"^\.env-[0-9a-f]{32}\.[A-Za-z0-9]{6}$")
TREE_RE = re.compile(r"^env-[0-9a-f]{32}(\.[0-9]+)?$")
CHUNKS_RE = re.compile(r"^\.pmb-chunks-[0-9a-f]{32}\.[A-Za-z0-9]{6}$")
OLD_CHUNKS_RE = re.compile(r"^\.pmb-chunks\.[A-Za-z0-9]{6}$")  # no id: earlier launchers
LOCK_RE = re.compile(r"^\.pmb-lock-[0-9a-f]{32}$")
# beside a tree, and gone with it: the launcher's MPI library for interpreters
# started from it (launcher/mpilib.c), the jobs that used it and the layers it
# holds, and what it held before its last directory layer (launcher/nodes.c)
BESIDE_PREFIXES = (".pmb-mpi-", ".pmb-jobs-", ".pmb-layers-", ".pmb-base-")


def _lock(path: str, how: int) -> int | None:
    """A descriptor holding ``how`` (without blocking) on ``path``, or None
    if someone holds it; FileNotFoundError if there is no such file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _trash_name(directory: str, name: str) -> str:
    """A partial-tree name for a tree being removed (so no step sees half a
    tree under its ready name)."""
    alnum = string.ascii_letters + string.digits
    return os.path.join(directory, f".{name[:36]}." + "".join(secrets.choice(alnum) for _ in range(6)))


def clean(directory: str, all_trees: bool = False, older_than_hours: float | None = None,
          dry_run: bool = False, kept: list[str] | None = None) -> list[str]:
    """Return the paths removed (or that would be, with ``dry_run``); what
    running jobs hold is appended to ``kept`` as "PATH: why"."""
    kept = [] if kept is None else kept
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise PmbError(f"{directory}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise PmbError(f"{directory} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise PmbError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise PmbError(f"{directory} is owned by uid {st.st_uid}, not by you")
    removed = []
    now = time.time()
    names = sorted(os.listdir(directory))
    staging = set()  # ids whose staging lock a running step holds
    for name in names:
        if LOCK_RE.match(name):
            try:
                fd = _lock(os.path.join(directory, name), fcntl.LOCK_EX)
            except FileNotFoundError:
                continue
            if fd is None:
                staging.add(name[len(".pmb-lock-"):])
            else:
                os.close(fd)
    for name in names:
        path = os.path.join(directory, name)
        try:
            est = os.lstat(path)
        except FileNotFoundError:
            continue
        if est.st_uid != os.geteuid():
            continue
        if (CHUNKS_RE.match(name) or OLD_CHUNKS_RE.match(name) or LOCK_RE.match(name)) \
                and stat.S_ISREG(est.st_mode):
            if CHUNKS_RE.match(name):
                busy = name[len(".pmb-chunks-"):][:32] in staging
            elif OLD_CHUNKS_RE.match(name):
                busy = bool(staging)
            else:
                busy = name[len(".pmb-lock-"):] in staging
            if busy:
                kept.append(f"{path}: a job step is staging into {directory}")
                continue
            removed.append(path)  # staging buffer or lock of a killed job
            if not dry_run:
                os.unlink(path)
            continue
        if not stat.S_ISDIR(est.st_mode):
            continue
        if TMP_RE.match(name):
            if name[5:37] in staging:
                kept.append(f"{path}: a job step is staging it")
                continue
            removed.append(path)
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
            continue
        if not TREE_RE.match(name):
            continue
        old = older_than_hours is not None and now - est.st_mtime > older_than_hours * 3600
        if not (all_trees or old):
            continue
        try:
            fd = _lock(os.path.join(path, ".pmb-ready"), fcntl.LOCK_EX)
        except FileNotFoundError:
            fd = -1  # no stamp: not a tree any step can run from
        if fd is None:
            kept.append(f"{path}: a running job step uses it")
            continue
        try:
            removed.append(path)
            if not dry_run:
                trash = _trash_name(directory, name)
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
        finally:
            if fd >= 0:
                os.close(fd)
    for name in sorted(os.listdir(directory)):
        prefix = next((p for p in BESIDE_PREFIXES if name.startswith(p)), None)
        if prefix is None or not TREE_RE.match(name[len(prefix):]):
            continue
        tree = os.path.join(directory, name[len(prefix):])
        if tree in removed or not os.path.lexists(tree):
            path = os.path.join(directory, name)
            est = os.lstat(path)
            if est.st_uid == os.geteuid() and stat.S_ISREG(est.st_mode) and not dry_run:
                os.unlink(path)  # not listed: it goes with its tree
    if all_trees and not dry_run and not os.listdir(directory):
        os.rmdir(directory)
    return removed
