"""The package file format, ``NAME.tar.zst`` (format version 3; version 2
is the same without part lines, and a package that splits no file is
written as version 2).

Layout::

    +-----------------------------------------------------------+
    | zstd skippable frame: magic 0x184D2A5B, u32le length,     |
    |   one zstd frame (with content checksum) holding the      |
    |   manifest text (UTF-8, see below), then padding: zero    |
    |   or more 0x00 bytes up to the length                     |
    +-----------------------------------------------------------+
    | shard 0: one zstd frame with content checksum = POSIX tar |  payload
    |   members (whole, but a split file's, see below)          |
    | shard 1 ...                                               |
    | tail: one zstd frame = the 1024 zero bytes that end a tar |
    +-----------------------------------------------------------+

The padding is room the packer reserved before it knew the manifest: it
writes the shards straight into the file after the room and the manifest
into it last (package/archive.py).  The rule, in both readers: the
skippable frame's body is exactly one zstd frame followed by nothing but
0x00 bytes (any number, none included; the frame's length covers them); a
non-zero byte after the frame is refused ("not exactly one zstd frame").
The payload starts right after the skippable frame (8 + its length).

Decoders skip skippable frames and concatenate the others, so
``zstd -dc NAME.tar.zst | tar -x`` and ``tar --zstd -xf NAME.tar.zst`` give
the tree.  Shards unpack independently: each holds whole members, except
that a large regular file may be *split* (archive.partition): its header
and first bytes end one shard, its data runs on across frame boundaries,
its last bytes and padding start a later shard, and the manifest's part
lines say where each shard that begins inside it begins, so whoever
unpacks that shard writes its piece at that offset (launcher/unpack.c).

The manifest is line oriented (the C launcher parses it without a JSON
library), one ``key value`` per line in this order: the header
``python-mpi-bcast-package 2``; the keys (``name``, ``kind``,
``unpacked_size``, ``files``, ``payload_size`` and ``content_hash``
required, the others optional, each at most once); ``shards N``; N ``shard
OFFSET CSIZE USIZE FILES SHA256`` lines (the tail is the last); version 3:
``part SHARD OFFSET SIZE MODE MTIME PATH`` lines in shard order (shard
SHARD begins OFFSET bytes into the data of the split file PATH of SIZE
bytes, mode MODE as 4 octal digits, mtime MTIME, which the shard before it
left open; OFFSET on a 512-byte block; a shard whose piece fills it is
followed by a line for the next shard at OFFSET + its unpacked size; the
first piece and the header fit the shard before; the last piece ends in
its shard; a file is split once; a split file is counted in its header's
shard; never a prefix file); ``prefix MODE PATH PLACEHOLDER`` lines; ``end``.  Values are percent-encoded
(``%XX``, upper-case hex, for ``%``, space and control bytes; never
``%00``); numbers are canonical decimals below 2**63; paths are relative
with no empty, ``.`` or ``..`` component.  Offsets count from the first
byte after the skippable frame (its padding included); shards are
contiguous and cover the payload exactly; their file counts add up to
``files``.  Anything else is refused:
:func:`parse_manifest_text` here and ``launcher/manifest.c`` apply the same
rules and are tested against one corpus.

Integrity: libzstd verifies each frame's XXH64 content checksum (manifest
and shards) while decoding; the readers also check every size and count.
Each shard line's SHA-256 is that of the shard's compressed frame: the
launcher's unpacker (``--pmb-unpack`` too, so ``unpack``, ``load`` and
``verify``) hashes every frame as it decodes it and refuses the package
("shard N does not match its SHA-256"; ``verify``: "shard N fails its SHA-256
check", before anything else found inside that shard) when they differ.  ``content_hash`` is
the SHA-256 of the concatenated binary SHA-256 digests of all payload frames
in order, and both parsers refuse a manifest whose ``content_hash`` is not
that of its shard lines.  The package's identity on nodes, its staged tree's
name ``env-<id>``, is the first 128 bits of a SHA-256 over each layer's
content hash, kind and prefix lines (``launcher/manifest.c`` ``tree_key``):
a tree only ever holds bytes whose digests its manifests list, and identical
packages made apart (under another name, at another time) share a tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import zstandard

from ..support.errors import PmbError

FORMAT_VERSION = 3  # the newest this reads (version 2: the same without part lines)
SKIPPABLE_MAGIC = 0x184D2A5B
ZSTD_MAGIC = 0xFD2FB528
MAX_MANIFEST = 64 << 20
MAX_SHARDS = 1 << 20
MAX_U63 = (1 << 63) - 1
PATH_MAX = 4096
SUFFIX = ".tar.zst"

# The zstd level of pack, save and run when none is given: the level of
# least cost by the rule of benchmark section 12 (pack CPU / cores + 100
# jobs reading the package at 1 GB/s; unpack time does not depend on the
# level beyond noise).  On the numpy+scipy venv levels 3 to 7 cost about
# the same (level 5 least, over two runs), level 10 and above clearly more:
# level 5 packs with 37 % less CPU than level 10 into a package 8 % larger;
# where compression dominates (large binaries) lower levels gain more
# (README, "--level").
DEFAULT_LEVEL = 5
KINDS = ("interpreter", "environment", "directory")


@dataclasses.dataclass
class Shard:
    offset: int
    csize: int
    usize: int
    nfiles: int
    sha256: str


@dataclasses.dataclass
class Part:
    """Shard ``shard`` begins ``offset`` bytes into the data of the split
    file ``path`` (``size`` bytes, mode, mtime as its tar header has them),
    which the shard before it left open."""
    shard: int
    offset: int
    size: int
    mode: int
    mtime: int
    path: str


@dataclasses.dataclass
class PrefixFile:
    mode: str        # "text" or "binary"
    path: str        # relative to the tree root
    placeholder: str  # the string the unpacker replaces by the tree directory (escaped
    #                   for a Python string literal in a text file ending in ".py")


@dataclasses.dataclass
class Manifest:
    name: str
    kind: str
    python: str = ""          # "3.11"
    abi: str = ""             # "cpython-311-x86_64-linux-gnu"
    platform: str = ""        # "linux-x86_64"
    libpython: str = ""       # interpreter: relative path of the shared libpython
    executable: str = ""      # interpreter: relative path of the interpreter
    site_dir: str = ""        # where environments put their packages
    unpacked_size: int = 0
    files: int = 0
    payload_size: int = 0
    content_hash: str = ""
    created_by: str = ""
    sources: str = ""         # ":"-joined absolute paths the content came from
    shards: list[Shard] = dataclasses.field(default_factory=list)
    prefix_files: list[PrefixFile] = dataclasses.field(default_factory=list)
    parts: list[Part] = dataclasses.field(default_factory=list)

    # -- encoding -------------------------------------------------------
    def format_version(self) -> int:
        """2 unless a file is split (part lines): readers of version 2 read it."""
        return 3 if self.parts else 2

    def to_text(self) -> str:
        lines = [f"python-mpi-bcast-package {self.format_version()}"]
        for key in ("name", "kind", "python", "abi", "platform", "libpython",
                    "executable", "site_dir", "unpacked_size", "files",
                    "payload_size", "content_hash", "created_by", "sources"):
            value = getattr(self, key)
            if value == "":
                continue
            lines.append(f"{key} {quote(str(value))}")
        lines.append(f"shards {len(self.shards)}")
        for s in self.shards:
            lines.append(f"shard {s.offset} {s.csize} {s.usize} {s.nfiles} {s.sha256}")
        for p in self.parts:
            lines.append(f"part {p.shard} {p.offset} {p.size} {p.mode:04o} {p.mtime} "
                         f"{quote(p.path)}")
        for p in self.prefix_files:
            lines.append(f"prefix {p.mode} {quote(p.path)} {quote(p.placeholder)}")
        lines.append("end")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["format_version"] = self.format_version()
        return d

    @classmethod
    def from_text(cls, text: str, where: str = "package") -> "Manifest":
        """Parse manifest text by exactly the rules of launcher/manifest.c."""
        try:
            return parse_manifest_text(text.encode("utf-8", "surrogateescape"))
        except ManifestError as e:
            raise PmbError(f"{where}: {e}") from None


def quote(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "%" or ch == " " or o < 0x21 or o == 0x7F:
            out.append("%%%02X" % o)
        else:
            out.append(ch)
    return "".join(out)


def content_hash(shard_digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in shard_digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def encode_manifest_frame(m: Manifest, room: int = 0) -> bytes:
    """The manifest's skippable frame, padded with zeros to ``room`` bytes
    in all when the frame is smaller (never cut: it may be larger)."""
    body = m.to_text().encode("utf-8", "surrogateescape")
    frame = zstandard.ZstdCompressor(level=19, write_checksum=True,
                                     write_content_size=True).compress(body)
    pad = max(0, room - 8 - len(frame))
    return struct.pack("<II", SKIPPABLE_MAGIC, len(frame) + pad) + frame + bytes(pad)


def frame_size(b: bytes) -> int | None:
    """The length of the zstd frame at the start of ``b`` from its header
    and block headers (what libzstd's ZSTD_findFrameCompressedSize says);
    None when ``b`` does not hold a whole one."""
    if len(b) < 6 or b[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = b[4]
    if fhd & 0x08:  # reserved bit
        return None
    single = fhd >> 5 & 1
    if not single and (b[5] >> 3) + 10 > 31:  # a window libzstd refuses (over 2 GiB)
        return None
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
    while True:
        if pos + 3 > len(b):
            return None
        h = b[pos] | b[pos + 1] << 8 | b[pos + 2] << 16
        kind, size = h >> 1 & 3, h >> 3
        if kind == 3:
            return None
        pos += 3 + (1 if kind == 1 else size)
        if pos > len(b):
            return None
        if h & 1:
            break
    pos += 4 if fhd & 0x04 else 0
    return pos if pos <= len(b) else None


def decode_manifest_frame(body: bytes) -> bytes:
    """The manifest text held by the skippable frame's body (rules of
    launcher/manifest.c ``decode_frame``).  Raises ManifestError."""
    v1 = b"python-mpi-bcast-package "
    if body.startswith(v1):
        n = len(v1)
        while n < len(body) and n < len(v1) + 9 and 0x30 <= body[n] <= 0x39:
            n += 1
        raise ManifestError(f"package format version {body[len(v1):n].decode()} is not "
                            f"supported (this python-mpi reads versions 2 and 3); "
                            f"re-pack it with python-mpi-bcast pack")
    if len(body) < 5 or body[:4] != b"\x28\xb5\x2f\xfd":
        raise ManifestError("corrupt manifest (not a zstd frame)")
    if not body[4] & 0x04:
        raise ManifestError("corrupt manifest (its frame has no checksum)")
    n = frame_size(body)
    if n is None or body.count(0, n) != len(body) - n:
        raise ManifestError("corrupt manifest (not exactly one zstd frame)")
    body = body[:n]
    try:
        params = zstandard.get_frame_parameters(body)
        text = zstandard.ZstdDecompressor().decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as e:
        msg = str(e).replace("decompression error: ", "")
        if "extra data" in msg or "unused" in msg or "full frame" in msg:
            raise ManifestError("corrupt manifest (not exactly one zstd frame)") from None
        if "content size" in msg:
            raise ManifestError("corrupt manifest (bad size)") from None
        raise ManifestError(f"corrupt manifest (zstd: {msg})") from None
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) \
            or params.content_size > MAX_MANIFEST or len(text) != params.content_size:
        raise ManifestError("corrupt manifest (bad size)")
    return text


def read_manifest(path: str) -> tuple[Manifest, int]:
    """Read the manifest of a package with one small read.

    Returns the manifest and the payload's start offset in the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise PmbError(f"{path}: not a python-mpi-bcast package (file too short)")
            magic, size = struct.unpack("<II", head)
            if magic != SKIPPABLE_MAGIC:
                raise PmbError(f"{path}: not a python-mpi-bcast package (no manifest frame; "
                               f"was it made by 'python-mpi-bcast pack'?)")
            if size > MAX_MANIFEST:
                raise PmbError(f"{path}: corrupt package (manifest of {size} bytes)")
            body = f.read(size)
            if len(body) != size:
                raise PmbError(f"{path}: truncated package (manifest cut short)")
    except OSError as e:
        raise PmbError(f"{path}: cannot read: {e.strerror}") from None
    try:
        m = parse_manifest_text(decode_manifest_frame(body))
    except ManifestError as e:
        raise PmbError(f"{path}: {e}") from None
    return m, 8 + size


