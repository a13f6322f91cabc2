"""Find the editable installs of a site directory and what they make importable.

An editable install (``pip install -e``) leaves the project's code where it
is and puts a hook into site-packages.  The hooks in use:

* setuptools >= 64 (PEP 660), default ("lenient") mode: ``__editable__.NAME-VER.pth``
  holding ``import __editable___NAME_VER_finder; ...install()``, and that
  finder module, whose ``MAPPING`` names each top-level package or module's
  path and ``NAMESPACES`` the namespace packages' directories;
* a ``.pth`` path line naming a directory outside the environment: setuptools'
  strict mode (a link tree under the project's ``build/``) and compat mode
  (the source directory), hatchling, flit, pdm, meson-python's built tree,
  legacy develop installs (``easy-install.pth`` + ``NAME.egg-link``), and
  plain ``.pth`` files users write;
* meson-python: ``NAME-editable.pth`` holding ``import _NAME_editable_loader``
  (``; _NAME_editable_loader.init()`` since 0.14), and that loader module,
  which on import runs ninja in the project's build directory and maps
  modules to the build and source directories by the build's install plan
  (``BUILD/meson-info/intro-install_plan.json``).  The loader's call naming
  the build directory is read as literals (never executed), the plan as
  JSON; what is packed is what the last build left (ninja is not run at
  pack time: the user's build may need a compiler or environment the pack
  does not have), and a build that is missing or older than its sources
  gets one line.

A ``.pth`` line that runs code (``import ...``) and is no hook above is kept
as it is; each absolute path written in it as a string literal that lies
outside the environment gets one line (the code is not run at pack time,
so paths it computes, from ``os.environ`` or ``~``, cannot be seen).  An
extension module built for another Python version (``NAME.cpython-3XY-...so``)
in the site directory or an editable project gets one line too
(``other_pythons``).

What is importable through them is listed as (source file, path relative to
the site directory): for an import hook, exactly its mapping; for a path
entry, what Python's path finder imports from that directory: modules
(``*.py``, extension modules), packages (a directory with ``__init__.py``,
whole, with its data), namespace packages (a directory with Python files
below it; not the build tools' ``build``/``dist``), not the project's own
tooling (``setup.py``, ``conftest.py``, ``noxfile.py``), and the ``*.egg-info``
metadata of a develop install.  site-packages' own entries come first on
``sys.path``, path entries in ``.pth`` order next, import hooks last (they
sit after the path finder on ``sys.meta_path``): a name already taken by an
earlier one is not taken again, as at import time.

Nothing here copies or changes anything: ``packing.collect`` copies the
files into the staged site directory and drops the hooks, ``launch.run``
keys the sources' state.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import urllib.parse

from .pyinfo import dist_key

# what the path finder imports as an extension module on this platform
EXT_SUFFIXES = (".so", ".abi3.so")
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache"})
BUILD_DIRS = frozenset({"build", "dist"})
# a project's own tooling at the top of a source directory, never imported by its code
TOOL_FILES = frozenset({"setup.py", "conftest.py", "noxfile.py", "fabfile.py"})
FINDER = re.compile(r"^import (__editable___[A-Za-z0-9_]+_finder)\s*;\s*\1\.install\(\)\s*$")
MESON_LOADER = re.compile(r"^import (_[A-Za-z0-9_]+_editable_loader)\s*"
                          r"(?:;\s*\1\.(?:init|install)\(\)\s*)?$")
# the extension suffix of a CPython version: mod.cpython-311-x86_64-linux-gnu.so
CPYTHON_EXT = re.compile(r"\.cpython-(\d)(\d+)[a-z]*(?:-[^.]*)?\.so$")


@dataclasses.dataclass
class Editable:
    name: str                       # the distribution's name (or the .pth file's)
    version: str
    kind: str                       # how it was installed, for the user
    origin: str                     # the directory its files come from
    files: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (abs, site-rel)
    hooks: list[str] = dataclasses.field(default_factory=list)  # site-rel files to drop
    # files not packed whose edit makes the packed ones stale (a meson
    # project's compiled sources and meson.build files): run's key covers them
    watch: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Found:
    editables: list[Editable]
    pth_drop: dict[str, list[str]]  # .pth file -> its lines that the packed tree drops
    hooks: list[str]                # every site-rel file the packed tree drops
    warnings: list[str]


def _module_name(entry: str) -> str | None:
    """The top-level import name a site or path-entry directory entry gives
    (``pkg`` for ``pkg/``, ``pkg.py``, ``pkg.cpython-311-x86_64-linux-gnu.so``)."""
    if entry.endswith(".py"):
        stem = entry[:-3]
    elif entry.endswith(".so"):
        stem = entry.split(".", 1)[0]
    elif "." not in entry:
        stem = entry
    else:
        return None
    return stem if stem.isidentifier() else None


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _walk_files(top: str, rel_top: str) -> list[tuple[str, str]]:
    """Every file under ``top`` (a package: code and data), symlinks
    followed (setuptools' strict link tree), byte code and VCS data left out."""
    out = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel_dir = os.path.relpath(dirpath, top)
        for fn in sorted(filenames):
            if fn.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, fn)
            if os.path.isfile(full):
                out.append((full, os.path.normpath(os.path.join(rel_top, rel_dir, fn))))
    return out


