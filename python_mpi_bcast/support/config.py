"""The user's config file (its location: :func:`config_file`).

Precedence everywhere: built-in defaults < this file < environment variables
< command-line flags.  Today the file holds site aliases: other names of the
same storage (a machine that mounts ``/fs2/...`` also as ``/work/...``), which
``relocate`` rewrites like ``--map`` pairs given on the command line::

    [aliases]
    "/fs2/home" = "/work/home"
    "/lus/scratch" = "/scratch"

TOML is read with :mod:`tomllib` (Python 3.11+), else ``tomli`` if it is
installed, else a small reader of the subset above (tables, ``"key" = "value"``
lines, comments).
"""

from __future__ import annotations

import os

from .errors import PmbError


def config_file() -> str:
    """The user's config file: $PYTHON_MPI_BCAST_CONFIG, else
    $XDG_CONFIG_HOME/python-mpi-bcast/config.toml (XDG_CONFIG_HOME defaults
    to ~/.config)."""
    explicit = os.environ.get("PYTHON_MPI_BCAST_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "python-mpi-bcast", "config.toml")


def _tiny_toml(text: str, where: str) -> dict:
    out: dict = {}
    table = out
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            table = out.setdefault(line[1:-1].strip(), {})
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if (not sep or len(value) < 2 or value[0] not in "\"'" or value[-1] != value[0]):
            raise PmbError(f"{where}:{n}: cannot read {raw.strip()!r}; write key = \"value\"")
        if key[:1] in "\"'" and key[-1:] == key[:1]:
            key = key[1:-1]
        table[key] = value[1:-1]
    return out


def load(path: str | None = None) -> dict:
    """The parsed config file, or {} when there is none."""
    path = path or config_file()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise PmbError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        import tomllib as toml  # Python 3.11+
    except ImportError:
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ImportError:
            toml = None
    if toml is None:
        return _tiny_toml(raw.decode("utf-8", "replace"), path)
    try:
        return toml.loads(raw.decode("utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PmbError(f"{path}: not valid TOML ({e}); fix or remove the file") from None


def site_aliases(cfg: dict | None = None, path: str | None = None) -> list[tuple[str, str]]:
    """``[aliases]`` as (old, new) absolute path pairs."""
    where = path or config_file()
    cfg = load(path) if cfg is None else cfg
    table = cfg.get("aliases", {})
    if not isinstance(table, dict):
        raise PmbError(f"{where}: [aliases] must be a table of \"OLD\" = \"NEW\" paths")
    out = []
    for old, new in table.items():
        if not (isinstance(new, str) and old.startswith("/") and new.startswith("/")):
            raise PmbError(f"{where}: alias {old!r} = {new!r}: both must be absolute paths")
        out.append((old.rstrip("/") or "/", new.rstrip("/") or "/"))
    return out


def merge_maps(defaults: list[tuple[str, str]], flags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Flags win over the config file for the same OLD path."""
    table = dict(defaults)
    for old, new in flags:
        table[old] = new
    return [(o, n) for o, n in table.items() if o != n and os.path.isabs(o)]
