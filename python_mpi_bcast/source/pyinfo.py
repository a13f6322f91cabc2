"""Ask a Python interpreter about itself (in a subprocess) and find the base
interpreter behind a venv."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

from ..support.errors import PmbError
from . import conda
from ..support.proc import run_checked


def dist_key(name: str) -> str:
    """A distribution's name as pip compares names (PEP 503: case and runs of
    ``-``, ``_``, ``.`` do not count)."""
    return re.sub(r"[-_.]+", "-", name).lower()

_QUERY = r"""
import json, os, site, sys, sysconfig
v = sysconfig.get_config_var
sites = [p for p in site.getsitepackages() if p.startswith(sys.prefix + os.sep)]
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "hexversion": sys.hexversion,
    "implementation": sys.implementation.name,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "exec_prefix": sys.exec_prefix,
    "stdlib": sysconfig.get_path("stdlib"),
    "platstdlib": sysconfig.get_path("platstdlib"),
    "purelib": sysconfig.get_path("purelib"),
    "scripts": sysconfig.get_path("scripts"),
    "sites": sites,
    "libdir": v("LIBDIR") or "",
    "instsoname": v("INSTSONAME") or "",
    "ldlibrary": v("LDLIBRARY") or "",
    "enable_shared": bool(v("Py_ENABLE_SHARED")),
    "soabi": v("SOABI") or "",
    "multiarch": v("MULTIARCH") or "",
    "platform": sysconfig.get_platform(),
}))
"""


@dataclasses.dataclass(frozen=True)
class PyInfo:
    """What an interpreter says about itself (``_QUERY``'s JSON, one field a key)."""
    version: str          # "3.11"
    hexversion: int
    implementation: str
    executable: str
    prefix: str
    base_prefix: str
    exec_prefix: str
    stdlib: str
    platstdlib: str
    purelib: str
    scripts: str
    sites: tuple[str, ...]  # its site directories under its prefix
    libdir: str
    instsoname: str
    ldlibrary: str
    enable_shared: bool
    soabi: str
    multiarch: str
    platform: str

    @classmethod
    def from_json(cls, text: str) -> "PyInfo":
        d = json.loads(text)
        d["sites"] = tuple(d["sites"])
        return cls(**d)


def query(executable: str, isolated: bool = True) -> PyInfo:
    """Run ``executable`` and return what it says about itself."""
    args = [executable, "-I" if isolated else "-E", "-c", _QUERY]
    out = run_checked(args, 120, failed=f"Python interpreter {executable} failed to start",
                      too_slow=f"Python interpreter {executable} did not answer within 120 s",
                      cannot_run=f"cannot run Python interpreter {executable}", silent="no output")
    info = PyInfo.from_json(out.stdout)
    if info.implementation != "cpython":
        raise PmbError(f"{executable} is {info.implementation}; only CPython can be packed")
    return info


def read_pyvenv_cfg(venv: str) -> dict[str, str]:
    cfg = os.path.join(venv, "pyvenv.cfg")
    out = {}
    try:
        with open(cfg, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip()
    except FileNotFoundError:
        raise PmbError(f"{venv} is not a venv (no pyvenv.cfg); give a directory made by "
                       f"'python -m venv' or 'virtualenv'") from None
    except OSError as e:
        raise PmbError(f"{cfg}: cannot read: {e.strerror}") from None
    return out


def is_venv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def interpreter_of(prefix: str, version: str = "") -> str:
    """The interpreter of a venv, a conda env or a Python installation:
    ``bin/pythonX.Y`` (with ``version``), then ``bin/python3``, then
    ``bin/python``, as it is named there (a venv's links to its base
    interpreter; ``base_interpreter_of_venv`` finds that one).  Without one,
    a PmbError that says what the prefix is and what to do."""
    mm = ".".join(version.split(".")[:2])
    for name in ([f"python{mm}"] if mm else []) + ["python3", "python"]:
        exe = os.path.join(prefix, "bin", name)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    if is_venv(prefix):
        raise PmbError(f"{prefix}: no bin/python3 in this venv; recreate the venv")
    if conda.is_conda_env(prefix):
        raise PmbError(f"{prefix}: a conda environment without Python (no bin/python3); "
                       f"install python into it (conda install -p {prefix} python) or pack it "
                       f"with --directory")
    raise PmbError(f"{prefix} is neither a venv (no pyvenv.cfg), a conda environment (no "
                   f"conda-meta/) nor a Python installation (no bin/python3); give the "
                   f"environment's or the installation's directory")


def base_interpreter_of_venv(venv: str) -> str:
    """Return the path of the base interpreter executable behind ``venv``."""
    cfg = read_pyvenv_cfg(venv)
    home = cfg.get("home")
    if not home:
        raise PmbError(f"{venv}/pyvenv.cfg has no 'home' line; recreate the venv")
    version = cfg.get("version_info") or cfg.get("version") or ""
    mm = ".".join(version.split(".")[:2])
    candidates = [f"python{mm}"] if mm else []
    candidates += ["python3", "python"]
    for name in candidates:
        exe = os.path.join(home, name)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return os.path.realpath(exe)
    raise PmbError(f"{venv}: its base interpreter is gone (pyvenv.cfg says home = {home}, "
                   f"which has no python{mm or '3'}); recreate the venv with an existing Python")


def running_base_interpreter() -> str:
    """The base interpreter of the Python running this code (outside any
    venv), of the same X.Y version."""
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
        exe = os.path.join(sys.base_prefix, "bin", name)
        if os.path.exists(exe):
            return os.path.realpath(exe)
    raise PmbError(f"no python3 found in {sys.base_prefix}/bin, the base of {sys.executable}")


def resolve_interpreter(spec: str | None) -> str:
    """Turn ``--python [SPEC]`` into an interpreter executable.

    SPEC may be a venv (its base interpreter), a Python install prefix, or an
    executable.  Without SPEC: the base of the active venv, else the base of
    the Python running this tool.
    """
    if spec is None:
        venv = os.environ.get("VIRTUAL_ENV")
        if venv and is_venv(venv):
            return base_interpreter_of_venv(venv)
        return running_base_interpreter()
    if not os.path.exists(spec):
        raise PmbError(f"{spec}: no such file or directory")
    if os.path.isdir(spec):
        if is_venv(spec):
            return base_interpreter_of_venv(spec)
        import glob
        versions = sorted((p.rsplit("python", 1)[1] for p in
                           glob.glob(os.path.join(spec, "bin", "python3.[0-9]*"))
                           if re.fullmatch(r".*python3\.\d+", p)),
                          key=lambda v: [int(x) for x in v.split(".")])
        return os.path.realpath(interpreter_of(spec, versions[-1] if versions else ""))
    return os.path.realpath(spec)