def _has_code(top: str) -> bool:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        if any(f.endswith((".py",) + EXT_SUFFIXES) for f in filenames):
            return True
    return False


def _path_entry_files(d: str, taken: set[str], dists: set[str]) -> list[tuple[str, str]]:
    """What Python's path finder imports from directory ``d``."""
    out = []
    try:
        entries = sorted(os.listdir(d))
    except OSError:
        return out
    # a package directory shadows a module of the same name in one entry
    dirs = {e for e in entries if os.path.isdir(os.path.join(d, e))}
    for e in entries:
        full = os.path.join(d, e)
        if e.endswith(".egg-info") and os.path.isdir(full):
            if dist_key(e[:-9].split("-")[0]) not in dists:
                out += _walk_files(full, e)
            continue
        mod = _module_name(e)
        if mod is None or mod in taken or e in TOOL_FILES:
            continue
        if e in dirs:
            if e in SKIP_DIRS:
                continue
            if os.path.isfile(os.path.join(full, "__init__.py")):
                out += _walk_files(full, e)
            elif e not in BUILD_DIRS and _has_code(full):
                out += _walk_files(full, e)
            else:
                continue
        elif mod in dirs and os.path.isfile(os.path.join(d, mod, "__init__.py")):
            continue
        elif e.endswith(".py") or e.endswith(EXT_SUFFIXES):
            out.append((full, e))
        else:
            continue
        taken.add(mod)
    return out


def _finder_mapping(path: str) -> tuple[dict, dict]:
    """MAPPING and NAMESPACES of a setuptools editable finder module, read
    as literals (never executed)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = {}
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target in ("MAPPING", "NAMESPACES") and value is not None:
            found[target] = ast.literal_eval(value)
    return found.get("MAPPING", {}), found.get("NAMESPACES", {})


def _meson_call(path: str) -> tuple[str, set, str]:
    """(project or '', top-level names, build directory) of a meson-python
    editable loader module: the literal arguments of its call that sets up
    the finder, read with ast, never executed: ``MesonpyMetaFinder(project,
    names, build, cmd, verbose)`` (0.14 and later) or ``install(names, build,
    cmd, verbose)`` (0.13)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and
                node.func.id in ("MesonpyMetaFinder", "install") and len(node.args) >= 4):
            continue
        args = []
        for a in node.args[:3]:
            try:
                args.append(ast.literal_eval(a))
            except ValueError:
                args.append(None)
        if isinstance(args[0], str) and isinstance(args[1], (set, list, tuple)) and \
                isinstance(args[2], str):
            return args[0], set(args[1]), args[2]
        if isinstance(args[0], (set, list, tuple)) and isinstance(args[1], str):
            return "", set(args[0]), args[1]
    raise ValueError("no MesonpyMetaFinder(...) or install(...) call with literal arguments")


