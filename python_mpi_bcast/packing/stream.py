"""Stream, don't copy: write a package straight from the source files.

collect stages a skeleton of the tree (``collect.lazy_copies``: directories,
links and the few files we write ourselves on disk; every source file a
virtual entry in memory that names it, shown by collect's view functions);
slim and fix_symlinks work on that skeleton.
Then the package writer's threads read each file once from its source,
relocate it on the way (:class:`relocatable.Relocator`), byte-compile each
``.py`` through a compile server run by the packed interpreter (the code
``compileall`` makes, as unchecked-hash ``.pyc`` named after the file's path
in the tree; taken from the environment's own ``.pyc`` of the source when
the import system would use that one, which is much cheaper than
compiling; a thread per shard makes the shard's ``.pyc`` members ahead,
while the writer compresses the members before them), compress and write.

The members come in the order a copied tree gives (``archive.list_tree``,
with the ``__pycache__`` directories compileall would have made), so the
unpacked tree is the one the copying packer made (tests/packing/test_pack.py keeps
that equivalence).  Extra disk: none besides the package (archive.py
writes the shards straight into it); an ELF file whose RPATH changes is
patched by patchelf in a memory file (memfd, at most one library of up to
``BIG_FILE`` per thread; where memfd_create is missing, a scratch file in
the output directory); ``.py`` sources are read a second time (small, from
the page cache) when their ``.pyc`` is made.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import queue
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time

from . import collect, elf
from .relocatable import BIG_FILE, Relocator
from ..package.archive import SPLIT_FACTOR, _tarinfo, read_chunks, write_package
from ..package.format import Manifest
from ..package.reuse import Previous, Reuse, stat_identity
from ..support import leftovers
from ..support.errors import PmbError

_SERVER = r"""
import sys
# what start-up imported before any .pth file ran (here: before this script)
START = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
import _imp, importlib.util, marshal, os, resource, struct, types
from importlib._bootstrap_external import _code_to_hash_pyc
inp, out = sys.stdin.buffer, sys.stdout.buffer
MAGIC = importlib.util.MAGIC_NUMBER
LOADS = VM = 0
def send(b):
    out.write(struct.pack("<Q", len(b)) + b)
    out.flush()
def cached(pyc, src, mtime, size):
    # the environment's own .pyc of this source, if the import system would
    # use it (SourceLoader.get_code's checks): this interpreter's magic, and
    # the source's mtime and size, or its hash, in the header
    if len(pyc) < 16 or pyc[:4] != MAGIC:
        return None
    flags = int.from_bytes(pyc[4:8], "little")
    if flags & ~0b11:
        return None
    if flags & 0b1:
        if pyc[8:16] != importlib.util.source_hash(src):
            return None
    elif (int.from_bytes(pyc[8:12], "little") != mtime & 0xFFFFFFFF
          or int.from_bytes(pyc[12:16], "little") != size & 0xFFFFFFFF):
        return None
    # marshal trusts its input: a damaged .pyc can declare containers of
    # gigabytes (allocated before their items are read), so the address
    # space is capped while it loads (a MemoryError: compiled instead)
    global LOADS, VM
    if LOADS % 64 == 0:  # (this process's size, looked at now and then: it grows slowly)
        with open("/proc/self/statm") as f:
            VM = int(f.read().split()[0]) * resource.getpagesize()
    LOADS += 1
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = VM + (256 << 20) + 64 * len(pyc)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        code = marshal.loads(memoryview(pyc)[16:])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return code if isinstance(code, types.CodeType) else None
send("\n".join([sys.implementation.cache_tag] + [
    os.path.relpath(f, sys.prefix) for f in START
    if f and f.endswith(".py") and f.startswith(sys.prefix + "/")]).encode("utf-8", "surrogateescape"))
