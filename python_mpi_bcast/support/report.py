"""The one reporting channel: every layer below the CLI reports through the
``python_mpi_bcast`` logger (never ``print``, never a callback); the CLI
installs the one handler that shows it (``cli/report.py``).

Two kinds of record go through it:

- ``log`` (logger ``python_mpi_bcast``): notes and warnings about what is
  being done, shown as ``python-mpi-bcast: LEVEL: message`` on stderr;
- ``say`` (logger ``python_mpi_bcast.steps``): the steps a command takes, as
  it takes them ("packing X into Y", "NAME: copied to DEST"), shown as they
  are; ``fail``: one step failed and the command goes on with the next,
  shown as ``python-mpi-bcast: error: message`` on stderr.  A command whose
  steps are its answer shows them on stdout, others on stderr; ``--quiet``
  raises the level of steps and notes (``quiet``).

Used as a library (no handler installed), only warnings and failed steps
reach stderr (logging's last-resort handler).
"""

from __future__ import annotations

import logging

log = logging.getLogger("python_mpi_bcast")
STEPS = "python_mpi_bcast.steps"
_steps = logging.getLogger(STEPS)


def say(msg: str) -> None:
    """One step of the command, shown as it is."""
    _steps.info("%s", msg)


def fail(msg: str) -> None:
    """One step failed; the command goes on (its end says what was not done)."""
    _steps.error("%s", msg)


def quiet(on: bool = True) -> None:
    """Steps and notes not shown (warnings, errors and failed steps still are)."""
    _steps.setLevel(logging.WARNING if on else logging.NOTSET)
    log.setLevel(logging.WARNING if on else logging.NOTSET)
