"""Pure byte-level relocation helpers (no imports from this package).

Everything here takes bytes and returns bytes, so it can be unit tested
without files.  The pack pipeline decides *which* function applies to a file;
these functions decide *how* its bytes change.
"""

from __future__ import annotations

import re

# Written into text files at pack time wherever the old install prefix was.
# The unpacker (Python and C) replaces it by the directory the tree lands in.
# It is long so that binary files recorded with it have room for real paths.
PLACEHOLDER = b"/" + b"_" * 24 + b"python-mpi-bcast-prefix-placeholder" + b"_" * 24

# A shebang that finds the interpreter next to the script, whatever directory
# the tree is unpacked into.  /bin/sh reads line 2 and execs; Python reads
# line 2-3 as a string literal and carries on (the same trick pip/distlib use
# for shebangs that are too long).
RELOCATABLE_SHEBANG = (
    b"#!/bin/sh\n"
    b"'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")/%s\" \"$0\" \"$@\"\n"
    b"' '''\n"
)

_SHEBANG_RE = re.compile(rb"^#!\s*(\S+)([^\r\n]*)\r?\n")


def is_binary(data: bytes) -> bool:
    """A file is treated as binary when it holds a NUL byte."""
    return b"\0" in data


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def python_shebang_target(data: bytes, prefixes: list[bytes]) -> bytes | None:
    """Return the interpreter basename if ``data`` starts with a shebang that
    runs a Python under one of ``prefixes``; otherwise None."""
    m = _SHEBANG_RE.match(data)
    if not m:
        return None
    exe = m.group(1)
    if not any(exe.startswith(p.rstrip(b"/") + b"/") for p in prefixes):
        return None
    base = exe.rsplit(b"/", 1)[-1]
    if not base.startswith(b"python"):
        return None
    return base


def rewrite_shebang(data: bytes, interpreter: bytes = b"python3") -> bytes:
    """Replace the first line (a shebang) by the relocatable preamble."""
    m = _SHEBANG_RE.match(data)
    if not m:
        raise ValueError("no shebang")
    rest = data[m.end():]
    args = m.group(2).strip()
    if args:
        # Options on the shebang line ("-E", "-s") are kept by passing them
        # through the exec line.
        pre = RELOCATABLE_SHEBANG.replace(
            b'/%s" "$0"', b'/%s" ' + args.replace(b"'", b"") + b' "$0"')
        return pre % interpreter + rest
    return RELOCATABLE_SHEBANG % interpreter + rest


def relativize_pth(data: bytes, site_dir: bytes, prefixes: list[bytes],
                   new_site_rel: bytes) -> tuple[bytes, list[bytes]]:
    """Make the path lines of a ``.pth`` file relative to the site directory.

    ``site_dir`` is the absolute site-packages the file came from;
    ``prefixes`` maps old absolute locations that are packed (the venv);
    ``new_site_rel`` is unused by the caller today but kept for symmetry.
    Returns the new bytes and a list of absolute lines that point outside the
    packed prefixes (the caller reports them: they cannot be relocated).
    """
    del new_site_rel
    out = []
    foreign = []
    for line in data.splitlines(keepends=True):
        stripped = line.strip()
        if (not stripped or stripped.startswith(b"#")
                or stripped.startswith(b"import ") or stripped.startswith(b"import\t")
                or not stripped.startswith(b"/")):
            out.append(line)
            continue
        eol = line[len(line.rstrip(b"\r\n")):]
        target = stripped.rstrip(b"/")
        sd = site_dir.rstrip(b"/")
        if target == sd:
            out.append(b"." + eol)
        elif target.startswith(sd + b"/"):
            out.append(target[len(sd) + 1:] + eol)
        elif any(target == p.rstrip(b"/") or target.startswith(p.rstrip(b"/") + b"/")
                 for p in prefixes):
            out.append(_relpath(target, sd) + eol)
        else:
            foreign.append(stripped)
            out.append(line)
    return b"".join(out), foreign


def _relpath(target: bytes, start: bytes) -> bytes:
    t = [c for c in target.split(b"/") if c]
    s = [c for c in start.split(b"/") if c]
    i = 0
    while i < min(len(t), len(s)) and t[i] == s[i]:
        i += 1
    parts = [b".."] * (len(s) - i) + t[i:]
    return b"/".join(parts) or b"."