while True:
    hdr = inp.read(32)
    if len(hdr) < 32:
        break
    opt, nd, ns, nc, mtime, size = struct.unpack("<iIIIqQ", hdr)
    dfile = inp.read(nd).decode("utf-8", "surrogateescape")
    src = inp.read(ns)
    pyc = inp.read(nc)
    try:
        code = None
        if pyc:
            try:
                code = cached(pyc, src, mtime, size)
            except Exception:
                code = None
        if code is None:  # as py_compile does (SourceLoader.source_to_code)
            code = compile(src, dfile, "exec", dont_inherit=True, optimize=opt)
        else:  # as the import system does for a .pyc found in another place
            _imp._fix_co_filename(code, dfile)
        send(b"\0" + _code_to_hash_pyc(code, importlib.util.source_hash(src), False))
    except Exception as e:
        send(b"\1" + repr(e).encode("utf-8", "replace"))
"""


class _CompileServer:
    def __init__(self, python: str):
        self.python = python
        try:
            self.p = subprocess.Popen([python, "-I", "-c", _SERVER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise PmbError(f"byte-compiling with {python} failed: {e.strerror or e}") from None
        hello = self._recv().decode("utf-8", "surrogateescape").split("\n")
        self.tag, self.start = hello[0], [p for p in hello[1:] if p]

    def _recv(self) -> bytes:
        n = self.p.stdout.read(8)
        if len(n) != 8:
            raise PmbError(f"byte-compiling with {self.python} failed (the compiler ended)")
        (size,) = struct.unpack("<Q", n)
        data = self.p.stdout.read(size)
        if len(data) != size:
            raise PmbError(f"byte-compiling with {self.python} failed (the compiler ended)")
        return data

    def compile(self, dfile: str, source: bytes, optimize: int, cached: bytes = b"",
                mtime: int = 0, size: int = 0) -> bytes | None:
        """The unchecked-hash ``.pyc`` of ``source`` named ``dfile``: from
        ``cached`` (the environment's own ``.pyc`` of it, written when the
        source had ``mtime`` and ``size``) when the import system would use
        that one, else compiled; None if the source does not compile."""
        d = dfile.encode("utf-8", "surrogateescape")
        try:
            self.p.stdin.write(struct.pack("<iIIIqQ", optimize, len(d), len(source), len(cached),
                                           mtime, size) + d + source + cached)
            self.p.stdin.flush()
            r = self._recv()
        except (OSError, PmbError):
            raise PmbError(f"byte-compiling {dfile} with {self.python} failed (the compiler "
                           f"ended)") from None
        return r[1:] if r[:1] == b"\0" else None

    def close(self) -> None:
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()


class Writer:
    """One package written from a staged skeleton."""

    def __init__(self, st: collect.Staged, compiler: str | None, relocate: bool,
                 scratch: str):
        self.st = st
        self.root = st.root
        self.rl = Relocator(st) if relocate else None
        self.compiler = compiler
        self.scratch = scratch
        self.idle: queue.Queue = queue.Queue()
        self.servers: list[_CompileServer] = []
        self.virtual: dict[str, tuple[str, int]] = {}  # pyc rel -> (py rel, optimization)
        self.by_shard: dict[int, tuple[list, list, list]] = {}
        umask = os.umask(0)
        os.umask(umask)
        self.umask = umask
        self.now = int(time.time())
        self.tag, self.early = "", set()
        self._settings = None
        self.ahead: dict[int, _Ahead] = {}  # shard -> its byte code being made ahead
        self.ahead_threads: list[threading.Thread] = []
        self.stopping = False
        if compiler:
            srv = self._server()
            self.tag = srv.tag
            self.early = set(srv.start)
            self.idle.put(srv)

    # -- compile servers ---------------------------------------------------
    def _server(self) -> _CompileServer:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            srv = _CompileServer(self.compiler)
            self.servers.append(srv)
            return srv

    def _compile(self, dfile: str, source: bytes, optimize: int, cached: bytes = b"",
                 mtime: int = 0, size: int = 0, crashed: list | None = None) -> bytes | None:
        """A server's answer; one that ends while loading the environment's
        .pyc (marshal crashes on some damaged ones) is replaced, the source
        compiled by the new one, and ``crashed`` told."""
        srv = self._server()
        try:
            return srv.compile(dfile, source, optimize, cached, mtime, size)
        except PmbError:
            if not cached:
                raise
            srv.close()
            self.servers.remove(srv)
            srv = _CompileServer(self.compiler)
            self.servers.append(srv)
            if crashed is not None:
                crashed.append(dfile)
            return srv.compile(dfile, source, optimize)
        finally:
            self.idle.put(srv)

    def close(self) -> None:
        self.stopping = True  # (threads making byte code ahead stop at their next file)
        for t in self.ahead_threads:
            t.join()
        for srv in self.servers:
            srv.close()

    # -- byte code made ahead ------------------------------------------------
    def begin_shard(self, shard: int, entries) -> None:
        """A shard's writer starts: its .pyc members are made by a thread of
        their own (through a compile server of their own), in order, while
        the writer reads and compresses the members before each; the writer
        takes each when it gets there (:meth:`_pyc`)."""
        rels = [rel for rel, _, _ in entries if rel in self.virtual]
        if len(rels) < 2 or self.stopping:
            return
        ahead = self.ahead[shard] = _Ahead(rels)
        t = threading.Thread(target=self._make_ahead, args=(ahead,), daemon=True,
                             name=f"pmb-pyc-{shard}")
        self.ahead_threads.append(t)
        t.start()

    def _make_ahead(self, ahead: "_Ahead") -> None:
        for rel in ahead.rels:
            if self.stopping:
                break
            try:
                ahead.put(rel, self._make_pyc(rel), None)
            except BaseException as e:  # (raised where the writer takes it)
                ahead.put(rel, None, e)
        ahead.finish()

    # -- the members, in a copied tree's order -------------------------------
    def entries(self) -> list:
        out: list = []
        hook = collect.STAGED_HOOK + ".py"
        self._visit("", out, hook)
        return out

    def _visit(self, rel_dir: str, out: list, hook: str) -> None:
        full_dir = os.path.join(self.root, rel_dir) if rel_dir else self.root
        if rel_dir:
            ti, size = _tarinfo(self.root, rel_dir)
            out.append((rel_dir, ti, size))
        files, dirs = list(collect.virtual_names(full_dir)), []
        with os.scandir(full_dir) as it:  # the real entries: their type without a stat
            for e in it:
                (dirs if e.is_dir(follow_symlinks=False) else files).append(e.name)
        for n in sorted(files):
            rel = os.path.normpath(os.path.join(rel_dir, n))
            ti, size = _tarinfo(self.root, rel, collect.lstat)
            out.append((rel, ti, size))
        pys = [n for n in files if n.endswith(".py") and self.compiler
               and collect.isfile(os.path.join(full_dir, n))]
        for d in sorted(dirs + (["__pycache__"] if pys and "__pycache__" not in dirs else [])):
            if d == "__pycache__" and pys and d not in dirs:
                self._pycache(rel_dir, pys, out, hook)
            else:
                self._visit(os.path.join(rel_dir, d) if rel_dir else d, out, hook)

    def _pycache(self, rel_dir: str, pys: list[str], out: list, hook: str) -> None:
        """The __pycache__ compileall makes: a .pyc per module (not for those
        the unpacker patches: decided when written), and -O/-OO ones for
        what start-up imports before the staged hook can act, and the hook."""
        cache = os.path.join(rel_dir, "__pycache__") if rel_dir else "__pycache__"
        ti = tarfile.TarInfo(cache)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o777 & ~self.umask, self.now
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        out.append((cache, ti, 0))
        pycs = []
        for n in pys:
            py_rel = os.path.join(rel_dir, n) if rel_dir else n
            opts = [0] + ([1, 2] if (py_rel in self.early or n == hook) else [])
            for opt in opts:
                name = _pyc_name(n, self.tag, opt)
                pycs.append((name, py_rel, opt))
        for name, py_rel, opt in sorted(pycs):
            rel = os.path.join(cache, name)
            src = collect.stat(os.path.join(self.root, py_rel))
            src_mode = src.st_mode
            ti = tarfile.TarInfo(rel)
            ti.type = tarfile.REGTYPE
            ti.mode = (src_mode | 0o200) & 0o666 & ~self.umask
            ti.mtime = self.now
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            self.virtual[rel] = (py_rel, opt)
            out.append((rel, ti, src.st_size))

    # -- one entry's members ---------------------------------------------------
    def members(self, shard: int, rel: str, ti: tarfile.TarInfo, size: int):
        pf, kept, warn = self.by_shard.setdefault(shard, ([], [], []))
        if rel in self.virtual:
            yield from self._pyc(shard, rel, ti, warn)
            return
        if ti.type != tarfile.REGTYPE:
            yield ti, ()
            return
        path = self._source(rel)
        if size > BIG_FILE or self.rl is None:
            yield ti, self._chunks(path, rel, size, kept)
            return
        data = self._read(path, rel)
        if self.rl is not None:
            data, p, k, w = self.rl.file(rel, data, self._set_rpath)
            pf += p
            kept += k
            warn += w
        ti = _with_size(ti, len(data))
        yield ti, (data,)

    # -- files split across shards (archive.partition) -------------------------
    def splittable(self, entry) -> bool:
        """A file packed as it is (never relocated, so never a prefix file):
        one over BIG_FILE, any without relocation, or one relocation leaves
        alone (read here once more, from the page cache later)."""
        rel, ti, size = entry
        if rel in self.virtual or ti.type != tarfile.REGTYPE:
            return False
        if self.rl is None or size > BIG_FILE:
            return True
        try:
            data = self._read(self._source(rel), rel)
        except (OSError, PmbError):
            return False  # packed whole, where the error is reported
        return len(data) == size and self.rl.untouched(rel, data)

    def piece(self, shard: int, rel: str, ti: tarfile.TarInfo, size: int, start: int,
              end: int):
        """The bytes [start, end) of a split file, scanned for the old
        prefixes as :meth:`_chunks` scans a whole one."""
        _, kept, _ = self.by_shard.setdefault(shard, ([], [], []))
        yield from self._chunks(self._source(rel), rel, end - start, kept, start, size)

    def _source(self, rel: str) -> str:
        return collect.content_path(os.path.join(self.root, rel))

    def _read(self, path: str, rel: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except PermissionError:
            raise PmbError(f"{path}: permission denied while reading; packing needs read "
                           f"access to every file") from None

    def _chunks(self, path: str, rel: str, size: int, kept: list, start: int = 0,
                whole: int | None = None):
        """A large file as it is (``size`` bytes from ``start``; the file has
        ``whole``), scanned on the way for the old prefixes (one that holds
        one is listed as keeping it, as relocate_files does)."""
        whole = size if whole is None else whole
        olds = self.rl.scrub_b if self.rl is not None and whole > BIG_FILE else []
        keep = max((len(o) for o in olds), default=1) - 1
        tail = b""
        found = False
        try:
            if olds and keep and start:  # a piece: an old prefix may begin in the one before
                with open(path, "rb") as f:
                    tail = os.pread(f.fileno(), min(keep, start), start - min(keep, start))
            for buf in read_chunks(path, rel, size, start):
                if olds and not found:
                    window = tail + buf
                    found = any(o in window for o in olds)
                    tail = window[-keep:] if keep else b""
                yield buf
        except PermissionError:
            raise PmbError(f"{path}: permission denied while reading; packing needs read "
                           f"access to every file") from None
        if found and rel not in kept:
            kept.append(rel)

    def _set_rpath(self, rel: str) -> bytes | None:
        path = self._source(rel)
        try:
            new = elf.rpath_change(path, rel, self.st.moves)
        except PmbError:
            return None  # not a dynamic object (static, or odd ELF)
        if new is None:
            return None
        try:  # patched in memory: no copy of the library on disk
            fd = os.memfd_create("pmb-elf", os.MFD_CLOEXEC)
        except (AttributeError, OSError):  # (no memfd: a scratch file)
            fd, tmp = tempfile.mkstemp(prefix="elf-", dir=self.scratch)
        else:
            tmp = None
        try:
            with os.fdopen(fd, "w+b") as f, open(path, "rb") as src:
                while True:
                    buf = src.read(1 << 20)
                    if not buf:
                        break
                    f.write(buf)
                f.flush()
                if tmp is None:  # patchelf opens the memfd as its own descriptor
                    elf.set_rpath(f"/proc/self/fd/{fd}", new, pass_fds=(fd,), name=rel)
                else:
                    elf.set_rpath(tmp, new, name=rel)
                f.seek(0)
                return f.read()
        except OSError as e:  # not the package's disk: the copy being patched
            if e.filename == path:  # the source itself: as any other read
                raise
            where = "in memory" if tmp is None else f"in {self.scratch}"
            raise PmbError(f"{rel}: cannot copy it {where} to set its RPATH "
                           f"({e.strerror or e}); "
                           + ("free memory or pack on a machine with more"
                              if tmp is None else "free space there")) from None
        finally:
            if tmp is not None:
                os.unlink(tmp)

    def _pyc(self, shard: int, rel: str, ti: tarfile.TarInfo, warn: list):
        ahead = self.ahead.get(shard)
        got = ahead.take(rel) if ahead is not None else None
        if ahead is not None and ahead.empty():
            self.ahead.pop(shard, None)
        if got is None:
            pyc, warns = self._make_pyc(rel)
        else:
            made, err = got
            if err is not None:
                raise err
            pyc, warns = made
        warn += warns
        if pyc is not None:
            yield _with_size(ti, len(pyc)), (pyc,)

    def _make_pyc(self, rel: str) -> tuple[bytes | None, list[str]]:
        """The bytes of the .pyc member ``rel`` (None: no such member) and
        the warnings making it gave."""
        py_rel, opt = self.virtual[rel]
        full = os.path.join(self.root, py_rel)
        src_rel = py_rel
        if not collect.is_virtual(full) and os.path.islink(full):  # compiled through the
            # link, as compileall does
            src_rel = os.path.relpath(os.path.realpath(full), os.path.realpath(self.root))
            full = os.path.join(self.root, src_rel)
        path = collect.content_path(full)
        source = original = self._read(path, py_rel)
        if self.rl is not None and collect.stat(full).st_size <= BIG_FILE:
            source, pf, _, _ = self.rl.file(src_rel, source)
            if opt == 0 and pf:
                return None, []  # the unpacker rewrites the source: a .pyc made now
                # would be stale
        cached, mtime, size = b"", 0, 0
        if path != full and source == original:  # a source file of the environment: the
            # .pyc pip, conda or the distribution wrote beside it, if the server finds it
            # still matches (its code, named after the file's path in the tree, is what
            # compiling gives, without the cost)
            cached, mtime, size = self._cached_pyc(path, opt, len(original))
        crashed: list = []
        pyc = self._compile(py_rel, source, opt, cached, mtime, size, crashed)
        warns = []
        if crashed:
            warns.append(f"{_pyc_path(path, self.tag, opt)}: this byte code crashes "
                         f"{self.compiler} when loaded (a damaged file); packed {py_rel} "
                         f"compiled from its source instead (remove that file: importing "
                         f"{os.path.basename(py_rel)[:-3]} from the environment crashes too)")
        if pyc is None and opt:
            raise PmbError(f"byte-compiling {py_rel} with {self.compiler} failed")
        return pyc, warns  # (None: as compileall, a module that does not compile gets
        # no .pyc)

    def _cached_pyc(self, path: str, opt: int, length: int) -> tuple[bytes, int, int]:
        """The environment's own ``.pyc`` of the source file ``path`` (``length``
        bytes read) and the source's mtime and size, or (b"", 0, 0).  Only a
        regular file is read (a FIFO or device there is passed over)."""
        pyc = _pyc_path(path, self.tag, opt)
        if pyc is None:
            return b"", 0, 0
        try:
            fd = os.open(pyc, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                fs = os.fstat(f.fileno())
                if not stat.S_ISREG(fs.st_mode) or fs.st_size > BIG_FILE:
                    return b"", 0, 0
                data = f.read(fs.st_size)
            s = os.stat(path)
        except (OSError, ValueError):
            return b"", 0, 0
        if s.st_size != length:  # changed while being read: compile what was read
            return b"", 0, 0
        return data, int(s.st_mtime), s.st_size

    # -- re-pack only what changed (package/reuse.py) ----------------------
    def settings(self) -> str:
        """Everything besides the members themselves that decides their
        bytes: relocation (prefixes, moves, maps, site directory), the
        compiler and its cache tag, the umask (the .pyc modes), patchelf."""
        st = self.st
        try:
            patchelf = _identity(os.path.realpath(elf.patchelf_path()))
        except PmbError:
            patchelf = "-"
        comp = _identity(os.path.realpath(self.compiler)) if self.compiler else "-"
        return json.dumps({
            "kind": st.kind, "scrub": st.scrub, "moves": st.moves, "maps": st.maps,
            "site_abs_old": st.site_abs_old, "site_dir": st.site_dir, "info": st.info,
            "relocate": self.rl is not None, "compiler": self.compiler, "compiler_id": comp,
            "tag": self.tag, "umask": self.umask, "patchelf": patchelf, "big": BIG_FILE,
        }, sort_keys=True, default=str)

    def inputs(self, entries) -> str | None:
        """A digest of what decides the members of ``entries``: per entry its
        path, tar header fields (no times: a directory's or our own file's
        is the staging's; a source file's is in its identity), conda's record
        of it, and the identity of the file its bytes come from (a source
        file: device, inode, size, mtime, ctime, so an edit in place that
        keeps the mtime still counts; a file of our own: its SHA-256).  None
        when a file cannot be looked at."""
        if self._settings is None:
            self._settings = self.settings()
        h = hashlib.sha256(self._settings.encode())
        try:
            for rel, ti, size in entries:
                h.update(json.dumps([rel, ti.type.decode("latin-1"), ti.mode, ti.linkname,
                                     ti.size, self.st.recorded.get(rel)]).encode())
                if rel in self.virtual:
                    py_rel, opt = self.virtual[rel]
                    full = os.path.join(self.root, py_rel)
                    src_rel = py_rel
                    if not collect.is_virtual(full) and os.path.islink(full):
                        src_rel = os.path.relpath(os.path.realpath(full),
                                                  os.path.realpath(self.root))
                        full = os.path.join(self.root, src_rel)
                    h.update(json.dumps(["pyc", py_rel, opt, src_rel,
                                         self.st.recorded.get(src_rel)]).encode())
                    h.update(self._content_identity(full).encode())
                    h.update(self._cached_identity(full, opt).encode())
                elif ti.type == tarfile.REGTYPE:
                    h.update(self._content_identity(os.path.join(self.root, rel)).encode())
                h.update(b"\n")
        except (OSError, ValueError):
            return None
        return h.hexdigest()

    def _cached_identity(self, staged: str, opt: int) -> str:
        """The identity of the environment's own .pyc a member's code may be
        taken from (_cached_pyc): whether and which one decides its bytes."""
        src = collect.content_path(staged)
        pyc = _pyc_path(src, self.tag, opt) if src != staged else None
        if pyc is None:
            return "pyc -"
        try:
            return "pyc " + _identity(pyc)
        except OSError:
            return "pyc none"

    def _content_identity(self, staged: str) -> str:
        src = collect.content_path(staged)
        if src != staged:  # as staged: the stat its tar header was made from
            s = collect.stat(staged)
            return f"source {json.dumps(src)} " + " ".join(map(str, stat_identity(s)))
        with open(staged, "rb") as f:  # a file of our own (small: written by a step)
            return "own " + hashlib.sha256(f.read()).hexdigest()

    def shard_info(self, i: int) -> tuple[list, dict]:
        pf, kept, warn = self.by_shard.get(i, ([], [], []))
        return pf, {"kept": kept, "warnings": warn}

    def restore(self, i: int, prefix_files: list, notes: dict) -> None:
        self.by_shard[i] = (list(prefix_files), list(notes.get("kept", [])),
                            list(notes.get("warnings", [])))

    def results(self) -> tuple[list, list, list]:
        pf, kept, warn = [], [], []
        for i in sorted(self.by_shard):
            p, k, w = self.by_shard[i]
            pf += p
            kept += [r for r in k if r not in kept]  # a split file: in each shard of it
            warn += w
        return pf, kept, warn


class _Ahead:
    """The .pyc members of one shard, made in order by one thread and taken
    by the shard's writer."""

    def __init__(self, rels: list[str]):
        self.rels = rels
        self.left = set(rels)
        self.results: dict[str, tuple] = {}
        self.over = False
        self.cv = threading.Condition()

    def put(self, rel: str, made, err) -> None:
        with self.cv:
            self.results[rel] = (made, err)
            self.cv.notify_all()

    def finish(self) -> None:
        with self.cv:
            self.over = True
            self.cv.notify_all()

    def take(self, rel: str):
        """(made, exception) of ``rel``, once made; None if it will not be
        (not one of these, or the thread stopped first: the caller makes it)."""
        with self.cv:
            if rel not in self.left:
                return None
            self.left.discard(rel)
            while rel not in self.results and not self.over:
                self.cv.wait()
            return self.results.pop(rel, None)

    def empty(self) -> bool:
        with self.cv:
            return not self.left


