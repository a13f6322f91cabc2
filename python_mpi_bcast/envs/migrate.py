"""``python-mpi-bcast migrate``: move environments out of a storage area
(scratch is purged, home is small) without losing any.

find → export specs → relocate → compare → remove the source.  Each step
uses the engine the other commands use (``collect.classify``,
``envs.relocate.relocate``); the source is removed only after the copy has
the same distributions, the same files with the same content (apart from
the old location, rewritten) and imports what the source imports.  The
copy appears under its final name only when complete, and the source is
first renamed aside in one step, so a killed migrate leaves both
environments or the source, never neither.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import shutil
import time

from ..packing import collect
from ..source import conda, pyinfo
from ..support import leftovers
from ..package.scan import find_any
from ..package.prefixes import count_siblings, has_prefix, replace_text_prefix
from ..support.errors import PmbError
from ..support.files import write_atomic
from ..support.proc import run_checked
from ..support.report import fail, say
from ..support.paths import data_home
from .relocate import Relocated, relocate

RC_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile",
            ".zshenv", ".cshrc", ".tcshrc", ".config/fish/config.fish", ".condarc")

_DISTS = r"""
import importlib.metadata as m, json, sys
out = {}
for d in m.distributions():
    name = (d.metadata["Name"] or "").strip()
    if not name:
        continue
    top = (d.read_text("top_level.txt") or "").split()
    if not top:
        seen = []
        for f in d.files or []:
            p = f.parts
            if len(p) == 1 and p[0].endswith(".py"):
                seen.append(p[0][:-3])
            elif len(p) > 1 and p[0].isidentifier() and not p[0].endswith(".dist-info"):
                seen.append(p[0])
        top = sorted(set(seen))
    installer = (d.read_text("INSTALLER") or "").strip()
    out[name.lower()] = [name, d.version, top, installer]
print(json.dumps(out))
"""

_IMPORTS = r"""
import importlib, json, sys
ok = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        ok.append(name)
    except BaseException:
        pass
print(json.dumps(ok))
"""


@dataclasses.dataclass
class Found:
    name: str
    path: str
    kind: str = ""        # "venv" or "conda"
    invalid: str = ""     # why it cannot be migrated


@dataclasses.dataclass(frozen=True)
class Migrated:
    """What ``migrate_one`` did: the specs it wrote, whether the source is gone."""
    name: str
    source: str
    dest: str
    specs: list[str]
    removed: bool
    relocated: Relocated


def python_of(path: str, kind: str) -> str:
    return pyinfo.interpreter_of(path, conda.read_env(path).python_version
                                 if kind == "conda" else "")


def scan(directory: str) -> list[Found]:
    """The environments directly inside ``directory``, valid or not."""
    directory = os.path.abspath(directory)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise PmbError(f"{directory}: no such directory") from None
    except NotADirectoryError:
        raise PmbError(f"{directory} is not a directory") from None
    out = []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or os.path.islink(path) or not os.path.isdir(path):
            continue
        f = Found(name, path)
        try:
            f.kind = collect.classify(path)
            if f.kind == "venv":
                pyinfo.base_interpreter_of_venv(path)
            else:
                conda.read_env(path)
            _run(python_of(path, f.kind), "-c", "pass")
        except PmbError as e:
            f.invalid = str(e).replace(path + ": ", "").replace(path + " ", "")
        out.append(f)
    return out


def _run(python: str, *args: str, timeout: int = 300) -> str:
    return run_checked([python, "-I", *args], timeout,
                       failed=f"its Python ({python}) does not start",
                       too_slow=f"{python} did not answer within {timeout} s",
                       cannot_run=f"cannot run {python}").stdout


def distributions(python: str) -> dict[str, list]:
    """lower-case name -> [name, version, top-level modules, installer]."""
    return json.loads(_run(python, "-c", _DISTS))


def export_specs(found: Found, dists: dict[str, list], spec_dir: str) -> list[str]:
    """requirements.txt (every distribution) and, for a conda env,
    environment.yml (conda's records, plus pip's distributions)."""
    os.makedirs(spec_dir, exist_ok=True)
    written = []
    req = os.path.join(spec_dir, "requirements.txt")
    lines = [f"# {found.path}, exported by python-mpi-bcast migrate on "
             f"{time.strftime('%Y-%m-%d %H:%M')}"]
    lines += [f"{n}=={v}" for n, v, _, _ in sorted(dists.values(), key=lambda d: d[0].lower())]
    write_atomic(req, "\n".join(lines) + "\n")
    written.append(req)
    if found.kind == "conda":
        env = conda.read_env(found.path)
        channels = sorted({c for *_, c in env.specs if c})
        conda_names = {n.lower() for n, *_ in env.specs}
        out = [f"name: {found.name}", "channels:"] + [f"  - {c}" for c in channels]
        out.append("dependencies:")
        # a conda package whose Python distribution pip replaced or removed is
        # what the disk holds: pip's version under pip, or nothing
        replaced = {pyinfo.dist_key(d) for d in env.pip_replaced.values()}
        on_disk = {pyinfo.dist_key(k) for k in dists}
        for n, v, b, c in sorted(env.specs):
            dist = env.pip_replaced.get(n)
            if dist is None:
                out.append(f"  - {c + '::' if c else ''}{n}={v}={b}")
            elif pyinfo.dist_key(dist) not in on_disk:
                out.append(f"  # {n}={v}={b} left out: pip uninstalled it")
        pip_only = [d for k, d in sorted(dists.items())
                    if (k not in conda_names or pyinfo.dist_key(k) in replaced) and d[3] != "conda"]
        if pip_only:
            out.append("  - pip:")
            out += [f"    - {n}=={v}" for n, v, _, _ in pip_only]
        yml = os.path.join(spec_dir, "environment.yml")
        write_atomic(yml, "\n".join(out) + "\n")
        written.append(yml)
    return written


def _files(root: str) -> dict[str, str]:
    """rel path -> "l:target" for links, else "f"; byte code left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            if name.endswith((".pyc", ".pyo")):
                continue
            rel = os.path.relpath(full, root)
            out[rel] = "l:" + os.readlink(full) if os.path.islink(full) else "f"
    return out


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(1 << 20), b""):
            h.update(buf)
    return h.hexdigest()


