"""An old location is rewritten only where it is a whole path prefix (issue
23, item 1): byte-level cases for every byte that can follow it, in text and
in binary files, the chunked scanners (leftovers, verify, migrate's
comparison) held to the same rule, and a seeded property test over random
path sets checked against a plain reference loop."""

from __future__ import annotations

import os
import random

import pytest

from python_mpi_bcast.packing import relocatable as fixup
from python_mpi_bcast.package import scan
from python_mpi_bcast.envs import migrate
from python_mpi_bcast.package import prefixes as R

OLD = b"/x/envs/ana"
NEW = b"/un"

# What ends a path component after a location, as a user writes paths in
# scripts, configs and shell files (named here, not taken from the module).
ENDS = set(b"/'\"`\0 \t\n\r\v\f:;=,)]}<>|&")
# Bytes that continue a name: the location is then a longer sibling.
CONTINUES = set(range(256)) - ENDS
NAMED_SIBLINGS = [b"-data", b"2", b".bak", b"_old", b"+x", b"~", b"@host", b"#1", b"(copy",
                  b"[1", b"{a", b"\\x", b"*", b"?", b"$HOME", b"!", b"%", b"^", b"\x80\xc3\xa9",
                  b"\xff", b"\x7f"]


def test_the_module_and_this_test_agree_on_what_ends_a_path():
    assert set(R.PATH_END) == ENDS


@pytest.mark.parametrize("c", range(256))
def test_text_prefix_followed_by_each_byte(c):
    data = b"open('" + OLD + bytes([c]) + b"input.csv')\n"
    out = R.replace_text_prefix(data, OLD, NEW)
    if c in ENDS:
        assert out == b"open('" + NEW + bytes([c]) + b"input.csv')\n"
    else:
        assert out == data


def test_text_prefix_at_the_end_of_the_data_and_of_each_line():
    assert R.replace_text_prefix(b"home=" + OLD, OLD, NEW) == b"home=" + NEW
    assert R.replace_text_prefix(OLD, OLD, NEW) == NEW
    assert R.replace_text_prefix(OLD + b"\n" + OLD + b"-data\n", OLD, NEW) == \
        NEW + b"\n" + OLD + b"-data\n"


@pytest.mark.parametrize("tail", NAMED_SIBLINGS)
def test_a_longer_sibling_name_is_never_rewritten(tail):
    data = b'DATA = "' + OLD + tail + b'/input.csv"\nHOME = "' + OLD + b'"\n'
    assert R.replace_text_prefix(data, OLD, NEW) == \
        b'DATA = "' + OLD + tail + b'/input.csv"\nHOME = "' + NEW + b'"\n'
    assert not R.has_prefix(OLD + tail + b"/input.csv", [OLD])
    assert R.count_siblings(data, OLD) == 1


@pytest.mark.parametrize("c", range(256))
def test_binary_prefix_followed_by_each_byte(c):
    """Inside NUL-terminated strings, padded with NULs, length kept."""
    if c == 0:
        s = OLD
    else:
        s = OLD + bytes([c]) + b"lib"
    data = b"\x7fELF\x01" + s + b"\0" + b"\0" * 4 + b"tail\0"
    out = R.replace_binary_prefix(data, OLD, NEW)
    assert len(out) == len(data)
    if c in ENDS:
        want = NEW + s[len(OLD):]
        assert out == b"\x7fELF\x01" + want + b"\0" * (len(s) - len(want) + 1) + b"\0" * 4 + \
            b"tail\0"
    else:
        assert out == data


def test_binary_string_with_a_sibling_and_the_prefix_rewrites_only_the_prefix():
    s = OLD + b"-data/x:" + OLD + b"/lib"
    data = b"\0" + s + b"\0rest\0"
    out = R.replace_binary_prefix(data, OLD, NEW)
    assert out == b"\0" + OLD + b"-data/x:" + NEW + b"/lib" + b"\0" * (len(OLD) - len(NEW) + 1) \
        + b"rest\0"


def test_conda_placeholder_restore_leaves_siblings_and_needs_no_padding_for_them():
    ph = R.make_placeholder(60)
    grow = len(ph) - len(OLD)
    # conda padded the string holding the prefix; the sibling string has no padding
    data = b"\0" + OLD + b"/lib\0" + b"\0" * grow + OLD + b"-data/in.csv\0end\0"
    out = R.restore_binary_placeholder(data, OLD, ph)
    assert out == b"\0" + ph + b"/lib\0" + OLD + b"-data/in.csv\0end\0"
    assert R.replace_binary_prefix(out, ph, b"/dev/shm/t") .startswith(b"\0/dev/shm/t/lib\0")


