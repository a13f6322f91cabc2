"""The one exception type for expected failures.

Library code raises :class:`PmbError` with a message that names the thing that
is wrong and, where there is one, the fix.  Only the CLI catches it and prints
``python-mpi-bcast: error: <message>``.
"""


class PmbError(Exception):
    """An expected failure with a message meant for the user."""