def compare(src: str, dest: str, kind: str, olds: list[str]) -> list[str]:
    """What differs between the source and its relocated copy, beyond the
    old location being rewritten: distributions, files, contents, imports."""
    diffs = []
    py_old, py_new = python_of(src, kind), python_of(dest, kind)
    a, b = distributions(py_old), distributions(py_new)
    for k in sorted(set(a) | set(b)):
        if k not in b:
            diffs.append(f"distribution {a[k][0]} {a[k][1]} is missing in the copy")
        elif k not in a:
            diffs.append(f"distribution {b[k][0]} {b[k][1]} appeared in the copy")
        elif a[k][1] != b[k][1]:
            diffs.append(f"distribution {a[k][0]}: {a[k][1]} in the source, {b[k][1]} in the copy")
    fa, fb = _files(src), _files(dest)
    # relocate leaves these out or makes them anew
    skip = re.compile(r"^(conda-meta/history$|bin/activate|bin/Activate\.ps1$|pyvenv\.cfg$"
                      r"|\.python-mpi-bcast-relocate\.json$)")
    old_b = [o.encode() for o in olds]
    for rel in sorted(set(fa) | set(fb)):
        if skip.match(rel):
            continue
        if rel not in fb:
            diffs.append(f"file {rel} is missing in the copy")
        elif rel not in fa:
            diffs.append(f"file {rel} appeared in the copy")
        elif fa[rel] != fb[rel]:
            if not (fa[rel].startswith("l:") and has_prefix(fa[rel][2:].encode(), old_b)):
                diffs.append(f"{rel}: {fa[rel]} in the source, {fb[rel]} in the copy")
        elif fa[rel] == "f":
            s, d = os.path.join(src, rel), os.path.join(dest, rel)
            if os.path.getsize(s) < (256 << 20) and _digest(s) != _digest(d):
                if not old_b or find_any(s, old_b) is None:
                    diffs.append(f"{rel}: content differs and the source holds no old path "
                                 f"there")
                else:
                    why = _siblings_changed(s, d, old_b, dest.encode())
                    if why:
                        diffs.append(f"{rel}: {why}")
    tops = sorted({t for n, v, top, _ in a.values() for t in top if t.isidentifier()
                   and not t.startswith("_")})
    if tops:
        ok_old = set(json.loads(_run(py_old, "-c", _IMPORTS, *tops, timeout=900)))
        ok_new = set(json.loads(_run(py_new, "-c", _IMPORTS, *tops, timeout=900)))
        for t in sorted(ok_old - ok_new):
            diffs.append(f"'import {t}' works in the source but fails in the copy")
    return diffs


