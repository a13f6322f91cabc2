"""The one handler that shows what the library reports (support/report.py):
notes and warnings as ``python-mpi-bcast: LEVEL: message`` on stderr; a
command's steps as they are, on stderr or, for a command whose steps are its
answer (``migrate``), on stdout; a failed step as ``python-mpi-bcast: error:
message`` on stderr.  Streams are looked up when a record is shown."""

from __future__ import annotations

import logging
import sys

from ..support.report import STEPS, quiet


class Handler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.steps_to_stdout = False
        self.setFormatter(logging.Formatter("python-mpi-bcast: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name != STEPS:
                text, stream = self.format(record), sys.stderr
            elif record.levelno >= logging.WARNING:
                text, stream = f"python-mpi-bcast: error: {record.getMessage()}", sys.stderr
            else:
                text = record.getMessage()
                stream = sys.stdout if self.steps_to_stdout else sys.stderr
            stream.write(text + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


HANDLER = Handler()


def install(debug: bool) -> None:
    """Show the package's records (and, as before, any other library's) from
    INFO on, from DEBUG with --debug."""
    root = logging.getLogger()
    if HANDLER not in root.handlers:
        root.addHandler(HANDLER)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # each command starts as the CLI does (main() may run several in one process)
    HANDLER.steps_to_stdout = False
    quiet(False)


def steps_to_stdout() -> None:
    """This command's steps are its answer: show them on stdout."""
    HANDLER.steps_to_stdout = True
