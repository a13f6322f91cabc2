"""Writing a file so that readers see the old content or the new, never a
part: write a temporary name in the same directory, then rename it over."""

from __future__ import annotations

import os
import secrets


def write_atomic(path: str, data: str | bytes, chmod: int | None = None) -> None:
    """Replace ``path`` by ``data`` atomically.  The file gets the mode a
    plain ``open(path, "w")`` would give it (0666 less the umask) unless
    ``chmod`` says otherwise; a failure leaves ``path`` as it was and no
    temporary behind."""
    tmp = os.path.join(os.path.dirname(path) or ".",
                       f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        if chmod is not None:
            os.chmod(tmp, chmod)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