def _pyc_name(py: str, tag: str, opt: int) -> str:
    """The name the import system gives the byte code of the module file
    ``py`` in its ``__pycache__``."""
    return f"{py[:-3]}.{tag}" + (f".opt-{opt}" if opt else "") + ".pyc"


def _pyc_path(source: str, tag: str, opt: int) -> str | None:
    """Where the import system caches the byte code of ``source``."""
    d, n = os.path.split(source)
    if not n.endswith(".py") or not tag:
        return None
    return os.path.join(d, "__pycache__", _pyc_name(n, tag, opt))


def _identity(path: str) -> str:
    s = os.stat(path)
    return json.dumps([path] + stat_identity(s))


def _with_size(ti: tarfile.TarInfo, size: int) -> tarfile.TarInfo:
    if ti.size == size:
        return ti
    new = copy.copy(ti)
    new.size = size
    return new


def write(st: collect.Staged, compiler: str | None, out: str, level: int, threads: int,
          shard_size: int, progress=None, replace: bool = True, before_rename=None,
          relocate: bool = True, reuse_from: str | None = None, split: bool = True) -> Manifest:
    """Write the package of the staged skeleton ``st`` to ``out``: relocated
    (unless ``relocate`` is False), byte-compiled with ``compiler`` (if
    given), compressed; ``st.compiled_in`` and ``st.warnings`` get what
    relocation found.  The package gets a shard index beside it
    (package/reuse.py); ``reuse_from``: a previous package whose shards
    are copied where their inputs are unchanged (``st.reused`` says how
    many).  ``split=False``: every file whole (archive.partition)."""
    scratch = leftovers.mkdtemp(prefix=".pmb-scratch-", dir=os.path.dirname(out))
    w = reuse = None
    try:
        w = Writer(st, compiler, relocate, scratch)
        entries = w.entries()
        previous = Previous.open(reuse_from) if reuse_from else None
        reuse = Reuse(previous, w.inputs, w.shard_info, w.restore)

        def prefix_files():
            pf, kept, warn = w.results()
            st.compiled_in = kept
            st.warnings += warn
            return pf

        return write_package(st, prefix_files, out, level=level, threads=threads,
                             shard_size=shard_size, progress=progress, replace=replace,
                             before_rename=before_rename, entries=entries, members=w.members,
                             begin_shard=w.begin_shard,
                             reuse=reuse, split=SPLIT_FACTOR if split else 0,
                             splittable=w.splittable, pieces=w.piece)
    finally:
        if reuse is not None:
            if reuse_from and reuse.shards:
                st.reused = f"{reuse.summary()} of {reuse_from}"
            reuse.close()
        if w is not None:
            w.close()
        leftovers.remove(scratch)
