"""Running a helper program (a Python, patchelf, strip) and turning its
failure into one line the user can act on."""

from __future__ import annotations

import subprocess

from .errors import PmbError


def run_checked(cmd: list[str], timeout: float, failed: str, too_slow: str,
                cannot_run: str | None = None, silent: str = "?",
                whole_stderr: bool = False, pass_fds=()) -> subprocess.CompletedProcess:
    """Run ``cmd`` (text output captured) and return its result; a non-zero
    exit raises ``PmbError("<failed>: <the last line of its stderr>")``
    (``silent`` when it printed nothing; with ``whole_stderr`` all of it), a
    timeout ``PmbError(too_slow)``, and, with ``cannot_run``, a program that
    cannot be started ``PmbError("<cannot_run>: <the OS's reason>")``.
    ``pass_fds``: descriptors the command inherits."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                           pass_fds=pass_fds)
    except OSError as e:
        if cannot_run is None:
            raise
        raise PmbError(f"{cannot_run}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise PmbError(too_slow) from None
    if r.returncode != 0:
        err = r.stderr.strip()
        raise PmbError(f"{failed}: {err if whole_stderr else (err.splitlines() or [silent])[-1]}")
    return r
