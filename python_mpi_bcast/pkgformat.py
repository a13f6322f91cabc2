"""The package file format, ``NAME.tar.zst`` (format version 1).

Layout::

    +-----------------------------------------------------------+
    | zstd skippable frame: magic 0x184D2A5B, u32le length,     |
    |   manifest text (UTF-8, see below)                        |
    +-----------------------------------------------------------+
    | shard 0: one zstd frame = whole tar members               |  payload
    | shard 1 ...                                               |
    | tail: one zstd frame = the 1024 zero bytes that end a tar |
    +-----------------------------------------------------------+

Decoders skip skippable frames and concatenate the others, so
``zstd -dc NAME.tar.zst | tar -x`` and ``tar --zstd -xf NAME.tar.zst`` give
the tree.  Every shard holds whole files, so shards unpack independently.

The manifest is line oriented (the C launcher parses it without a JSON
library): ``key value`` lines, then one ``shard`` line per frame of the
payload (the tail is the last shard line), then ``prefix`` lines, then
``end``.  Paths are percent-encoded (``%``, space and control bytes).
Offsets are relative to the first byte after the manifest frame.

``content_hash`` is the SHA-256 of the concatenated binary SHA-256 digests of
all payload frames in order; each frame's digest (of its compressed bytes) is
in its shard line.  A reader can therefore verify every shard on its own and
the shard table as a whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from .errors import PmbError

FORMAT_VERSION = 1
SKIPPABLE_MAGIC = 0x184D2A5B
ZSTD_MAGIC = 0xFD2FB528
MAX_MANIFEST = 64 << 20
SUFFIX = ".tar.zst"
KINDS = ("interpreter", "environment", "directory")


@dataclasses.dataclass
class Shard:
    offset: int
    csize: int
    usize: int
    nfiles: int
    sha256: str


@dataclasses.dataclass
class PrefixFile:
    mode: str        # "text" or "binary"
    path: str        # relative to the tree root
    placeholder: str  # the string the unpacker replaces by the tree directory


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

    # -- encoding -------------------------------------------------------
    def to_text(self) -> str:
        lines = [f"python-mpi-bcast-package {FORMAT_VERSION}"]
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
        for p in self.prefix_files:
            lines.append(f"prefix {p.mode} {quote(p.path)} {quote(p.placeholder)}")
        lines.append("end")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["format_version"] = FORMAT_VERSION
        return d

    @classmethod
    def from_text(cls, text: str, where: str = "package") -> "Manifest":
        lines = text.split("\n")
        head = lines[0].split(" ")
        if len(head) != 2 or head[0] != "python-mpi-bcast-package":
            raise PmbError(f"{where}: not a python-mpi-bcast package (bad manifest header)")
        if head[1] != str(FORMAT_VERSION):
            raise PmbError(f"{where}: package format version {head[1]} is not supported "
                           f"(this python-mpi-bcast reads version {FORMAT_VERSION}); repack it")
        m = cls(name="", kind="")
        nshards = -1
        ended = False
        ints = {"unpacked_size", "files", "payload_size"}
        for ln in lines[1:]:
            if not ln:
                continue
            if ended:
                raise PmbError(f"{where}: corrupt manifest (text after 'end')")
            parts = ln.split(" ")
            key = parts[0]
            try:
                if key == "end":
                    ended = True
                elif key == "shards":
                    nshards = int(parts[1])
                elif key == "shard":
                    off, cs, us, nf = (int(x) for x in parts[1:5])
                    m.shards.append(Shard(off, cs, us, nf, parts[5]))
                elif key == "prefix":
                    m.prefix_files.append(PrefixFile(parts[1], unquote(parts[2]), unquote(parts[3])))
                elif key in ints:
                    setattr(m, key, int(parts[1]))
                elif hasattr(m, key) and len(parts) == 2:
                    setattr(m, key, unquote(parts[1]))
                # unknown keys are ignored: newer writers may add fields
            except (ValueError, IndexError):
                raise PmbError(f"{where}: corrupt manifest line {ln[:80]!r}") from None
        if not ended or nshards != len(m.shards) or not m.shards:
            raise PmbError(f"{where}: corrupt or truncated manifest")
        if m.kind not in KINDS:
            raise PmbError(f"{where}: unknown package kind {m.kind!r}")
        return m


def quote(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "%" or ch == " " or o < 0x21 or o == 0x7F:
            out.append("%%%02X" % o)
        else:
            out.append(ch)
    return "".join(out)


def unquote(s: str) -> str:
    b = s.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(b):
        if b[i] == 0x25 and i + 3 <= len(b):
            out.append(int(b[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(b[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def content_hash(shard_digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in shard_digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def encode_manifest_frame(m: Manifest) -> bytes:
    body = m.to_text().encode("utf-8", "surrogateescape")
    return struct.pack("<II", SKIPPABLE_MAGIC, len(body)) + body


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
    m = Manifest.from_text(body.decode("utf-8", "surrogateescape"), where=path)
    return m, 8 + size