def _meson_files(build: str, names: set) -> tuple[list[tuple[str, str]], list[str]]:
    """What a meson-python loader maps, as its ``collect`` does from the
    build's install plan: (source file, site-rel) pairs for the top-level
    ``names``, and the planned files that do not exist (not built)."""
    with open(os.path.join(build, "meson-info", "intro-install_plan.json"),
              encoding="utf-8") as f:
        plan = json.load(f)
    files, missing = [], []
    for key, data in sorted(plan.items()):
        if not isinstance(data, dict):
            continue
        for src, target in sorted(data.items()):
            src = os.path.normpath(src)
            dest = str((target or {}).get("destination", "")).split("/")
            if dest[0] not in ("{py_platlib}", "{py_purelib}") or len(dest) < 2 \
                    or _module_name(dest[1]) not in names:
                continue
            rel = os.path.join(*dest[1:])
            if key == "install_subdirs" or (key == "targets" and os.path.isdir(src)):
                ex_files = {os.path.normpath(x) for x in target.get("exclude_files", [])}
                ex_dirs = {os.path.normpath(x) for x in target.get("exclude_dirs", [])}
                for full, r in _walk_files(src, rel):
                    inner = os.path.relpath(full, src)
                    if inner in ex_files or any(inner.startswith(d + "/") for d in ex_dirs):
                        continue
                    files.append((full, r))
            elif os.path.isfile(src):
                files.append((src, rel))
            else:
                missing.append(src)
    return files, missing