# ---------------------------------------------------------------------------
# the reading rules, mirrored by launcher/manifest.c line for line

class ManifestError(PmbError):
    pass


def path_problem(p: bytes) -> str | None:
    """Why ``p`` is not a member path (None if it is one)."""
    if not p:
        return "empty path"
    if len(p) > PATH_MAX - 1:
        return "path longer than 4095 bytes"
    if b"\0" in p:
        return "NUL byte in path"
    if p.startswith(b"/"):
        return "absolute path"
    for c in p.split(b"/"):
        if c == b"":
            return "empty path component"
        if c == b".":
            return "'.' path component"
        if c == b"..":
            return "'..' path component"
    return None


def link_problem(name: bytes, t: bytes) -> str | None:
    """Why ``t`` is not an acceptable target for a symlink at ``name``."""
    if not t:
        return "empty target"
    if len(t) > PATH_MAX - 1:
        return "target longer than 4095 bytes"
    if b"\0" in t:
        return "NUL byte in target"
    if t.startswith(b"/"):
        return "absolute target"
    if t == b".":
        return None
    depth = name.count(b"/")
    ups = 0
    named = False
    for c in t.split(b"/"):
        if c == b"":
            return "empty component in target"
        if c == b".":
            return "'.' component in target"
        if c == b"..":
            if named:
                return "'..' after a name in target"
            ups += 1
            if ups > depth:
                return "more '..' than the link's depth"
        else:
            named = True
    return None


