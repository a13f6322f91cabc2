"""Byte-level unit tests of the pure relocation functions."""

from python_mpi_bcast.package import prefixes as R


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
    from python_mpi_bcast.packing.relocatable import _relocate_content
    data = b"\x7fELF\0\0/opt/python/3.11.7\0\0"
    prefix_files, kept = [], []
    out = _relocate_content(data, "libpython3.11.so.1.0", "lib/libpython3.11.so.1.0",
                            [b"/opt/python/3.11.7"], b"", [], "lib/python3.11/site-packages",
                            prefix_files, kept)
    assert out is data and prefix_files == [] and kept == ["lib/libpython3.11.so.1.0"]


def test_restore_binary_placeholder_consumes_condas_padding():
    ph = b"/build/_h_env_placehold_placehold"          # what conda-build recorded
    env = b"/home/u/env"                                 # what conda wrote over it
    built = b"\x7fELF\0" + ph + b"/lib\0x\0" + ph + b"/a:" + ph + b"/b\0\xff3.11.7\0"

    def conda_install(data, new):  # conda's padded install-time rewrite
        import re
        return re.sub(re.escape(ph) + rb"([^\0]*?)\0",
                      lambda m: (new + m.group(1).replace(ph, new)).ljust(len(m.group(0)), b"\0"),
                      data)

    installed = conda_install(built, env)
    ours = R.make_placeholder(len(ph))
    assert len(ours) == len(ph) and ours != ph
    out = R.restore_binary_placeholder(installed, env, ours)
    assert out == built.replace(ph, ours)                # every byte back where it was built
    # and the reader's rewrite then writes any tree of up to len(ph) bytes
    tree = b"/dev/shm/x/env-0123"
    assert R.replace_binary_prefix(out, ours, tree) == conda_install(built, tree)


def test_restore_binary_placeholder_refuses_unpadded_strings():
    import pytest
    data = b"\0/home/u/env/lib\0next\0"
    with pytest.raises(ValueError):
        R.restore_binary_placeholder(data, b"/home/u/env", R.make_placeholder(40))
    assert R.restore_binary_placeholder(data, b"/home/u/env", R.make_placeholder(11)) == \
        b"\0" + R.make_placeholder(11) + b"/lib\0next\0"


def test_apply_maps_is_one_pass_longest_first():
    maps = [(b"/fs2", b"/work"), (b"/fs2/home/u", b"/home/u"), (b"/work", b"/other")]
    assert R.apply_maps(b"a=/fs2/home/u/x b=/fs2/y c=/work/z", maps) == \
        b"a=/home/u/x b=/work/y c=/other/z"
    assert R.apply_maps(b"x", []) == b"x"


def test_activation_scripts_get_the_path_quoted_for_their_shell():
    from python_mpi_bcast.package.prefixes import requote_activation, shell_quote
    path = b"/w/it's \"a\" $X `id` \\ !"
    sh = b'VIRTUAL_ENV="' + path + b'"\nexport VIRTUAL_ENV\n'
    assert requote_activation(sh, path, "sh") == \
        b"VIRTUAL_ENV='/w/it'\\''s \"a\" $X `id` \\ !'\nexport VIRTUAL_ENV\n"
    fish = b'set -gx VIRTUAL_ENV "' + path + b'"\n'
    assert requote_activation(fish, path, "fish") == \
        b"set -gx VIRTUAL_ENV '/w/it\\'s \"a\" $X `id` \\\\ !'\n"
    csh = b'setenv VIRTUAL_ENV "' + path + b'"\n'
    assert requote_activation(csh, path, "csh") == \
        b"setenv VIRTUAL_ENV '/w/it'\\''s \"a\" $X `id` \\ '\\!''\n"
    # newer venvs quote with single quotes; a plain path is left as it is
    assert requote_activation(b"V='" + path + b"'\n", path, "sh").startswith(b"V='/w/it'\\''s")
    # venvs with the CVE-2024-9287 fix (Debian 12's python) leave a path that
    # needed no quotes unquoted; relocated into one that does, it gets them
    for shell, line in (("sh", b"VIRTUAL_ENV="), ("fish", b"set -gx VIRTUAL_ENV "),
                        ("csh", b"setenv VIRTUAL_ENV ")):
        assert requote_activation(line + path + b"\n", path, shell) == \
            line + shell_quote(path, shell) + b"\n", shell
    plain = b'VIRTUAL_ENV="/w/caf\xc3\xa9 env"\n'
    assert requote_activation(plain, b"/w/caf\xc3\xa9 env", "sh") == plain
    # csh cannot hold a line break in a word: refused, not mangled
    assert requote_activation(b'setenv V "/a\nb"\n', b"/a\nb", "csh") is None
