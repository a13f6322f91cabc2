"""Count the file-related system calls of a command, per process and per
place, from ``strace -ff -y`` traces (one trace file per task, so no call is
split into "unfinished"/"resumed" halves; ``-y`` names the file behind every
descriptor, ``AT_FDCWD`` included, so relative paths resolve).

As a library (benchmarks/run.py, tests/launcher/test_no_writes.py, the quick start)::

    procs = trace(cmd, env=env, workdir=tmp)       # run cmd under strace
    for owner, calls in by_program(procs).items(): # group tasks by program
        ...places(calls, [("tree", "/dev/shm/x"), ...])

As a command::

    python3 benchmarks/filecalls.py count --root DIR [--root DIR2] \\
        [--place LABEL=DIR] [--per-job] [--list PLACE] [--total] -- CMD...

prints, per process that touched anything (threads and forks without exec
count with the program they belong to), the calls whose path lies under
each ``--root``, and every call sorted into places: the roots, the MPI
library's directory (found in the trace), the dynamic loader and system
libraries, the current directory, ``$HOME``, the operating system (``/etc``,
``/proc``, ``/sys``, ``/dev``, ...) and anything else.  ``--per-job`` prints
only the job's totals.  Counted: the ``%file`` class (every call that takes
a path: open, stat, access, readlink, execve, ...) plus calls on a
descriptor that name its file through ``-y`` (``newfstatat(fd, "")``);
``read``/``pread64`` are traced for the bytes read, not counted as calls.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

# traced: calls with a path, reads (bytes), and what creates tasks (to know
# which program a thread or a forked child belongs to)
TRACE = "%file,read,pread64,fchmod,fchown,ftruncate,fsetxattr,clone,clone3,fork,vfork"
READS = {"read", "pread64"}
# mapping a file reads it too (sbcast maps what it sends): traced only when
# asked for (trace=mmap), counted as bytes of the file like a read
MAPS = {"mmap"}
TASKS = {"clone", "clone3", "fork", "vfork"}
# calls that change the file system, and open flags that may
MODIFY = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir",
          "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown",
          "lchown", "fchown", "fchownat", "truncate", "ftruncate", "utime", "utimes",
          "utimensat", "futimesat", "mknod", "mknodat", "setxattr", "lsetxattr", "fsetxattr",
          "removexattr", "lremovexattr", "creat"}
WRITE_FLAGS = re.compile(r"\bO_(WRONLY|RDWR|CREAT|TRUNC|APPEND)\b")
# calls whose second string is output, not a path (a buffer, an attribute name)
FIRST_STRING_ONLY = {"readlink", "readlinkat", "getxattr", "lgetxattr", "setxattr",
                     "lsetxattr", "removexattr", "lremovexattr", "listxattr", "llistxattr"}

_LINE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?|0x[0-9a-f]+)(.*)$")
_FD = re.compile(r"^(?:-?\d+|AT_FDCWD)<(.*)>$")


@dataclass
class Call:
    name: str
    paths: list          # absolute paths the call names (resolved)
    ret: int | None
    args: str            # the raw argument text
    nbytes: int = 0      # for reads: bytes read

    @property
    def ok(self) -> bool:
        return self.ret is not None and self.ret >= 0

    def modifies(self) -> bool:
        """Whether the call may change the file system at its paths."""
        if self.name in MODIFY:
            return True
        if self.name in ("open", "openat", "openat2"):
            return bool(WRITE_FLAGS.search(self.args))
        return False


@dataclass
class Task:
    tid: int
    events: list = field(default_factory=list)  # Call, ("clone", tid, thread), ("exec", path)


def split_args(text: str) -> list[str]:
    """Top-level arguments of a strace line (commas inside quotes, brackets,
    braces and -y's <...> do not split)."""
    out, depth, cur, i, quote = [], 0, [], 0, False
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c in "[{(<":
            depth += 1
            cur.append(c)
        elif c in "]})>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


def _unquote(s: str) -> str | None:
    if len(s) >= 2 and s[0] == '"' and s.rstrip(".").endswith('"'):
        body = s.rstrip(".")[1:-1]
        try:  # strace writes bytes it does not print as \ooo or \xhh
            raw = body.encode("latin-1", "backslashreplace").decode("unicode_escape")
            return raw.encode("latin-1").decode("utf-8", "surrogateescape")
        except (UnicodeDecodeError, UnicodeEncodeError):
            return body
    return None


def parse_line(line: str, cwd: str) -> tuple[Call | None, str]:
    """One trace line -> (Call or None, the task's cwd as now known)."""
    m = _LINE.match(line.rstrip("\n"))
    if not m:
        return None, cwd
    name, argtext, ret, rest = m.groups()
    try:
        retval = int(ret, 0) if ret != "?" else None
    except ValueError:
        retval = None
    args = split_args(argtext)
    paths: list[str] = []
    base = cwd
    strings = 0
    for a in args:
        fd = _FD.match(a)
        if fd:
            if a.startswith("AT_FDCWD"):
                cwd = fd.group(1)
            base = fd.group(1)
            continue
        s = _unquote(a)
        if s is None:
            continue
        strings += 1
        if name in READS or (strings > 1 and name in FIRST_STRING_ONLY):
            break
        if name in ("symlink", "symlinkat") and strings == 1:
            continue  # the link's target: text, not a path looked up now
        if s == "":
            if base and base.startswith("/"):
                paths.append(base)  # *at(fd, "", AT_EMPTY_PATH): the fd's file
        elif s.startswith("/"):
            paths.append(os.path.normpath(s))
        elif base and base.startswith("/"):
            paths.append(os.path.normpath(os.path.join(base, s)))
        base = cwd
    if not paths and args and (strings == 0 or name in READS):
        fd = _FD.match(args[0])  # a call on a descriptor: fstat, read, fchmod ...
        if fd and fd.group(1).startswith("/") and not args[0].startswith("AT_FDCWD"):
            paths.append(fd.group(1))
    if name == "chdir" and retval == 0 and paths:
        cwd = paths[0]
    if name in MAPS:  # mmap(addr, length, prot, flags, fd<path>, offset)
        fd = _FD.match(args[4]) if len(args) > 4 else None
        if not fd or not fd.group(1).startswith("/") or retval is None or retval < 0:
            return None, cwd  # anonymous, or failed
        call = Call(name, [fd.group(1)], retval, argtext)
        call.nbytes = int(args[1], 0)
        return call, cwd
    call = Call(name, paths, retval, argtext)
    if name in READS and retval and retval > 0:
        call.nbytes = retval
    return call, cwd


def parse_file(path: str, cwd: str) -> Task:
    tid = int(path.rsplit(".", 1)[1])
    task = Task(tid)
    with open(path, errors="replace") as f:
        for line in f:
            call, cwd = parse_line(line, cwd)
            if call is None:
                continue
            if call.name in TASKS:
                if call.ok:
                    task.events.append(("clone", call.ret, "CLONE_THREAD" in call.args))
                continue
            if call.name == "execve" and call.ret == 0 and call.paths:
                task.events.append(("exec", call.paths[0]))
            task.events.append(call)
    return task


def trace(cmd, env=None, cwd=None, workdir=None, timeout=600, check=True,
          calls: str = TRACE) -> dict:
    """Run cmd under strace; returns {tid: Task} and the command's result as
    key None.  Trace files go to a temporary directory in workdir (removed)."""
    if not shutil.which("strace"):
        raise RuntimeError("strace is not installed (apt install strace)")
    d = tempfile.mkdtemp(prefix="filecalls-", dir=workdir)
    try:
        prefix = os.path.join(d, "t")
        r = subprocess.run(["strace", "-ff", "-qq", "-y", "-e", f"trace={calls}",
                            "-o", prefix] + list(cmd), env=env, cwd=cwd, timeout=timeout,
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cmd} failed under strace ({r.returncode}): {r.stderr[-2000:]}")
        start = os.path.realpath(cwd or os.getcwd())
        tasks = {}
        for name in os.listdir(d):
            t = parse_file(os.path.join(d, name), start)
            tasks[t.tid] = t
        tasks[None] = r
        return tasks
    finally:
        shutil.rmtree(d, ignore_errors=True)


def by_program(tasks: dict) -> dict:
    """{(tid, program): [Call]}: each task's calls under the program it runs.
    A successful execve starts a new program (the execve itself counts for
    it: that is the loader finding it); threads and forked children without
    exec belong to the program that created them."""
    tasks = {k: v for k, v in tasks.items() if k is not None}
    children = {ev[1] for t in tasks.values() for ev in t.events
                if isinstance(ev, tuple) and ev[0] == "clone"}
    out: dict = {}
    todo = [(tid, (tid, "?")) for tid in sorted(tasks) if tid not in children]
    seen = set()
    while todo:
        tid, owner = todo.pop()
        if tid in seen or tid not in tasks:
            continue
        seen.add(tid)
        pending_exec = None
        for ev in tasks[tid].events:
            if isinstance(ev, tuple):
                if ev[0] == "clone":
                    todo.append((ev[1], owner))
                else:
                    pending_exec = ev[1]
                continue
            if pending_exec and ev.name == "execve":
                owner = (tid, pending_exec)
                pending_exec = None
            out.setdefault(owner, []).append(ev)
    return out


def under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


def mpi_dirs(calls_by_owner: dict) -> list[str]:
    """Directories from which a libmpi* (MPICH, Open MPI) was opened."""
    out = set()
    for calls in calls_by_owner.values():
        for c in calls:
            if c.ok and c.name in ("open", "openat") and c.paths and \
                    re.match(r"lib(mpi|mpich|open-pal|pmpi)\w*\.so", os.path.basename(c.paths[0])):
                out.add(os.path.dirname(c.paths[0]))
    return sorted(out)


def default_places(calls_by_owner: dict, roots=(), extra=()) -> list[tuple[str, str]]:
    """(label, directory) in order of precedence: extra, the roots, the MPI
    library's directory (where a libmpi* was opened)."""
    places = list(extra) + [r if isinstance(r, tuple) else (r, r) for r in roots]
    return places + [("MPI library", d) for d in mpi_dirs(calls_by_owner)]


LOADER = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")
OS = ("/etc/", "/proc/", "/sys/", "/dev/", "/run/", "/tmp/", "/usr/", "/var/", "/bin/", "/sbin/")


def place_of(path: str, places, cwd: str, home: str) -> str:
    for label, d in places:
        if under(path, d):
            return label
    for label, d in places:  # a parent of a place (realpath() on the way to it)
        if path != "/" and under(d, path):
            return label
    if path.startswith("/etc/ld.so") or path.startswith(LOADER):
        return "loader + system libs"
    if cwd and under(path, cwd):
        return "cwd"
    if home and under(path, home):
        return "home"
    if path.startswith(OS) or path in ("/", "/etc", "/proc", "/sys", "/dev", "/tmp", "/usr"):
        return "os"
    return "other"


def count(calls, places, cwd=None, home=None) -> dict:
    """{place: number of calls} (a call naming two places counts in each;
    reads are not calls) plus 'calls' (all counted) and 'bytes:<place>'."""
    cwd = os.path.realpath(cwd or os.getcwd())
    home = os.path.realpath(home or os.path.expanduser("~"))
    out: dict = {"calls": 0}
    for c in calls:
        if not c.paths:
            continue
        if c.name in READS or c.name in MAPS:
            p = place_of(c.paths[0], places, cwd, home)
            out["bytes:" + p] = out.get("bytes:" + p, 0) + c.nbytes
            continue
        out["calls"] += 1
        for p in {place_of(x, places, cwd, home) for x in c.paths}:
            out[p] = out.get(p, 0) + 1
    return out


def count_roots(tasks: dict, roots) -> tuple[int, int, int]:
    """(calls naming a path under any root, tasks making them, bytes read
    from files under the roots), summed over the whole job."""
    calls = nbytes = 0
    pids = set()
    for tid, t in tasks.items():
        if tid is None:
            continue
        for ev in t.events:
            if isinstance(ev, tuple) or not any(under(p, r) for p in ev.paths for r in roots):
                continue
            pids.add(tid)
            if ev.name in READS or ev.name in MAPS:
                nbytes += ev.nbytes
            else:
                calls += 1
    return calls, len(pids), nbytes


def writes_under(tasks: dict, root: str) -> list[str]:
    """Every call that may change something under root, as 'tid: call(args)'."""
    out = []
    for tid, t in tasks.items():
        if tid is None:
            continue
        for ev in t.events:
            if not isinstance(ev, tuple) and ev.modifies() and \
                    any(under(p, root) for p in ev.paths):
                out.append(f"{tid}: {ev.name}({ev.args[:200]}) = {ev.ret}")
    return out


COLUMNS = ["loader + system libs", "MPI library", "cwd", "home", "os", "other"]


def table(counts: dict, roots, places) -> str:
    labels = [lab for lab, _ in places if lab not in roots] + COLUMNS
    labels = list(dict.fromkeys(labels))
    head = ["process", "calls"] + [f"under {r}" for r in roots] + labels
    rows = [head]
    for owner, c in counts.items():
        rows.append([owner, str(c["calls"])] + [str(c.get(r, 0)) for r in roots]
                    + [str(c.get(lab, 0)) for lab in labels])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="filecalls.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count", help="run CMD under strace and count its file calls")
    c.add_argument("--root", action="append", default=[], help="count calls under DIR")
    c.add_argument("--place", action="append", default=[], metavar="LABEL=DIR",
                   help="a further place to sort calls into (checked first)")
    c.add_argument("--per-job", action="store_true", help="print only the job's totals")
    c.add_argument("--list", metavar="PLACE", help="also print every call sorted into PLACE")
    c.add_argument("--total", action="store_true",
                   help="print only the number of calls under the roots per job (the "
                        "command's own output is dropped unless it fails)")
    c.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given (after --)")
    extra = []
    for p in a.place:
        label, sep, d = p.partition("=")
        if not sep or not d:
            ap.error(f"--place {p!r}: use LABEL=DIR")
        extra.append((label, os.path.realpath(d)))
    labels = list(dict.fromkeys(a.root))
    roots = [(r, os.path.abspath(r)) for r in labels] + [(r, os.path.realpath(r)) for r in labels]
    try:
        tasks = trace(cmd, check=False)
    except (RuntimeError, OSError) as e:
        print(f"filecalls.py: error: {e}", file=sys.stderr)
        return 1
    r = tasks[None]
    if r.returncode != 0 and not any(t.events for k, t in tasks.items() if k is not None):
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        print(f"filecalls.py: error: {why}", file=sys.stderr)
        return 1
    if a.total:
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
            print(f"filecalls.py: error: {cmd[0]} failed (exit status {r.returncode})",
                  file=sys.stderr)
            return r.returncode
        print(count_roots(tasks, [d for _, d in roots])[0])
        return 0
    sys.stderr.write(r.stderr)
    sys.stdout.write(r.stdout)
    owners = by_program(tasks)
    places = default_places(owners, roots, extra)
    counts = {f"{tid} {os.path.basename(prog)}": count(calls, places)
              for (tid, prog), calls in sorted(owners.items(), key=lambda kv: kv[0][0])}
    counts = {k: v for k, v in counts.items() if v["calls"]}
    if a.list:
        cwd, home = os.path.realpath(os.getcwd()), os.path.realpath(os.path.expanduser("~"))
        for (tid, prog), calls in sorted(owners.items(), key=lambda kv: kv[0][0]):
            for call in calls:
                if call.name in READS or call.name in MAPS:
                    continue
                if a.list in {place_of(x, places, cwd, home) for x in call.paths}:
                    print(f"{tid} {os.path.basename(prog)}: {call.name}({call.args[:160]}) "
                          f"= {call.ret}")
    under_roots = count_roots(tasks, [d for _, d in roots])
    if a.per_job:
        total: dict = {}
        for v in counts.values():
            for k, n in v.items():
                total[k] = total.get(k, 0) + n
        counts = {"job": total}
    print(table(counts, labels, places))
    if roots:
        print(f"calls under {' '.join(labels)}: {under_roots[0]} per job, by "
              f"{under_roots[1]} task(s); {under_roots[2]} bytes read")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