def _meson_inputs(build: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The build's (compiled source, object) pairs (compile_commands.json)
    and its meson.build files (intro-buildsystem_files.json)."""
    try:
        with open(os.path.join(build, "compile_commands.json"), encoding="utf-8") as f:
            commands = json.load(f)
    except (OSError, ValueError):
        commands = []
    pairs = []
    for c in commands if isinstance(commands, list) else []:
        if isinstance(c, dict) and isinstance(c.get("file"), str) and \
                isinstance(c.get("output"), str):
            d = c.get("directory") or build
            pairs.append((os.path.normpath(os.path.join(d, c["file"])),
                          os.path.normpath(os.path.join(d, c["output"]))))
    try:
        with open(os.path.join(build, "meson-info", "intro-buildsystem_files.json"),
                  encoding="utf-8") as f:
            build_files = json.load(f)
    except (OSError, ValueError):
        build_files = []
    return pairs, [b for b in build_files if isinstance(b, str)] \
        if isinstance(build_files, list) else []


def _meson_stale(build: str) -> str:
    """Why the build in ``build`` is older than its sources, or '': a
    compiled source newer than its object (compile_commands.json), a
    ``meson.build`` newer than ``build.ninja``.  Only times are compared;
    ninja is not run."""

    def mtime(p: str) -> float:
        try:
            return os.stat(p).st_mtime
        except OSError:
            return -1.0

    pairs, build_files = _meson_inputs(build)
    for src, out in pairs:
        if mtime(out) < 0:
            return f"{src} was never compiled"
        if mtime(src) > mtime(out):
            return f"{src} changed after it was compiled"
    ninja = mtime(os.path.join(build, "build.ninja"))
    for bf in build_files:
        if mtime(bf) > ninja:
            return f"{bf} changed after the build was configured"
    return ""


def _meson_source(build: str) -> str:
    try:
        with open(os.path.join(build, "meson-info", "meson-info.json"), encoding="utf-8") as f:
            return str(json.load(f)["directories"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _meson(site: str, pth: str, loader: str, owner: dict, urls: dict,
           found: Found) -> Editable | None:
    """The editable project of one meson-python loader, or None (said)."""
    path = os.path.join(site, loader + ".py")
    name, version = owner.get(pth, ("", ""))
    source = ""  # what pip was given: direct_url.json, kept when the build is gone
    try:
        with open(os.path.join(site, urls[name]), encoding="utf-8") as f:
            url = json.load(f)["url"]
        if url.startswith("file://"):
            source = urllib.parse.unquote(url[len("file://"):])
    except (KeyError, OSError, ValueError, TypeError):
        pass
    try:
        project, names, build = _meson_call(path)
    except (OSError, SyntaxError, ValueError) as e:
        found.warnings.append(f"{path}: a meson-python editable loader whose build directory "
                              f"cannot be read ({e}); the editable project {name or pth} is "
                              f"left out: reinstall it (pip install -e SOURCE) and pack again")
        return None
    name = name or project or loader
    source = _meson_source(build) or source
    ed = Editable(name, version, "meson-python rebuild hook", source or build,
                  hooks=[loader + ".py"])
    again = f"pip install -e {source or 'SOURCE'}"
    if not os.path.isdir(build):
        found.warnings.append(f"{path}: the meson-python editable project {name} builds in "
                              f"{build}, which does not exist; left out of the package: "
                              f"reinstall it ({again} --no-build-isolation) and pack again")
        return None
    try:
        ed.files, missing = _meson_files(build, names)
    except (OSError, ValueError, AttributeError) as e:
        found.warnings.append(f"{path}: the install plan of {build} cannot be read ({e}); the "
                              f"meson-python editable project {name} is left out: reinstall "
                              f"it ({again} --no-build-isolation) and pack again")
        return None
    pairs, build_files = _meson_inputs(build)
    ed.watch = sorted({src for src, _ in pairs} | set(build_files))
    stale = f"{missing[0]} is not built" if missing else _meson_stale(build)
    if stale:
        found.warnings.append(f"{path}: the build of the meson-python editable project {name} "
                              f"in {build} is out of date ({stale}); packed as last built: "
                              f"build it (python -c 'import {sorted(names)[0]}' with the "
                              f"environment's python, or ninja -C {build}) and pack again")
    return ed


def _code_paths(line: str, pth: str, inside: list[str]) -> list[str]:
    """What a ``.pth`` line that runs code names outside ``inside``: each
    string literal in it that is an absolute path (read with ast; the line
    is not run, so paths it computes are not seen)."""
    try:
        tree = ast.parse(line.strip(), pth)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith("/") and "\n" not in node.value:
            p = os.path.normpath(node.value)
            if p not in out and not _under(p, inside) and \
                    not _under(os.path.realpath(p), inside):
                out.append(p)
    return out


def other_pythons(paths, version: str) -> list[str]:
    """The extension modules among ``paths`` built for a CPython other than
    ``version`` ("3.11"): python never imports them (one line each)."""
    out = []
    for p in paths:
        m = CPYTHON_EXT.search(p)
        if m and f"{m.group(1)}.{m.group(2)}" != version:
            out.append(f"{p}: an extension module built for Python {m.group(1)}.{m.group(2)}, "
                       f"but the environment runs Python {version}, so it cannot be imported "
                       f"(packed as it is); rebuild it for {version} (reinstall its package, "
                       f"or rebuild the checkout it came from) or remove it")
    return out


def _dists(site: str) -> tuple[dict[str, tuple[str, str]], set[str], dict[str, str]]:
    """file (site-rel) -> (name, version) from each dist-info's RECORD; the
    normalized names; name -> editable URL (direct_url.json)."""
    owner: dict[str, tuple[str, str]] = {}
    names: set[str] = set()
    urls: dict[str, str] = {}
    for e in sorted(os.listdir(site)):
        if not e.endswith(".dist-info"):
            continue
        name, _, version = e[:-10].partition("-")
        names.add(dist_key(name))
        try:
            with open(os.path.join(site, e, "RECORD"), encoding="utf-8") as f:
                for line in f:
                    p = line.split(",", 1)[0]
                    if p:
                        owner[os.path.normpath(p)] = (name, version)
        except OSError:
            pass
        try:
            with open(os.path.join(site, e, "direct_url.json"), encoding="utf-8") as f:
                d = json.load(f)
            if d.get("dir_info", {}).get("editable"):
                urls[name] = f"{e}/direct_url.json"
        except (OSError, ValueError, AttributeError):
            pass
    return owner, names, urls


def find(site: str, inside: list[str]) -> Found:
    """The editable installs of ``site`` whose code lies outside ``inside``
    (the packed locations)."""
    found = Found([], {}, [], [])
    if not os.path.isdir(site):
        return found
    owner, dists, urls = _dists(site)
    entries = sorted(os.listdir(site))
    taken = {m for e in entries if not e.endswith((".pth", ".dist-info", ".egg-info"))
             and not e.startswith("__editable__") and (m := _module_name(e))}
    egg_links = {}
    for e in entries:
        if e.endswith(".egg-link"):
            try:
                with open(os.path.join(site, e), encoding="utf-8") as f:
                    target = f.readline().strip()
            except OSError:
                continue
            if target and not _under(os.path.abspath(target), inside):
                egg_links[os.path.normpath(target)] = e
    finders = []
    mesons = []
    for pth in (e for e in entries if e.endswith(".pth")):
        try:
            with open(os.path.join(site, pth), encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        drop = []
        for n, line in enumerate(lines, 1):
            s = line.strip()
            m = FINDER.match(s)
            if m:
                finders.append((pth, line, m.group(1)))
                continue
            m = MESON_LOADER.match(s)
            if m:
                mesons.append((pth, line, m.group(1)))
                continue
            if s.startswith(("import ", "import\t")):
                named = _code_paths(s, pth, inside)
                if named:
                    where = ", ".join(p + ("" if os.path.exists(p) else " (which does not exist)")
                                      for p in named)
                    found.warnings.append(
                        f"{os.path.join(site, pth)}: line {n} runs code at start-up that names "
                        f"{where}, outside the environment; it is packed as it is, so every "
                        f"rank would run it and look there, on the shared filesystem (pack "
                        f"reads the paths written in the line, it does not run it): install "
                        f"that code into the environment or remove the line, and pack again")
                continue
            if not s or s.startswith("#"):
                continue
            d = os.path.normpath(os.path.join(site, s))
            if _under(d, inside) or _under(os.path.realpath(d), inside):
                continue
            drop.append(line)
            if not os.path.isdir(d):
                found.warnings.append(f"{os.path.join(site, pth)}: names {s}, which does not "
                                      f"exist (python skips it); left out of the package")
                continue
            name, version = owner.get(pth, ("", ""))
            kind = "path entry in " + pth
            link = egg_links.pop(d, None)
            if link:
                name, kind = link[:-9], "develop install (.egg-link)"
                found.hooks.append(link)
            ed = Editable(name or pth, version, kind, d,
                          _path_entry_files(d, taken, dists))
            found.editables.append(ed)
        if drop:
            found.pth_drop[pth] = drop
    for pth, line, mod in mesons:
        ed = _meson(site, pth, mod, owner, urls, found)
        found.pth_drop.setdefault(pth, []).append(line)
        found.hooks.append(mod + ".py")
        if ed:
            found.editables.append(ed)
            taken.update(m for _, rel in ed.files if (m := _module_name(rel.split("/")[0])))
    for pth, line, mod in finders:
        finder = mod + ".py"
        name, version = owner.get(pth, ("", ""))
        ed = Editable(name or pth, version, "setuptools import hook", "", hooks=[finder])
        try:
            mapping, namespaces = _finder_mapping(os.path.join(site, finder))
        except (OSError, SyntaxError, ValueError) as e:
            found.warnings.append(f"{os.path.join(site, finder)}: cannot read its mapping "
                                  f"({e}); the editable project {name or pth} is left out")
            continue
        origins = []
        for modname, path in sorted(mapping.items()):
            top = modname.split(".")[0]
            if top in taken and "." not in modname:
                continue
            rel = modname.replace(".", "/")
            if os.path.isdir(path):
                ed.files += _walk_files(path, rel)
            elif os.path.isfile(path):
                ed.files.append((path, os.path.join(os.path.dirname(rel),
                                                    os.path.basename(path))))
            else:
                found.warnings.append(f"{os.path.join(site, finder)}: maps {modname} to "
                                      f"{path}, which does not exist; left out of the package")
                continue
            origins.append(os.path.dirname(path))
        for modname, paths in sorted(namespaces.items()):
            for path in paths:
                if os.path.isdir(path):
                    ed.files += _walk_files(path, modname.replace(".", "/"))
        for modname in mapping:
            taken.add(modname.split(".")[0])
        ed.origin = os.path.commonpath(origins) if origins else "?"
        found.editables.append(ed)
        found.pth_drop.setdefault(pth, []).append(line)
        found.hooks.append(finder)
    for target, link in sorted(egg_links.items()):
        found.hooks.append(link)
        found.warnings.append(f"{os.path.join(site, link)}: a develop install of {target} "
                              f"that no .pth puts on sys.path; left out of the package")
    for ed in found.editables:
        url = urls.get(ed.name)
        if url:  # the packed copy is no longer editable
            found.hooks.append(url)
    return found


def refusal(site: str, inside: list[str]) -> str | None:
    """The line ``pack --refuse-editable`` stops with, if ``site`` has an
    editable install outside ``inside``."""
    f = find(site, inside)
    if not f.editables:
        return None
    ed = f.editables[0]
    return (f"{site}: '{ed.name}' is an editable install (pip install -e) whose code lives "
            f"in {ed.origin}, outside the environment; reinstall it without -e (pip install "
            f"{ed.origin}) and pack again, or pack without --refuse-editable")
