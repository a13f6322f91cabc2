"""``python-mpi-bcast clean``: remove what staging left in node directories
(the CLI first removes what killed commands of this host left anywhere:
leftovers.py).

Temporary unpack directories (``.env-<id>.XXXXXX``), staging buffers
(``.pmb-chunks.XXXXXX``) and staging locks (``.pmb-lock-<id>``) are left
only by a staging that was killed; they are safe to remove when no job is
staging into the directory.  Ready trees
(``env-<id>``) are removed with ``--all`` or when older than ``--older-than``
hours, each with the record beside it (``.pmb-mpi-env-<id>``: which MPI
library interpreters started from the tree use).  Only entries owned by the
caller are touched and no symlink is followed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time

from .errors import PmbError

TMP_RE = re.compile(r"^\.env-[0-9a-f]{32}\.[A-Za-z0-9]{6}$")
TREE_RE = re.compile(r"^env-[0-9a-f]{32}$")
CHUNKS_RE = re.compile(r"^\.pmb-chunks\.[A-Za-z0-9]{6}$")
LOCK_RE = re.compile(r"^\.pmb-lock-[0-9a-f]{32}$")
# beside a tree: the launcher's MPI library for interpreters started from it
# (launcher/mpilib.c); goes with its tree
RECORD_PREFIX = ".pmb-mpi-"


def clean(directory: str, all_trees: bool = False, older_than_hours: float | None = None,
          dry_run: bool = False) -> list[str]:
    """Return the paths removed (or that would be, with ``dry_run``)."""
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
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        est = os.lstat(path)
        if est.st_uid != os.geteuid():
            continue
        if (CHUNKS_RE.match(name) or LOCK_RE.match(name)) and stat.S_ISREG(est.st_mode):
            removed.append(path)  # staging buffer or lock of a killed job
            if not dry_run:
                os.unlink(path)
            continue
        if not stat.S_ISDIR(est.st_mode):
            continue
        if TMP_RE.match(name):
            pass
        elif TREE_RE.match(name):
            old = older_than_hours is not None and now - est.st_mtime > older_than_hours * 3600
            if not (all_trees or old):
                continue
        else:
            continue
        removed.append(path)
        if not dry_run:
            shutil.rmtree(path)
    for name in sorted(os.listdir(directory)):
        tree = os.path.join(directory, name[len(RECORD_PREFIX):])
        if (name.startswith(RECORD_PREFIX) and TREE_RE.match(name[len(RECORD_PREFIX):])
                and (tree in removed or not os.path.lexists(tree))):
            path = os.path.join(directory, name)
            est = os.lstat(path)
            if est.st_uid == os.geteuid() and stat.S_ISREG(est.st_mode) and not dry_run:
                os.unlink(path)  # not listed: it goes with its tree
    if all_trees and not dry_run and not os.listdir(directory):
        os.rmdir(directory)
    return removed
