"""The store that ``save`` and ``run`` share: a package root of
``NAME.tar.zst`` files, with the locks that keep a package a running job
uses (a shared ``flock`` held by the job), and the record a loaded tree
keeps of the entry it came from."""

from __future__ import annotations

import errno
import fcntl
import json
import os

from ..support.errors import PmbError

LOAD_RECORD = ".python-mpi-bcast-load.json"


def hold(path: str) -> int:
    """A shared lock on a package, on a descriptor the launched job inherits
    (it is held until the launcher ends).  Returns the descriptor."""
    while True:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.set_inheritable(fd, True)
            return fd
        os.close(fd)  # replaced or pruned meanwhile
        if not os.path.exists(path):
            raise PmbError(f"{path} was removed while starting; run again")


def is_held(path: str) -> bool:
    """Whether a running job holds ``path`` (see :func:`hold`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)


class Lock:
    """One packer and pruner per environment at a time (a second ``run`` of
    the same env waits, then finds the package made)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def load_record(tree: str) -> dict | None:
    try:
        with open(os.path.join(tree, LOAD_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
