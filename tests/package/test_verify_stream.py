"""``verify`` without ``--into`` writes nothing: the launcher's unpacker
checks the package without creating anything (``python-mpi --pmb-unpack
--check``) while verify decodes the same frames and scans each member for
leftover source paths as it goes; one SHA-256 pass (the unpacker's), whose
failure is still the line verify gives for a damaged shard.  (The hostile
packages the readers refuse, verify refuses too, and its scan of the
stream reports what a scan of the unpacked tree reports: test_hostile.py.)"""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import CLI, run
from python_mpi_bcast.package.format import read_manifest


def test_verify_of_real_packages_with_tmpdir_on_a_tiny_tmpfs_writes_nothing(pkgroot, tmp_path):
    """TMPDIR on a tmpfs of 1 MB and 8 inodes, far less than either package
    unpacks to: verify of the interpreter and of the numpy venv succeeds and
    leaves that tmpfs empty (it used to unpack there: 'no space left')."""
    from helpers import PRIVATE, UNSHARE_MOUNT
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    pkgs = [os.path.join(pkgroot["root"], pkgroot[k]) for k in ("python", "env")]
    verify = " && ".join(" ".join(CLI + ["verify", p]) for p in pkgs)
    r = run(UNSHARE_MOUNT + [PRIVATE + f"mount -t tmpfs -o size=1m,nr_inodes=8 tmpfs {small} && "
                             f"TMPDIR={small} && export TMPDIR && {verify} && "
                             f"echo left: $(ls -A {small})"],
            timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    oks = [ln for ln in lines if ": OK (" in ln]
    assert len(oks) == 2, r.stdout
    for p, line in zip(pkgs, oks):
        m = read_manifest(p)[0]
        assert line.startswith(f"{p}: OK ({m.files} files, {m.unpacked_size} bytes"), line
    assert lines[-1] == "left:", r.stdout


def _flip(pkg: str, out, shard: int = 0) -> str:
    m, start = read_manifest(pkg)
    data = bytearray(open(pkg, "rb").read())
    data[start + m.shards[shard].offset + m.shards[shard].csize // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return str(out)


def test_a_damaged_shard_is_reported_by_its_sha256_with_or_without_into(tmp_path):
    """A flipped byte in the middle of a frame: the unpacker's zstd decoder
    fails first, but verify (checking, or unpacking with --into) finishes
    the shard's SHA-256 and reports that, in the words it always used."""
    src = tmp_path / "data"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}.txt").write_text(f"{i} " * 5000)
    run(CLI + ["pack", "--directory", str(src), "-o", str(tmp_path), "-n", "d", "-q",
               "--shard-size", "64k"], timeout=120)
    pkg = str(tmp_path / "d.tar.zst")
    assert len(read_manifest(pkg)[0].shards) > 3
    bad = _flip(pkg, tmp_path / "bad.tar.zst", shard=1)
    for extra in ([], ["--into", str(tmp_path / "kept")]):
        r = run(CLI + ["verify", bad] + extra, timeout=120, check=False)
        assert r.returncode == 1, r.stdout
        assert r.stderr == (f"python-mpi-bcast: error: {bad}: corrupt package (shard 1 fails "
                            f"its SHA-256 check)\n"), r.stderr
    assert not (tmp_path / "kept").exists()
    # unpack, like the launcher, says what its decoder found
    r = run(CLI + ["unpack", bad, str(tmp_path / "u")], timeout=120, check=False)
    assert r.returncode == 1 and "corrupt package: shard 1 fails its check (zstd" in r.stderr


class _Endless:
    """A decoded stream: ``head``, then zeros for ever; counts what is read."""

    def __init__(self, head: bytes):
        self.head, self.served = head, 0

    def read(self, n: int) -> bytes:
        out = self.head[self.served:self.served + n]
        out += bytes(n - len(out))
        self.served += n
        return out


@pytest.mark.parametrize("size", [b"77777777777\0", b"%011o\0" % ((1 << 20) + 1)])
def test_the_stream_reader_never_buffers_a_pax_header_over_the_unpackers_cap(size):
    """A pax header declaring more than the unpacker's 1 MiB cap (PMB_MAX_PAX)
    is dropped at its header, whatever the unpacker beside it has said so
    far: verify's reader used to buffer any declared size (1 GB for a 37 KB
    package declaring 8 GiB, or a MemoryError traceback under ulimit -v)."""
    from python_mpi_bcast.package.verify import CHUNK, _Tar
    h = bytearray(512)
    h[0:14] = b"././@PaxHeader"
    h[124:136] = size
    h[156:157] = b"x"
    h[257:265] = b"ustar\x0000"
    stream = _Endless(bytes(h))
    tar = _Tar(stream, refused=lambda: False)
    with pytest.raises(ValueError, match="pax header of"):
        list(tar.members())
    assert stream.served <= CHUNK, stream.served