_HEX_UPPER = b"0123456789ABCDEF"
_KEYS = ("name", "kind", "python", "abi", "platform", "libpython", "executable", "site_dir",
         "unpacked_size", "files", "payload_size", "content_hash", "created_by", "sources")
_REQUIRED = ("name", "kind", "unpacked_size", "files", "payload_size", "content_hash")


def _decode(s: bytes) -> bytes | None:
    out = bytearray()
    i = 0
    n = len(s)
    while i < n:
        if s[i] == 0x25:
            if i + 2 >= n:
                return None
            hi, lo = s[i + 1], s[i + 2]
            if hi not in _HEX_UPPER or lo not in _HEX_UPPER or (hi == 0x30 and lo == 0x30):
                return None
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(s[i])
            i += 1
    return bytes(out)


def _num(s: bytes) -> int | None:
    if not s or len(s) > 19 or (len(s) > 1 and s[0] == 0x30):
        return None
    if any(c < 0x30 or c > 0x39 for c in s):
        return None
    v = int(s)
    return v if v <= MAX_U63 else None


def _hash(s: bytes) -> bool:
    return len(s) == 64 and all(c in b"0123456789abcdef" for c in s)


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def parse_manifest_text(text: bytes) -> Manifest:
    """Parse manifest bytes; raises ManifestError with launcher/manifest.c's message."""
    def fail(msg):
        raise ManifestError(msg)

    if not text or text[-1:] != b"\n":
        fail("corrupt manifest (does not end with a newline)")
    for c in text:
        if (c < 0x20 and c != 0x0A) or c == 0x7F:
            fail("corrupt manifest (control byte 0x%02x)" % c)
    m = Manifest(name="", kind="")
    version = 2
    prefixed = False
    seen = set()
    phase = 0
    declared = 0
    off = nfiles = usum = 0
    lines = text[:-1].split(b"\n")
    for lineno, line in enumerate(lines, 1):
        if phase == 3:
            fail("corrupt manifest (text after 'end')")
        if not line:
            fail(f"corrupt manifest (empty line {lineno})")
        f = line.split(b" ")
        if any(x == b"" for x in f[:8]):
            fail(f"corrupt manifest (empty field in line {lineno})")
        if len(f) > 7:
            fail(f"corrupt manifest (too many fields in line {lineno})")
        nf = len(f)
        if lineno == 1:
            if nf != 2 or f[0] != b"python-mpi-bcast-package":
                fail("not a python-mpi-bcast package (bad manifest header)")
            if f[1] not in (b"2", b"3"):
                fail(f"package format version {_str(f[1][:20])} is not supported (this "
                     f"python-mpi reads versions 2 and 3); re-pack it with "
                     f"python-mpi-bcast pack")
            version = int(f[1])
            continue
        key = f[0]
        if key == b"shards":
            if phase != 0 or nf != 2:
                fail("corrupt manifest (misplaced 'shards' line)")
            n = _num(f[1])
            if n is None or n < 1 or n > MAX_SHARDS:
                fail("corrupt manifest (bad shard count)")
            for r in _REQUIRED:
                if r not in seen:
                    fail(f"corrupt manifest (no '{r}' line)")
            declared = n
            phase = 1
        elif key == b"shard":
            if phase != 1 or nf != 6:
                fail(f"corrupt manifest (bad shard line {lineno})")
            vals = [_num(x) for x in f[1:5]]
            if None in vals or not _hash(f[5]):
                fail(f"corrupt manifest (bad shard line {lineno})")
            o, cs, us, nfl = vals
            i = len(m.shards)
            if o != off:
                fail(f"corrupt manifest (shard {i} is not contiguous)")
            if cs < 1 or us % 512 or nfl > us // 512:
                fail(f"corrupt manifest (shard {i} has impossible sizes)")
            if cs > MAX_U63 - off or us > MAX_U63 - usum:
                fail("corrupt manifest (shard sizes overflow)")
            off += cs
            usum += us
            nfiles += nfl
            m.shards.append(Shard(o, cs, us, nfl, f[5].decode()))
            if len(m.shards) == declared:
                phase = 2
        elif key == b"part":
            if phase != 2 or nf != 7 or prefixed:
                fail(f"corrupt manifest (bad part line {lineno})")
            if version != 3:
                fail(f"corrupt manifest (part line {lineno} in a version 2 manifest)")
            vals = [_num(x) for x in (f[1], f[2], f[3], f[5])]
            md = f[4]
            if None in vals or len(md) != 4 or md[0] != 0x30 \
                    or any(c < 0x30 or c > 0x37 for c in md):
                fail(f"corrupt manifest (bad part line {lineno})")
            path = _decode(f[6])
            if path is None:
                fail(f"corrupt manifest (bad percent-encoding in line {lineno})")
            why = path_problem(path)
            if why:
                fail(f"corrupt manifest (split file path: {why})")
            _part(m, Part(vals[0], vals[1], vals[2], int(md, 8), vals[3], _str(path)),
                  lineno, fail)
        elif key == b"prefix":
            if phase != 2 or nf != 4:
                fail(f"corrupt manifest (bad prefix line {lineno})")
            if f[1] not in (b"text", b"binary"):
                fail(f"corrupt manifest (prefix mode must be text or binary, line {lineno})")
            path, ph = _decode(f[2]), _decode(f[3])
            if path is None or ph is None:
                fail(f"corrupt manifest (bad percent-encoding in line {lineno})")
            why = path_problem(path)
            if why:
                fail(f"corrupt manifest (prefix file path: {why})")
            m.prefix_files.append(PrefixFile(f[1].decode(), _str(path), _str(ph)))
            prefixed = True
        elif key == b"end":
            if phase != 2 or nf != 1:
                fail("corrupt manifest (misplaced 'end')")
            phase = 3
        else:
            k = _str(key)
            if k not in _KEYS:
                fail(f"corrupt manifest (unknown line {lineno} '{_str(key[:40])}')")
            if phase != 0 or nf != 2 or k in seen:
                fail(f"corrupt manifest (misplaced or repeated '{k}' line)")
            seen.add(k)
            v = _decode(f[1])
            if v is None:
                fail(f"corrupt manifest (bad percent-encoding in line {lineno})")
            if k in ("unpacked_size", "files", "payload_size"):
                num = _num(v)
                if num is None:
                    fail(f"corrupt manifest (bad '{k}' value)")
                setattr(m, k, num)
                continue
            if k == "content_hash" and not _hash(v) \
                    or k == "kind" and v.decode("latin-1") not in KINDS \
                    or k in ("libpython", "executable", "site_dir") and path_problem(v):
                fail(f"corrupt manifest (bad '{k}' value)")
            setattr(m, k, _str(v))
    if phase != 3:
        fail("corrupt or truncated manifest (no 'end' line)")
    if off != m.payload_size:
        fail(f"corrupt manifest (shards cover {off} bytes, payload is {m.payload_size})")
    if nfiles != m.files:
        fail(f"corrupt manifest (shards hold {nfiles} files, manifest says {m.files})")
    if m.unpacked_size > usum:
        fail("corrupt manifest (unpacked_size larger than the shards)")
    tail = m.shards[-1]
    if tail.usize != 1024 or tail.nfiles != 0:
        fail("corrupt manifest (last shard is not the archive end)")
    if content_hash([s.sha256 for s in m.shards]) != m.content_hash:
        fail("corrupt manifest (content_hash does not match the shard lines)")
    _parts_end(m, fail)
    return m


