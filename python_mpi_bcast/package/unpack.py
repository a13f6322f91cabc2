"""``python-mpi-bcast unpack PKG... DEST``: what the launcher does on each
node, by the launcher's own unpacker (``python-mpi --pmb-unpack``), so both
apply the same rules (the differences still known: README.rst, "One set of
rules").

Layers unpack in order into one tree; the tree appears under DEST only when
every layer is complete (unpacked into a temporary sibling, then renamed).
"""

from __future__ import annotations

import errno
import json
import os
import shutil

from ..support import leftovers
from ..support.files import write_atomic
from .archive import unpack_packages
from ..support.errors import PmbError
from .format import Manifest, read_manifest


def check_layers(manifests: list[tuple[str, Manifest]]) -> None:
    """Environments must match the interpreter layer's Python."""
    interp = [(p, m) for p, m in manifests if m.kind == "interpreter"]
    if len(interp) > 1:
        raise PmbError(f"{interp[1][0]}: a second interpreter package; give exactly one")
    if interp:
        ip, im = interp[0]
        for p, m in manifests:
            if m.kind == "environment" and (m.python != im.python or (m.abi and m.abi != im.abi)):
                raise PmbError(f"{p}: built for Python {m.python} ({m.abi}) but the interpreter "
                               f"package {ip} is Python {im.python} ({im.abi}); repack one of them")


# Written into every tree ``unpack`` makes: what --force may replace.
RECORD = ".python-mpi-bcast-unpack.json"


def unpacked_here(path: str) -> bool:
    """A tree ``unpack`` made (it carries the record), not a link to one."""
    return (not os.path.islink(path) and os.path.isdir(path)
            and os.path.isfile(os.path.join(path, RECORD)))


def unpack(packages: list[str], dest: str, force: bool = False,
           room_hint: str = "choose a DEST with more room", before_rename=None,
           ours=None, verify: bool = False) -> list[Manifest]:
    """Unpack ``packages`` in order into ``dest`` (which appears only when
    complete; ``before_rename(tmp)`` may add to the tree before it does).
    Out of space: one line with the room needed and ``room_hint``.  With
    ``force`` an existing ``dest`` is replaced only when ``ours(dest)`` says
    it was made by us; by default, it carries unpack's record, which every
    tree gets when no ``ours`` is given (a caller with its own rule marks
    its trees itself, as ``load`` does).  ``verify``: as
    :func:`unpack_packages` (``verify --into``)."""
    manifests = [(p, read_manifest(p)[0]) for p in packages]
    check_layers(manifests)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        if not force:
            raise PmbError(f"{dest} already exists; remove it or pass --force")
        if not (ours or unpacked_here)(dest):
            raise PmbError(f"{dest} already exists and is not a tree unpacked by "
                           f"python-mpi-bcast; it was left as it is: choose a DEST that does "
                           f"not exist yet")
    parent = os.path.dirname(dest)
    need = sum(m.unpacked_size for _, m in manifests)
    files = sum(m.files for _, m in manifests)

    def full() -> PmbError:
        try:
            sv = os.statvfs(parent)
            free, inodes = sv.f_bavail * sv.f_frsize, sv.f_favail
        except OSError:
            free, inodes = 0, None
        if inodes is not None and inodes < files and free >= need:
            # out of inodes (a tmpfs with nr_inodes, a quota on files)
            return PmbError(f"no space left in {parent} for {dest}: it needs {files} files, "
                            f"room for {inodes} more is left there; {room_hint}")
        return PmbError(f"no space left in {parent} for {dest}: it needs {need / 1e6:.0f} MB "
                        f"unpacked, {free / 1e6:.0f} MB are free; {room_hint}")

    try:
        os.makedirs(parent, exist_ok=True)
        sv = os.statvfs(parent)
        if sv.f_bavail * sv.f_frsize < need or (sv.f_files and sv.f_favail < files):
            raise full()
        tmp = leftovers.mkdtemp(prefix=f".{os.path.basename(dest)}.unpack-", dir=parent)
    except OSError as e:
        raise PmbError(f"cannot create a directory next to {dest}: {e.strerror or e}") from None
    try:
        try:
            unpack_packages(packages, tmp, final_dest=dest, verify=verify)
        except PmbError as e:
            if "no space left" in str(e).lower():
                leftovers.remove(tmp)
                tmp = None
                raise full() from None
            raise
        out = [m for _, m in manifests]
        if before_rename is not None:
            before_rename(tmp)
        if ours is None:  # (replacing a member of that name, never writing through a link)
            rec = os.path.join(tmp, RECORD)
            if os.path.isdir(rec) and not os.path.islink(rec):
                raise PmbError(f"the packages hold a directory {RECORD} at the top of the tree, "
                               f"the name unpack keeps its record under; rename it and pack "
                               f"again")
            write_atomic(rec, json.dumps({
                "made_by": "python-mpi-bcast unpack",
                "packages": [{"file": os.path.basename(p), "content_hash": m.content_hash}
                             for p, m in manifests]}) + "\n")
        os.chmod(tmp, 0o755)
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        leftovers.release(tmp)
        tmp = None
        return out
    except OSError as e:
        if e.errno == errno.ENOSPC:
            if tmp:
                leftovers.remove(tmp)
                tmp = None
            raise full() from None
        raise PmbError(f"unpacking into {dest}: {e.strerror or e}") from None
    finally:
        if tmp:
            leftovers.remove(tmp)