# An old location names itself (or a path under it) only where the byte after
# it ends a path component: '/', a quote or backquote, whitespace, NUL, one of
# ``: ; = ,`` (list and assignment separators) or a closing ``) ] } >`` or
# ``< | &`` (shell and markup syntax), or the end of the data.  Any other byte
# (a letter, a digit, ``. - _ + ~ @ #``...) makes it a longer sibling name:
# ``/x/ana-data`` is not under ``/x/ana`` and is never rewritten.  Such a set
# errs on the side of replacing less: a location followed by something odd is
# left alone (and the leftover scans, which use the same rule, do not count it).
PATH_END = b"/'\"`\0 \t\n\r\v\f:;=,)]}<>|&"
_END_CLASS = rb"[/'\"`\x00\s:;=,)\]}<>|&]"


def prefix_regex(olds: list[bytes], at_end: bool = True) -> "re.Pattern[bytes]":
    """A pattern matching any of ``olds`` as a whole path prefix, longest
    first.  With ``at_end`` False the end of the data does not count as a
    path end (for scanning a file in chunks: the next byte is unknown)."""
    alts = b"|".join(re.escape(o) for o in sorted(set(olds), key=len, reverse=True))
    end = _END_CLASS + (rb"|\Z" if at_end else b"")
    return re.compile(b"(?:" + alts + b")(?=" + end + b")")


def find_prefix(data: bytes, olds: list[bytes]) -> bytes | None:
    """The first of ``olds`` that ``data`` holds as a whole path prefix."""
    olds = [o for o in olds if o in data]  # the plain search first: most files hold none
    if not olds:
        return None
    m = prefix_regex(olds).search(data)
    return m.group(0) if m else None


def has_prefix(data: bytes, olds: list[bytes]) -> bool:
    return find_prefix(data, olds) is not None


def count_siblings(data: bytes, old: bytes) -> int:
    """How often ``old`` occurs in ``data`` *not* as a whole path prefix
    (as the start of a longer sibling name such as ``old-data``)."""
    if not old or old not in data:
        return 0
    return data.count(old) - len(prefix_regex([old]).findall(data))