def test_map_does_not_touch_a_sibling_of_old():
    maps = [(b"/x/data-old", b"/x/data-new")]
    assert R.apply_maps(b"a=/x/data-old2/y.csv b=/x/data-old/y.csv c=/x/data-old", maps) == \
        b"a=/x/data-old2/y.csv b=/x/data-new/y.csv c=/x/data-new"
    # the longer of two olds still wins where both are whole prefixes
    maps = [(b"/x/data", b"/d"), (b"/x/data-old", b"/o")]
    assert R.apply_maps(b"/x/data-old/1 /x/data/2 /x/data-older/3", maps) == \
        b"/o/1 /d/2 /x/data-older/3"


def _write_at_chunk_edge(path, chunk: int, follow: bytes) -> None:
    """OLD ends exactly at the end of the first chunk, ``follow`` opens the next."""
    with open(path, "wb") as f:
        f.write(b"." * (chunk - len(OLD)) + OLD + follow)


@pytest.mark.parametrize("follow, found", [(b"-data/input.csv", False), (b"/bin/python", True),
                                           (b"", True), (b"2", False), (b"\n", True)])
def test_scanners_decide_at_a_chunk_edge_by_the_next_byte(tmp_path, follow, found):
    """The one leftover scanner (relocate's leftovers, migrate's comparison,
    verify's scan, which reads on to classify binaries) reads large files in
    chunks: a location at a chunk's end is decided by the first byte of the
    next chunk, or by the end of the file."""
    p = str(tmp_path / "f")
    chunk = 64
    _write_at_chunk_edge(p, chunk, follow)
    assert (scan.find_any(p, [OLD], chunk=chunk) is not None) is found
    assert (scan.scan_file(p, [OLD], chunk=chunk, classify=True)[0] is not None) is found
    # and with the default (one chunk)
    assert (scan.find_any(p, [OLD]) is not None) is found


def test_migrate_comparison_catches_a_sibling_rewritten_with_the_prefix(tmp_path):
    """The copy of a file naming both the env and env-data must keep env-data."""
    src, dest = b"/s/scratch3/ana", b"/h/venvs/ana"
    a = tmp_path / "a.py"
    a.write_bytes(b"HOME = '" + src + b"'\nDATA = '" + src + b"-data/input.csv'\n")
    good = tmp_path / "good.py"
    good.write_bytes(b"HOME = '" + dest + b"'\nDATA = '" + src + b"-data/input.csv'\n")
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"HOME = '" + dest + b"'\nDATA = '" + dest + b"-data/input.csv'\n")
    assert migrate._siblings_changed(str(a), str(good), [src], dest) == ""
    assert "not under it" in migrate._siblings_changed(str(a), str(bad), [src], dest)
    # a new location that itself starts with the old one is no sibling
    dest2 = src + b"2/ana"
    good2 = tmp_path / "good2.py"
    good2.write_bytes(b"HOME = '" + dest2 + b"'\nDATA = '" + src + b"-data/input.csv'\n")
    assert migrate._siblings_changed(str(a), str(good2), [src], dest2) == ""


def _reference_replace(data: bytes, olds: dict[bytes, bytes]) -> bytes:
    """A plain left-to-right loop: at each position the longest old that is
    followed by a path end (or the end of the data) is replaced."""
    out = bytearray()
    i = 0
    order = sorted(olds, key=len, reverse=True)
    while i < len(data):
        for o in order:
            j = i + len(o)
            if data.startswith(o, i) and (j == len(data) or data[j] in ENDS):
                out += olds[o]
                i = j
                break
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


NAME_BYTES = b"abcdefgh0123456789-_.+~@"
ANY_BYTES = bytes(sorted(ENDS)) + NAME_BYTES + b"\xc3\xa9$*?#(!"


def _name(rng: random.Random, k: int = 4) -> bytes:
    return bytes(rng.choice(NAME_BYTES) for _ in range(rng.randint(1, k)))


