"""The cross-cutting helpers of python_mpi_bcast/support/, each written once:
an OS error as one line (a full device says what to free), an atomic write,
and running a helper program with its failure as one line."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from python_mpi_bcast.support.errors import PmbError, os_error
from python_mpi_bcast.support.files import write_atomic
from python_mpi_bcast.support.proc import run_checked


def test_a_full_device_names_what_was_being_done_and_what_to_free():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/f")
    assert str(os_error(e, "writing /x/out", "free space in /x")) == \
        "no space left on device while writing /x/out; free space in /x"
    assert str(os_error(e, "relocating /s", "free space there", full_doing="copying /s into /d",
                        name_file=True)) == \
        "no space left on device while copying /s into /d; free space there"


def test_any_other_os_error_gives_the_reason_and_on_request_the_file():
    e = OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/f")
    assert str(os_error(e, "writing /x/out", "free space")) == \
        f"writing /x/out: {os.strerror(errno.EACCES)}"
    assert str(os_error(e, "relocating /s", "free space", name_file=True)) == \
        f"relocating /s: {os.strerror(errno.EACCES)} (/x/f)"


def test_an_atomic_write_replaces_the_whole_file_with_the_mode_open_gives(tmp_path):
    p = tmp_path / "rec.json"
    p.write_text("old\n")
    write_atomic(str(p), "new\n")
    assert p.read_text() == "new\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    write_atomic(str(p), b"bytes", chmod=0o600)
    assert p.read_bytes() == b"bytes" and p.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["rec.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "rec.json"
    p.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(str(p), "half \udcff")  # not encodable: fails while writing
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["rec.json"]


def test_a_failing_helper_is_one_line_with_the_last_line_it_said():
    with pytest.raises(PmbError) as ei:
        run_checked([sys.executable, "-c", "import sys; sys.stderr.write('first\\nlast\\n'); "
                     "sys.exit(3)"], 60, failed="the helper failed", too_slow="slow")
    assert str(ei.value) == "the helper failed: last"
    with pytest.raises(PmbError) as ei:
        run_checked([sys.executable, "-c", "import sys; sys.exit(3)"], 60, failed="quiet",
                    too_slow="slow", silent="no output")
    assert str(ei.value) == "quiet: no output"
    with pytest.raises(PmbError) as ei:
        run_checked([sys.executable, "-c", "import sys; sys.stderr.write('a\\nb\\n'); "
                     "sys.exit(1)"], 60, failed="all of it", too_slow="slow", whole_stderr=True)
    assert str(ei.value) == "all of it: a\nb"
    assert run_checked([sys.executable, "-c", "print('out')"], 60, failed="f",
                       too_slow="s").stdout == "out\n"


def test_a_helper_that_hangs_or_cannot_start_is_one_line(tmp_path):
    with pytest.raises(PmbError) as ei:
        run_checked([sys.executable, "-c", "import time; time.sleep(30)"], 0.5,
                    failed="f", too_slow="the helper did not answer within 0.5 s")
    assert str(ei.value) == "the helper did not answer within 0.5 s"
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(PmbError) as ei:
        run_checked([missing], 60, failed="f", too_slow="s", cannot_run=f"cannot run {missing}")
    assert str(ei.value) == f"cannot run {missing}: {os.strerror(errno.ENOENT)}"
    with pytest.raises(FileNotFoundError):  # without cannot_run the OSError goes up as before
        run_checked([missing], 60, failed="f", too_slow="s")
