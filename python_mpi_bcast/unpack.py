"""``python-mpi-bcast unpack PKG... DEST``: what the launcher does on each
node, by the launcher's own unpacker (``python-mpi --pmb-unpack``), so both
accept and refuse exactly the same packages.

Layers unpack in order into one tree; the tree appears under DEST only when
every layer is complete (unpacked into a temporary sibling, then renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .archive import unpack_packages
from .errors import PmbError
from .pkgformat import Manifest, read_manifest


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


def unpack(packages: list[str], dest: str, force: bool = False) -> list[Manifest]:
    manifests = [(p, read_manifest(p)[0]) for p in packages]
    check_layers(manifests)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        if not force:
            raise PmbError(f"{dest} already exists; remove it or pass --force")
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise PmbError(f"{dest} exists and is not a directory")
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.unpack-", dir=parent)
    except OSError as e:
        raise PmbError(f"cannot create a directory next to {dest}: {e.strerror or e}") from None
    try:
        unpack_packages(packages, tmp, final_dest=dest)
        out = [m for _, m in manifests]
        os.chmod(tmp, 0o755)
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        tmp = None
        return out
    except OSError as e:
        raise PmbError(f"unpacking into {dest}: {e.strerror or e}") from None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