def test_random_path_sets_change_only_at_whole_prefixes():
    """Seeded property test: random sets of locations (some prefixes or
    siblings of others), random text of paths under them, beside them and
    unrelated, with every kind of following byte; the engine agrees with the
    reference loop, every sibling path survives byte for byte, and no old
    location is left as a whole prefix."""
    rng = random.Random(20231207)
    for _ in range(400):
        base = b"/" + _name(rng) + b"/" + _name(rng)
        olds = {base}
        for _ in range(rng.randint(0, 3)):  # nested or sibling locations
            olds.add(rng.choice([base + b"/" + _name(rng), base + _name(rng, 2),
                                 b"/" + _name(rng) + b"/" + _name(rng)]))
        olds_l = sorted(olds)
        new_of = {o: b"/NEW%d" % i for i, o in enumerate(olds_l)}
        pieces, siblings = [], []
        for _ in range(rng.randint(1, 12)):
            o = rng.choice(olds_l)
            kind = rng.random()
            if kind < 0.4:    # under it, or it, followed by any path end
                p = o + rng.choice([b"/" + _name(rng), b""]) + bytes([rng.choice(sorted(ENDS))])
            elif kind < 0.75:  # a sibling: the name goes on
                first = rng.choice(sorted(CONTINUES) if rng.random() < 0.3 else NAME_BYTES)
                tail = bytes([first]) + _name(rng)
                p = o + tail + b"/f.csv"
                siblings.append(p)
            else:
                p = bytes(rng.choice(ANY_BYTES) for _ in range(rng.randint(0, 6)))
            pieces.append(p + bytes([rng.choice(b" \n'\"=:")]))
        data = b"".join(pieces)
        want = _reference_replace(data, new_of)
        got = R.apply_maps(data, list(new_of.items()))
        assert got == want, (olds, data)
        one = data
        for o in sorted(olds, key=len, reverse=True):
            one = R.replace_text_prefix(one, o, new_of[o])
        # replacing one location at a time agrees where no new one is a prefix of an old
        assert not R.has_prefix(one, olds_l)
        for s in siblings:
            if not any(R.has_prefix(s, [o]) for o in olds_l):
                assert s in got, (s, got)
        # the binary rewrite keeps the length and agrees on each NUL-terminated string
        bdata = data.replace(b"\0", b"\1") + b"\0" * 64
        for o in olds_l:
            short = b"/N"
            bout = R.replace_binary_prefix(bdata, o, short)
            assert len(bout) == len(bdata)
            assert bout.rstrip(b"\0") == _reference_replace(bdata, {o: short}).rstrip(b"\0")


def test_scanner_and_replacer_agree_on_random_files(tmp_path):
    """What the leftover scan calls a leftover is exactly what the rewrite
    would have changed, whatever the chunk size."""
    rng = random.Random(7)
    p = str(tmp_path / "f")
    for _ in range(200):
        data = bytes(rng.choice(ANY_BYTES + b"/xenvsa") for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.5:
            at = rng.randint(0, len(data))
            data = data[:at] + OLD + data[at:]
        with open(p, "wb") as f:
            f.write(data)
        changes = R.replace_text_prefix(data, OLD, NEW) != data
        for chunk in (7, 11, 64, 1 << 20):
            assert (scan.find_any(p, [OLD], chunk=chunk) is not None) is changes, (data, chunk)
            assert (scan.scan_file(p, [OLD], chunk=chunk, classify=True)[0] is not None) is changes, (data, chunk)


def test_python_literal_body_round_trips_through_the_parser():
    for path in [b"/t/it's web", b'/t/say "hi"', b"/t/back\\slash\\n", b"/t/new\nline",
                 "/t/caf\u00e9 \u6f22".encode(), b"/t/'''", b"/t/tab\there\x7f"]:
        body = R.py_literal_body(path)
        for q in (b"'", b'"', b"'''", b'"""'):
            src = b"# -*- coding: utf-8 -*-\nx = " + q + b"pre:" + body + b"/lib" + q + b"\n"
            ns: dict = {}
            exec(compile(src, "t", "exec"), ns)
            assert ns["x"] == "pre:" + path.decode() + "/lib"


def test_write_final_paths_writes_python_literals_into_py_files(tmp_path):
    from python_mpi_bcast.package.format import PrefixFile
    ph = R.PLACEHOLDER
    (tmp_path / "_sysconfigdata_x.py").write_bytes(
        b"build_time_vars = {'prefix': '" + ph + b"', 'CONFIG_ARGS': \"'--prefix=" + ph +
        b"'\"}\n")
    (tmp_path / "notes.txt").write_bytes(ph + b"/data\n")
    final = str(tmp_path / "it's web")
    fixup.write_final_paths(str(tmp_path), [PrefixFile("text", "_sysconfigdata_x.py", ph.decode()),
                                            PrefixFile("text", "notes.txt", ph.decode())], final)
    ns: dict = {}
    exec((tmp_path / "_sysconfigdata_x.py").read_text(), ns)
    assert ns["build_time_vars"] == {"prefix": final, "CONFIG_ARGS": f"'--prefix={final}'"}
    assert (tmp_path / "notes.txt").read_text() == final + "/data\n"


# ---- the user's scenarios, with real venvs and the real commands -------------

from helpers import CLI, check_ana_copy, make_ana, run, user_env  # noqa: E402


def test_packed_venv_unpacked_elsewhere_still_reads_its_sibling_data(tmp_path, pkgroot):
    """envs/ana reading envs/ana-data/input.csv, packed and unpacked at un:
    it reads envs/ana-data, not un-data; verify finds no leftover.  (Its
    interpreter package is the session's: the same base interpreter.)"""
    ana = make_ana(str(tmp_path / "envs"))
    root = str(tmp_path / "pkgs")
    os.makedirs(root)
    os.symlink(os.path.join(pkgroot["root"], pkgroot["python"]),
               os.path.join(root, pkgroot["python"]))
    run(CLI + ["pack", ana["venv"], "-o", root, "-n", "ana", "-q"], timeout=900)
    pkgs = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".tar.zst"))
    un = str(tmp_path / "un")
    run(CLI + ["unpack"] + sorted(pkgs, key=lambda p: "ana" in os.path.basename(p)) + [un],
        timeout=600)
    check_ana_copy(un, ana["data"])
    v = run(CLI + ["verify", os.path.join(root, "ana.tar.zst")], timeout=600, check=False)
    assert v.returncode == 0 and "leftover" not in v.stdout + v.stderr, v.stdout + v.stderr