def replace_text_prefix(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` in a text file wherever ``old`` is a whole
    path prefix (see PATH_END); longer sibling names are left alone."""
    if not old or old not in data:
        return data
    return prefix_regex([old]).sub(lambda m: new, data)


def py_literal_body(path: bytes) -> bytes:
    """``path`` as it must be written inside a Python string literal (a
    ``.py`` file such as ``_sysconfigdata`` quotes its paths): backslash,
    both quotes and control bytes escaped, other bytes as they are.  The
    launcher's unpacker applies the same rule (launcher/unpack.c)."""
    out = bytearray()
    for c in path:
        if c in b"\\'\"":
            out += b"\\" + bytes([c])
        elif c < 0x20 or c == 0x7f:
            out += b"\\x%02x" % c
        else:
            out.append(c)
    return bytes(out)


def replace_binary_prefix(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` inside NUL-terminated strings of a binary
    file without moving any byte after the string (conda's technique).

    Each C string that contains ``old`` keeps its length: the replaced string
    is padded with NUL bytes.  ``new`` must not be longer than ``old``.
    """
    if len(new) > len(old):
        raise ValueError("new prefix is longer than the recorded one")
    pat = re.compile(re.escape(old) + b"(?=" + _END_CLASS + rb")([^\0]*?)\0")

    def sub(m: re.Match) -> bytes:
        tail = replace_text_prefix(m.group(1), old, new)
        s = new + tail
        return s + b"\0" * (len(m.group(0)) - len(s))

    return pat.sub(sub, data)


def relocate_record(data: bytes, site_dir: bytes, prefixes: list[bytes]) -> bytes:
    """Rewrite absolute paths inside a wheel ``RECORD`` file to paths
    relative to the site directory (which is how pip writes them for files
    outside site-packages, e.g. ``../../../bin/pip``)."""
    out = []
    for line in data.splitlines(keepends=True):
        path, sep, rest = line.partition(b",")
        if path.startswith(b"/") and any(
                path.startswith(p.rstrip(b"/") + b"/") for p in prefixes):
            path = _relpath(path, site_dir.rstrip(b"/"))
        out.append(path + sep + rest)
    return b"".join(out)


def rebase_record(data: bytes, old_site_rel: bytes, new_site_rel: bytes) -> bytes:
    """Re-aim the relative ``../`` entries of a ``RECORD`` file when the site
    directory sits at another depth in the tree than in the venv (Debian's
    ``local/lib/python3.11/dist-packages`` vs ``lib/python3.11/site-packages``).

    Both site paths are relative to the root of the venv / tree.
    """
    if old_site_rel == new_site_rel:
        return data
    out = []
    for line in data.splitlines(keepends=True):
        path, sep, rest = line.partition(b",")
        if path.startswith(b"../"):
            parts = [c for c in old_site_rel.split(b"/") if c]
            for c in path.split(b"/"):
                if c == b"..":
                    if parts:
                        parts.pop()
                elif c and c != b".":
                    parts.append(c)
            path = _relpath(b"/".join(parts), new_site_rel)
        out.append(path + sep + rest)
    return b"".join(out)


def make_placeholder(length: int) -> bytes:
    """A placeholder of our own of exactly ``length`` bytes, put back at pack
    time where conda had written the env prefix over its recorded (longer)
    build placeholder, so the unpacker may write a path of up to ``length``
    bytes there."""
    base = b"/python-mpi-bcast-placeholder"
    if length < 8:
        raise ValueError("a binary placeholder needs at least 8 bytes")
    if length <= len(base):
        return b"/pmb" + b"_" * (length - 4)
    return base + b"_" * (length - len(base))


def restore_binary_placeholder(data: bytes, prefix: bytes, placeholder: bytes) -> bytes:
    """Undo conda's padded install-time rewrite in a binary file.

    Conda replaced the build placeholder by ``prefix`` inside each
    NUL-terminated string and padded the string with NULs so nothing after it
    moved.  This writes ``placeholder`` (as long as the recorded one) back in
    place of ``prefix``, consuming that padding; the rest of each string is
    kept.  Raises ValueError when a string lacks the padding (the file was not
    written by such a rewrite, so its layout cannot be trusted).
    """
    if len(placeholder) < len(prefix):
        raise ValueError("placeholder shorter than the prefix")
    grow = len(placeholder) - len(prefix)
    pat = re.compile(re.escape(prefix) + b"(?=" + _END_CLASS + rb")[^\0]*\0")
    whole = prefix_regex([prefix])
    out = []
    pos = 0
    for m in pat.finditer(data):
        s = m.group(0)[:-1]
        need = len(whole.findall(s)) * grow
        end = m.end() - 1          # index of the terminating NUL
        pad = 0
        while end + pad < len(data) and data[end + pad] == 0 and pad < need + 1:
            pad += 1
        # the string's own NUL plus ``need`` bytes of padding must be there
        if pad < need + 1:
            raise ValueError("no NUL padding after the prefix")
        new = whole.sub(lambda _: placeholder, s)
        out.append(data[pos:m.start()])
        out.append(new + b"\0")
        pos = m.end() + need
    out.append(data[pos:])
    res = b"".join(out)
    assert len(res) == len(data)
    return res


def apply_maps(data: bytes, maps: list[tuple[bytes, bytes]]) -> bytes:
    """Replace every ``old`` of ``maps`` by its ``new`` in one pass (longest
    ``old`` first, so a mapped result is never mapped again), only where
    ``old`` is a whole path prefix (``/x/data-old2`` is no ``/x/data-old``)."""
    table = {o: n for o, n in maps if o and o in data}
    if not table:
        return data
    return prefix_regex(list(table)).sub(lambda m: table[m.group(0)], data)


# The activation scripts venv writes (bin/activate, activate.csh,
# activate.fish) quote the venv's path as "PATH" (or 'PATH' in newer
# Pythons).  A path holding a quote, '$', '`' or '\' breaks out of those
# quotes: each shell gets it single-quoted in its own syntax instead.
ACTIVATION_SHELLS = {"activate": "sh", "activate.csh": "csh", "activate.fish": "fish"}
_SHELL_SAFE = re.compile(rb"^[A-Za-z0-9_@%+=:,./~ \x80-\xff-]*$")


def shell_quote(path: bytes, shell: str) -> bytes | None:
    """``path`` as one word for ``shell`` ("sh", "csh", "fish"); None when
    that shell's syntax cannot hold it (a line break in csh)."""
    if shell == "fish":
        return b"'" + path.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'"
    if shell == "csh":
        if b"\n" in path:
            return None
        return b"'" + path.replace(b"'", b"'\\''").replace(b"!", b"'\\!'") + b"'"
    return b"'" + path.replace(b"'", b"'\\''") + b"'"


def requote_activation(data: bytes, path: bytes, shell: str) -> bytes | None:
    """An activation script with ``path`` written raw inside its quotes,
    with it quoted for ``shell`` instead (unchanged for a plain path); None
    when the shell cannot hold the path."""
    if _SHELL_SAFE.match(path):
        return data
    word = shell_quote(path, shell)
    if word is None:
        return None
    for q in (b'"', b"'"):
        data = data.replace(q + path + q, word)
    # a venv with the fix for CVE-2024-9287 (Debian 12's python has it) wrote
    # the path through shlex.quote, so a plain path stands unquoted:
    # "VIRTUAL_ENV=PATH", "set -gx VIRTUAL_ENV PATH", "setenv VIRTUAL_ENV PATH"
    for before in (b"=", b" "):
        data = data.replace(before + path + b"\n", before + word + b"\n")
    return data