def _siblings_changed(src_file: str, dest_file: str, olds: list[bytes], dest: bytes) -> str:
    """Relocation rewrites an old location only as a whole path prefix;
    a longer sibling name (``/x/ana-data`` beside ``/x/ana``) must come
    through unchanged.  Returns what went wrong, or ''."""
    with open(src_file, "rb") as f:
        a = f.read()
    with open(dest_file, "rb") as f:
        b = f.read()
    # the new location may itself start with an old one (/x/ana -> /x/ana2/ana)
    b = replace_text_prefix(b, dest, b"\0")
    for old in olds:
        n_a, n_b = count_siblings(a, old), count_siblings(b, old)
        if n_a != n_b:
            return (f"the source names {n_a} path(s) that start with {old.decode(errors='replace')} "
                    f"but are not under it (e.g. a sibling '-data' directory); the copy "
                    f"names {n_b}")
    return ""


def default_destination(found: Found, to: str | None) -> str:
    """--to DIR/NAME; else ~/.conda/envs/NAME (where conda looks) for a
    conda env and ~/venvs/NAME for a venv."""
    if to:
        return os.path.join(os.path.abspath(to), found.name)
    home = os.path.expanduser("~")
    if found.kind == "conda":
        return os.path.join(home, ".conda", "envs", found.name)
    return os.path.join(home, "venvs", found.name)


def migrate_one(found: Found, dest: str, spec_dir: str, keep: bool) -> Migrated:
    """Export, relocate, compare, and only then remove the source."""
    src = found.path
    py = python_of(src, found.kind)
    dists = distributions(py)
    specs = export_specs(found, dists, spec_dir)
    say(f"{found.name}: {len(dists)} distributions; spec written to "
        f"{', '.join(specs)}")
    if os.path.lexists(dest):
        raise PmbError(f"{dest} already exists; {found.name} was not migrated (remove it or "
                       f"choose another --to)")
    res = relocate(src, dest)
    say(f"{found.name}: copied to {dest}")
    olds = sorted({src, os.path.realpath(src)})
    diffs = compare(src, dest, found.kind, olds)
    if diffs:
        trash = _aside(dest)
        leftovers.remove(trash)
        shown = "\n  ".join(diffs[:20]) + (f"\n  ... and {len(diffs) - 20} more"
                                          if len(diffs) > 20 else "")
        raise PmbError(f"{found.name}: the copy differs from the source, so the source was "
                       f"kept and the copy removed:\n  {shown}")
    say(f"{found.name}: the copy matches (distributions, files, contents, imports)")
    removed = False
    if not keep:
        remove_source(found)
        removed = True
    return Migrated(found.name, src, dest, specs, removed, res)


def remove_source(found: Found) -> None:
    trash = _aside(found.path)  # one rename: the source is gone only as a whole
    shutil.rmtree(trash)
    leftovers.release(trash)
    say(f"{found.name}: removed {found.path}")


def _aside(path: str) -> str:
    trash = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.migrated-"
                                                 f"{os.getpid()}")
    leftovers.register(trash)  # a killed migrate's next run removes it
    try:
        os.rename(path, trash)
    except BaseException:
        leftovers.release(trash)
        raise
    return trash


def _rc_files(home: str) -> list[tuple[str, str]]:
    """(start-up file as the user knows it, the file to read and edit): a
    symlinked dotfile (a dotfiles repository) is edited where it points; each
    real file once."""
    out, seen = [], set()
    for rel in RC_FILES:
        path = os.path.join(home, rel)
        real = os.path.realpath(path)
        if not os.path.isfile(real) or real in seen:
            continue
        seen.add(real)
        out.append((path, real))
    return out


def rc_naming(home: str, olds: list[str]) -> list[str]:
    """The start-up files that still name any of ``olds`` (as a whole path)."""
    olds_b = [o.encode() for o in olds]
    found = []
    for path, real in _rc_files(home):
        try:
            if find_any(real, olds_b) is not None:
                found.append(path)
        except OSError:
            continue
    return found


