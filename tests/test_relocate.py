"""Byte-level unit tests of the pure relocation functions."""

from python_mpi_bcast import relocate as R


def test_shebang_detected_only_for_python_under_prefix():
    prefixes = [b"/home/u/venv"]
    assert R.python_shebang_target(b"#!/home/u/venv/bin/python3.11\nimport x\n", prefixes) == b"python3.11"
    assert R.python_shebang_target(b"#!/usr/bin/python3\n", prefixes) is None
    assert R.python_shebang_target(b"#!/home/u/venv/bin/bash\n", prefixes) is None
    assert R.python_shebang_target(b"no shebang", prefixes) is None
    # a prefix that is only a string prefix of another directory does not match
    assert R.python_shebang_target(b"#!/home/u/venv2/bin/python\n", prefixes) is None


def test_rewrite_shebang_is_valid_sh_and_python():
    src = b"#!/old/venv/bin/python3\n# -*- coding: utf-8 -*-\nimport sys\n"
    out = R.rewrite_shebang(src)
    assert out.startswith(b"#!/bin/sh\n'''exec' ")
    assert out.endswith(b"# -*- coding: utf-8 -*-\nimport sys\n")
    assert b"/old/venv" not in out
    compile(out, "script", "exec")  # still valid Python


def test_rewrite_shebang_keeps_options():
    out = R.rewrite_shebang(b"#!/old/bin/python3 -E\nprint(1)\n")
    assert b'/python3" -E "$0"' in out


def test_relativize_pth():
    site = b"/v/lib/python3.11/site-packages"
    data = b"# comment\nimport os; os.environ\n/v/lib/python3.11/site-packages/sub\n/v/src/pkg\n/elsewhere/x\nrel/dir\n"
    out, foreign = R.relativize_pth(data, site, [b"/v"], b"lib/python3.11/site-packages")
    lines = out.split(b"\n")
    assert lines[2] == b"sub"
    assert lines[3] == b"../../../src/pkg"
    assert lines[4] == b"/elsewhere/x"
    assert lines[5] == b"rel/dir"
    assert foreign == [b"/elsewhere/x"]


def test_replace_text_prefix():
    assert R.replace_text_prefix(b"a /old/p b /old/p/x", b"/old/p", b"/new") == b"a /new b /new/x"


def test_replace_binary_prefix_pads_with_nul_and_keeps_length():
    old = b"/old/prefix/long"
    data = b"\x01\x02" + old + b"/lib\0tail\0" + old + b"\0\xff"
    out = R.replace_binary_prefix(data, old, b"/new")
    assert len(out) == len(data)
    assert out.startswith(b"\x01\x02/new/lib\0")
    assert b"tail\0/new\0" in out
    assert out.endswith(b"\xff")
    assert old not in out


def test_replace_binary_prefix_refuses_longer():
    import pytest
    with pytest.raises(ValueError):
        R.replace_binary_prefix(b"/a\0", b"/a", b"/longer")


def test_relocate_record():
    site = b"/v/lib/python3.11/site-packages"
    data = b"pkg/__init__.py,sha256=x,10\n/v/bin/tool,sha256=y,20\n../../../bin/pip,,\n"
    out = R.relocate_record(data, site, [b"/v"])
    assert out == b"pkg/__init__.py,sha256=x,10\n../../../bin/tool,sha256=y,20\n../../../bin/pip,,\n"


def test_is_binary_and_elf():
    assert R.is_binary(b"a\0b") and not R.is_binary(b"text")
    assert R.is_elf(b"\x7fELF\x02") and not R.is_elf(b"#!/bin/sh")


def test_rebase_record_for_a_site_dir_at_another_depth():
    data = b"numpy/__init__.py,sha256=x,1\n../../../bin/f2py,sha256=y,2\n"
    out = R.rebase_record(data, b"lib/python3.11/site-packages", b"local/lib/python3.11/dist-packages")
    assert out == b"numpy/__init__.py,sha256=x,1\n../../../../bin/f2py,sha256=y,2\n"
    assert R.rebase_record(data, b"a/b", b"a/b") is data


def test_padded_binary_rewrite_cuts_a_tail_merged_string():
    """Why binaries of an interpreter or venv are never rewritten: a linker
    stores "3.11.7" as the tail of "/opt/python/3.11.7" and points into it;
    the padded rewrite of the prefix moves that tail and leaves a NUL where
    the version string starts."""
    data = b"\0/opt/python/3.11.7\0"
    version_at = data.index(b"3.11.7")
    out = R.replace_binary_prefix(data, b"/opt/python/3.11.7", b"/scr/t")
    assert out[version_at:].split(b"\0")[0] != b"3.11.7"


def test_binary_holding_an_old_prefix_is_kept_and_not_recorded():
    from python_mpi_bcast.fixup import _relocate_content
    data = b"\x7fELF\0\0/opt/python/3.11.7\0\0"
    prefix_files, kept = [], []
    out = _relocate_content(data, "libpython3.11.so.1.0", "lib/libpython3.11.so.1.0",
                            [b"/opt/python/3.11.7"], b"", [], "lib/python3.11/site-packages",
                            prefix_files, kept)
    assert out is data and prefix_files == [] and kept == ["lib/libpython3.11.so.1.0"]
