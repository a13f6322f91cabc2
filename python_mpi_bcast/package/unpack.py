"""``python-mpi-bcast unpack PKG... DEST``: what the launcher does on each
node, by the launcher's own unpacker (``python-mpi --pmb-unpack``), so both
accept and refuse exactly the same packages.

Layers unpack in order into one tree; the tree appears under DEST only when
every layer is complete (unpacked into a temporary sibling, then renamed).
"""

from __future__ import annotations

import errno
import os
import shutil

from ..support import leftovers
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


def unpack(packages: list[str], dest: str, force: bool = False,
           room_hint: str = "choose a DEST with more room", before_rename=None
           ) -> list[Manifest]:
    """Unpack ``packages`` in order into ``dest`` (which appears only when
    complete; ``before_rename(tmp)`` may add to the tree before it does).
    Out of space: one line with the room needed and ``room_hint``."""
    manifests = [(p, read_manifest(p)[0]) for p in packages]
    check_layers(manifests)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        if not force:
            raise PmbError(f"{dest} already exists; remove it or pass --force")
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise PmbError(f"{dest} exists and is not a directory")
    parent = os.path.dirname(dest)
    need = sum(m.unpacked_size for _, m in manifests)

    def full(free: int | None = None) -> PmbError:
        if free is None:
            try:
                sv = os.statvfs(parent)
                free = sv.f_bavail * sv.f_frsize
            except OSError:
                free = 0
        return PmbError(f"no space left in {parent} for {dest}: it needs {need / 1e6:.0f} MB "
                        f"unpacked, {free / 1e6:.0f} MB are free; {room_hint}")

    try:
        os.makedirs(parent, exist_ok=True)
        sv = os.statvfs(parent)
        if sv.f_bavail * sv.f_frsize < need:
            raise full(sv.f_bavail * sv.f_frsize)
        tmp = leftovers.mkdtemp(prefix=f".{os.path.basename(dest)}.unpack-", dir=parent)
    except OSError as e:
        raise PmbError(f"cannot create a directory next to {dest}: {e.strerror or e}") from None
    try:
        try:
            unpack_packages(packages, tmp, final_dest=dest)
        except PmbError as e:
            if "no space left" in str(e).lower():
                leftovers.remove(tmp)
                tmp = None
                raise full() from None
            raise
        out = [m for _, m in manifests]
        if before_rename is not None:
            before_rename(tmp)
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
