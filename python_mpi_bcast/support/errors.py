"""The one exception type for expected failures.

Library code raises :class:`PmbError` with a message that names the thing that
is wrong and, where there is one, the fix.  Only the CLI catches it and prints
``python-mpi-bcast: error: <message>``.
"""

from __future__ import annotations

import errno


class PmbError(Exception):
    """An expected failure with a message meant for the user."""


def os_error(e: OSError, doing: str, room: str, full_doing: str | None = None,
             name_file: bool = False) -> PmbError:
    """One line for an OSError met while ``doing`` (e.g. "writing X"): a
    full device says so (while ``full_doing``, if given) and what to do
    about it (``room``); anything else gives the OS's reason (and, with
    ``name_file``, the file it names)."""
    if e.errno == errno.ENOSPC:
        return PmbError(f"no space left on device while {full_doing or doing}; {room}")
    return PmbError(f"{doing}: {e.strerror or e}"
                    + (f" ({e.filename})" if name_file and e.filename else ""))