def test_saved_and_loaded_venv_still_reads_its_sibling_data(tmp_path):
    ana = make_ana(str(tmp_path / "envs"))
    env = user_env(tmp_path)
    run(CLI + ["save", "ana", "--venv", ana["venv"], "-q"], env=env, timeout=900)
    un = str(tmp_path / "un")
    run(CLI + ["load", "ana", "--to", un], env=env, timeout=600)
    check_ana_copy(un, ana["data"])


def test_relocate_map_leaves_siblings_of_old_and_of_the_source(tmp_path):
    """--map /x/data-old /x/data-new keeps /x/data-old2; a sibling of the
    source (mapsrc2) is not turned into DEST2."""
    base = str(tmp_path)
    ana = make_ana(os.path.join(base, "envs"), "mapsrc")
    src = ana["venv"]
    with open(os.path.join(src, "share", "settings.ini"), "w") as f:
        f.write(f"[paths]\nold = {base}/data-old/y.csv\nold2 = {base}/data-old2/y.csv\n"
                f"other = {src}2/bin/python\nself = {src}/bin/python\n")
    dest = os.path.join(base, "moved", "mapdest")
    r = run(CLI + ["relocate", src, "-o", dest, "--map", f"{base}/data-old", f"{base}/data-new"],
            timeout=900, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert open(os.path.join(dest, "share", "settings.ini")).read() == (
        f"[paths]\nold = {base}/data-new/y.csv\nold2 = {base}/data-old2/y.csv\n"
        f"other = {src}2/bin/python\nself = {dest}/bin/python\n")
    check_ana_copy(dest, ana["data"])


def migrate_env(tmp_path) -> dict:
    return user_env(tmp_path)


def test_migrate_with_a_sibling_data_directory_makes_a_right_copy(tmp_path):
    """scratch3/ana reads scratch3/ana-data: the copy still reads ana-data
    (so the comparison rightly holds and the source goes); ana-data stays."""
    scratch = str(tmp_path / "scratch3")
    ana = make_ana(scratch)
    new = str(tmp_path / "home" / "venvs")
    r = run(CLI + ["migrate", "-d", scratch, "ana", "--to", new], env=migrate_env(tmp_path),
            timeout=1200, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ana: the copy matches" in r.stdout
    assert not os.path.exists(ana["venv"])
    assert open(os.path.join(ana["data"], "input.csv")).read() == "x,y\n1,42\n"
    check_ana_copy(os.path.join(new, "ana"), ana["data"])


PINNED = '''import os
# works only from where it was installed (the path is built at run time, so
# neither relocation nor the compiler's constant folding ever holds it whole)
BASE = "/".join([{scratch!r}, "ana", ""])
assert os.path.realpath(__file__).startswith(BASE), __file__
'''


def test_migrate_never_removes_the_source_when_the_comparison_fails(tmp_path):
    scratch = str(tmp_path / "scratch3")
    ana = make_ana(scratch)
    with open(os.path.join(ana["site"], "pinned.py"), "w") as f:
        f.write(PINNED.format(scratch=os.path.realpath(scratch)))
    os.makedirs(os.path.join(ana["site"], "pinned-1.0.dist-info"))
    with open(os.path.join(ana["site"], "pinned-1.0.dist-info", "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: pinned\nVersion: 1.0\n")
    with open(os.path.join(ana["site"], "pinned-1.0.dist-info", "top_level.txt"), "w") as f:
        f.write("pinned\n")
    new = str(tmp_path / "home" / "venvs")
    r = run(CLI + ["migrate", "-d", scratch, "ana", "--to", new], env=migrate_env(tmp_path),
            timeout=1200, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "'import pinned' works in the source but fails in the copy" in r.stderr
    assert "the source was kept and the copy removed" in r.stderr
    assert os.path.exists(os.path.join(ana["venv"], "pyvenv.cfg"))
    assert not os.path.exists(os.path.join(new, "ana"))
    assert run([os.path.join(ana["venv"], "bin", "analyse")], timeout=60).stdout == "x,y\n1,42\n"