def update_rc(home: str, moves: list[tuple[str, str]]) -> list[str]:
    """Rewrite references to the old locations in the user's shell start-up
    files, each after a backup beside the file that is edited (the target of
    a symlinked one, which stays a link); returns the files changed.  A file
    that cannot be rewritten is said so and left as it was."""
    changed = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path, real in _rc_files(home):
        try:
            with open(real, "rb") as f:
                data = f.read()
        except OSError as e:
            say(f"cannot read {path}: {e.strerror}; not updated")
            continue
        new = data
        for old, dest in sorted(moves, key=lambda m: len(m[0]), reverse=True):
            new = replace_text_prefix(new, old.encode(), dest.encode())
        if new == data:
            continue
        shown = path if real == path else f"{path} (-> {real})"
        backup = f"{real}.pmb-backup-{stamp}"
        tmp = real + ".pmb-tmp"
        try:
            shutil.copy2(real, backup)
            with open(tmp, "wb") as f:
                f.write(new)
            shutil.copymode(real, tmp)
            os.replace(tmp, real)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            say(f"cannot update {shown}: {e.strerror}; left as it was")
            continue
        diff = difflib.unified_diff(data.decode(errors="surrogateescape").splitlines(True),
                                    new.decode(errors="surrogateescape").splitlines(True),
                                    fromfile=backup, tofile=real)
        say("".join(diff).rstrip("\n"))
        changed.append(shown)
    return changed


def choose(valid: list[Found], names: list[str], every: bool, directory: str,
           ask) -> list[Found]:
    """The environments to migrate: those named, or with ``every`` all valid
    ones, or those the user picks when asked (``ask(prompt)`` returns the
    answer; None: there is no terminal to ask on)."""
    if names:
        by_name = {f.name: f for f in valid}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise PmbError(f"no valid environment named {', '.join(unknown)} in {directory} "
                           f"(valid: {', '.join(by_name) or 'none'})")
        return [by_name[n] for n in names]
    if every:
        return list(valid)
    if ask is None:
        raise PmbError("name the environments to migrate, or pass --all (no terminal to ask on)")
    answer = ask("Select environments to migrate (comma-separated numbers or names, "
                 "'all'): ").strip()
    if answer.lower() == "all":
        return list(valid)
    chosen = []
    for item in (x.strip() for x in answer.split(",") if x.strip()):
        match = [f for i, f in enumerate(valid, 1) if item in (str(i), f.name)]
        if not match:
            raise PmbError(f"{item!r} is not one of the listed environments")
        chosen.append(match[0])
    return chosen


def migrate_chosen(chosen: list[Found], to: str | None, specs: str | None, keep: bool,
                   rewrite_rc: bool) -> None:
    """Migrate each of ``chosen`` to its destination (``to`` or the default
    for its kind), its specs under ``specs`` (default: the data home's
    specs/NAME); with ``rewrite_rc`` also rewrite the shell start-up files
    and remove a source only once none names it.  Each step is said as it
    is taken, one environment's failure as it happens; what was not
    migrated, or kept, ends in one PmbError."""
    failed, moves, kept = [], [], []
    for f in chosen:
        dest = default_destination(f, to)
        spec_dir = os.path.join(specs or os.path.join(data_home(), "specs"), f.name)
        say(f"== {f.name}: {f.path} -> {dest}")
        try:
            # with --update-rc a source goes only once no start-up file names it
            migrate_one(f, dest, spec_dir, keep or rewrite_rc)
            moves.append((f, dest))
        except PmbError as e:
            fail(str(e))
            failed.append(f.name)
    if rewrite_rc and moves:
        home = os.path.expanduser("~")
        pairs = [(old, dest) for f, dest in moves for old in {f.path, os.path.realpath(f.path)}]
        changed = update_rc(home, pairs)
        say(f"updated {', '.join(changed)}" if changed else "no shell start-up file named "
            "the old locations")
        for f, dest in moves:
            still = rc_naming(home, sorted({f.path, os.path.realpath(f.path)}))
            if still:
                fail(f"{f.name}: {still[0]} still names {f.path}, "
                         f"so the source was kept (the copy is {dest}); edit that file, then "
                         f"remove the source")
                kept.append(f.name)
            elif not keep:
                remove_source(f)
    if not rewrite_rc:
        for f, dest in moves:
            still = rc_naming(os.path.expanduser("~"), sorted({f.path, os.path.realpath(f.path)}))
            if still:
                say(f"note: {', '.join(still)} still name {f.path}; change that to {dest} "
                    f"(--update-rc does it, after a backup)")
    problems = []
    if failed:
        problems.append(f"not migrated: {', '.join(failed)} (sources kept)")
    if kept:
        problems.append(f"copied, sources kept while a start-up file names them: "
                        f"{', '.join(kept)}")
    if problems:
        raise PmbError("; ".join(problems))
