"""benchmarks/filecalls.py, the strace parser the benchmarks, the quick start
and tests/launcher/test_no_writes.py count with: strace lines as strace 6 writes them
(``-ff -y``), one promise per test; then one real trace."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from helpers import REPO, run

import filecalls


def call(line: str, cwd: str = "/start"):
    c, _ = filecalls.parse_line(line, cwd)
    return c


def test_relative_paths_resolve_against_the_directory_strace_names():
    c = call('openat(AT_FDCWD</work/job>, "./ucx.conf", O_RDONLY) = -1 ENOENT (No such file)')
    assert c.paths == ["/work/job/ucx.conf"] and c.ret == -1 and not c.ok
    c = call('newfstatat(36</t/lib/python3.11>, "json", {st_mode=S_IFDIR|0755, ...}, '
             'AT_SYMLINK_NOFOLLOW) = 0')
    assert c.paths == ["/t/lib/python3.11/json"] and c.ok
    # an absolute path ignores the directory; "" with AT_EMPTY_PATH is the fd's file
    assert call('openat(-1, "/sys/devices/system/cpu/possible", O_RDONLY) = 9</sys/x>').paths \
        == ["/sys/devices/system/cpu/possible"]
    assert call('newfstatat(6</usr/lib/libc.so.6>, "", {st_mode=S_IFREG|0755, ...}, '
                'AT_EMPTY_PATH) = 0').paths == ["/usr/lib/libc.so.6"]
    # no directory named: the task's cwd as last seen
    assert call('stat("data/x", 0x7ffc) = -1 ENOENT (No such file)', "/home/u").paths == \
        ["/home/u/data/x"]


def test_the_cwd_carries_from_line_to_line():
    _, cwd = filecalls.parse_line('openat(AT_FDCWD</proj>, "/etc/x", O_RDONLY) = 3</etc/x>', "/")
    assert cwd == "/proj"
    _, cwd = filecalls.parse_line('chdir("/scratch/run") = 0', cwd)
    assert cwd == "/scratch/run"


def test_only_strings_that_are_paths_count():
    # readlink's second string is the link's content, execve's array is argv
    assert call('readlink("/work/venv", 0x7ffc, 1023) = -1 EINVAL (Invalid argument)').paths == \
        ["/work/venv"]
    assert call('readlinkat(AT_FDCWD</a>, "/proc/self/exe", "/opt/bin/python-mpi", 4096) = 19'
                ).paths == ["/proc/self/exe"]
    assert call('execve("/v/bin/python-mpi", ["/v/bin/python-m"..., "/other/arg"], 0x3c /* 47 '
                'vars */) = 0').paths == ["/v/bin/python-mpi"]
    # a symlink's target is text; only the link is created
    assert call('symlinkat("../lib", AT_FDCWD</t>, "lib64") = 0').paths == ["/t/lib64"]
    # rename names two paths
    assert call('renameat2(AT_FDCWD</n>, ".tmp-1", AT_FDCWD</n>, "env-1", RENAME_NOREPLACE) = 0'
                ).paths == ["/n/.tmp-1", "/n/env-1"]
    # commas and quotes inside a string do not split arguments
    assert call(r'openat(AT_FDCWD</d>, "a, \"b\"", O_RDONLY) = -1 ENOENT (x)').paths == \
        ['/d/a, "b"']


def test_reads_give_bytes_not_paths_from_their_data():
    c = call('read(3</pkgs/env.tar.zst>, "(\\265/\\375"..., 16777216) = 16777216')
    assert c.name == "read" and c.paths == ["/pkgs/env.tar.zst"] and c.nbytes == 16777216
    assert call('read(5<pipe:[1234]>, "x", 1) = 1').paths == []


def test_what_counts_as_a_write():
    assert call('openat(AT_FDCWD</t>, "x.pyc", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</t/x.pyc>'
                ).modifies()
    assert call('openat(AT_FDCWD</t>, "db", O_RDWR|O_CLOEXEC) = 3</t/db>').modifies()
    assert not call('openat(AT_FDCWD</t>, "x.pyc", O_RDONLY|O_CLOEXEC) = 3</t/x.pyc>').modifies()
    for line in ('mkdir("/t/__pycache__", 0777) = 0', 'unlink("/t/a") = 0',
                 'fchmod(3</t/a>, 0600) = 0', 'utimensat(AT_FDCWD</t>, "a", NULL, 0) = 0'):
        assert call(line).modifies(), line
    assert not call('access("/t/a", W_OK) = 0').modifies()


def test_places_are_checked_in_order_and_parents_go_to_the_place_below_them():
    places = [("tree", "/dev/shm/n/env-1"), ("MPI library", "/sw/mpich/lib")]
    where = lambda p: filecalls.place_of(p, places, "/home/u/run", "/home/u")  # noqa: E731
    assert where("/dev/shm/n/env-1/lib/python3.11/os.py") == "tree"
    assert where("/sw/mpich/lib/libmpi.so.12") == "MPI library"
    assert where("/sw/mpich") == "MPI library"  # realpath() on the way to it
    assert where("/home/u/run/./ucx.conf".replace("/./", "/")) == "cwd"
    assert where("/home/u/.local/lib") == "home"
    assert where("/etc/ld.so.cache") == "loader + system libs"
    assert where("/lib/x86_64-linux-gnu/libc.so.6") == "loader + system libs"
    assert where("/proc/self/maps") == "os"
    assert where("/opt/mpich/etc/ucx.conf") == "other"
    assert not filecalls.under("/dev/shm/n/env-10", "/dev/shm/n/env-1")


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed")
def test_a_real_trace_groups_calls_by_program_and_counts_roots(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    (d / "f").write_text("hello")
    script = f"cat {d}/f > /dev/null; ls {d}/nothere 2>/dev/null; true"
    tasks = filecalls.trace(["sh", "-c", script], workdir=str(tmp_path), timeout=60)
    owners = filecalls.by_program(tasks)
    progs = sorted(os.path.basename(p) for _, p in owners)
    assert "cat" in progs and "ls" in progs, progs
    calls, procs, nbytes = filecalls.count_roots(tasks, [str(d)])
    assert calls >= 2 and procs == 2 and nbytes == 5
    assert filecalls.writes_under(tasks, str(d)) == []
    # the command line: a table, and one line of error for a command that is not there
    r = run([sys.executable, os.path.join(REPO, "benchmarks", "filecalls.py"), "count", "--total",
             "--root", str(d), "--", "sh", "-c", script], timeout=60)
    assert r.stdout.strip() == str(calls)
    r = run([sys.executable, os.path.join(REPO, "benchmarks", "filecalls.py"), "count", "--",
             str(tmp_path / "nothing")], timeout=60, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "filecalls.py: error:" in r.stderr