def _roundup(n: int) -> int:
    return (n + 511) // 512 * 512


def _part(m: Manifest, p: Part, lineno: int, fail) -> None:
    """A part line against the shard lines and the part line before it
    (launcher/manifest.c ``part_line``)."""
    if p.shard < 1 or p.shard > len(m.shards) - 2:
        fail(f"corrupt manifest (part line {lineno}: shard {p.shard} cannot begin inside a file)")
    prev = m.parts[-1] if m.parts else None
    if prev is not None and p.shard <= prev.shard:
        fail(f"corrupt manifest (part lines out of order, line {lineno})")
    if p.offset == 0 or p.offset >= p.size or p.offset % 512:
        fail(f"corrupt manifest (part line {lineno}: offset {p.offset} is not inside the file)")
    before = m.shards[p.shard - 1].usize
    if prev is not None and prev.shard == p.shard - 1 and prev.path == p.path:
        if (p.size, p.mode, p.mtime) != (prev.size, prev.mode, prev.mtime) \
                or p.offset != prev.offset + before:
            fail(f"corrupt manifest (part line {lineno} does not continue the piece before it)")
    else:
        room = before
        if prev is not None:
            rest = _roundup(prev.size) - prev.offset
            if rest > m.shards[prev.shard].usize:
                fail(f"corrupt manifest (part line {lineno - 1}: the file's last piece is "
                     f"missing)")
            if prev.shard == p.shard - 1:
                room -= rest
        if p.offset + 512 > room:
            fail(f"corrupt manifest (part line {lineno}: the file's first piece does not fit "
                 f"shard {p.shard - 1})")
    m.parts.append(p)


def _parts_end(m: Manifest, fail) -> None:
    """After the last line: the last split file ends in its shard, no file
    is split twice, no prefix line names a split file."""
    if not m.parts:
        return
    last = m.parts[-1]
    if _roundup(last.size) - last.offset > m.shards[last.shard].usize:
        fail("corrupt manifest (last part line: the file's last piece is missing)")
    heads = sorted(p.path.encode("utf-8", "surrogateescape") for i, p in enumerate(m.parts)
                   if i == 0 or m.parts[i - 1].shard != p.shard - 1
                   or m.parts[i - 1].path != p.path)
    for a, b in zip(heads, heads[1:]):
        if a == b:
            fail(f"corrupt manifest (split file '{_str(a[:200])}' given twice)")
    split = set(heads)
    for pf in m.prefix_files:
        if pf.path.encode("utf-8", "surrogateescape") in split:
            fail(f"corrupt manifest (prefix file '{_str(pf.path.encode('utf-8', 'surrogateescape')[:200])}' "
                 f"is a split file)")
