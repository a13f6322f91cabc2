"""The launcher builds without libzstd's headers: launcher/zstd-shim/zstd.h
declares the stable API it uses and launcher/zstd-shim/zstd_shim.c loads
libzstd.so.1 at run time.  Both builds must answer every call the same way."""

from __future__ import annotations

import os

import pytest
import zstandard

from support import slurm
from helpers import BIN, REPO, run

CHECK = os.path.join(REPO, "tests", "c", "zstd_api_check.c")
MPICC = os.path.join(BIN, "mpicc")


def frames() -> bytes:
    """Frames of every kind the launcher meets: with and without a content
    size, with a checksum, a skippable frame, several blocks, empty."""
    text = b"".join(b"line %d of a file in a package\n" % i for i in range(40000))
    noise = os.urandom(300000)
    out = [zstandard.ZstdCompressor(level=3).compress(text[:5000])]
    out.append(b"\x5b\x2a\x4d\x18" + (11).to_bytes(4, "little") + b"manifest..\n")
    cctx = zstandard.ZstdCompressor(level=10, write_content_size=False, write_checksum=True)
    out.append(cctx.compress(text + noise))
    out.append(zstandard.ZstdCompressor(level=1).compress(b""))
    chunker = zstandard.ZstdCompressor(level=5).chunker(chunk_size=65536)
    streamed = b"".join(chunker.compress(text)) + b"".join(chunker.finish())
    out.append(streamed)
    return b"".join(out)


def build(tmp_path, name: str, args: list[str]) -> str:
    exe = str(tmp_path / name)
    run([MPICC, "-O1", "-Wall", "-o", exe, CHECK, *args], timeout=120)
    return exe


@pytest.mark.skipif(not os.path.exists("/usr/include/zstd.h"),
                    reason="no system zstd.h to compare the shim with")
def test_shim_and_header_builds_answer_the_same(tmp_path):
    data = tmp_path / "frames.zst"
    data.write_bytes(frames())
    header = build(tmp_path, "with-header", ["-lzstd"])
    shim = build(tmp_path, "with-shim", [
        "-DPMB_ZSTD_DLOPEN=1", "-I", os.path.join(REPO, "launcher", "zstd-shim"),
        "-I", os.path.join(REPO, "launcher"),
        os.path.join(REPO, "launcher", "zstd-shim", "zstd_shim.c"),
        "-ldl"])
    assert "libzstd" not in run(["ldd", shim], timeout=30).stdout
    a = run([header, str(data)], timeout=60).stdout
    b = run([shim, str(data)], timeout=60).stdout
    assert a == b
    # the calls really happened: five frames, errors reported by name
    assert a.count("frame ") >= 5 and "skippable" in a and "content size unknown" in a
    assert "error Destination buffer is too small" in a and "freeDStream NULL: 0" in a


def test_missing_libzstd_is_one_line_naming_the_package(tmp_path):
    data = tmp_path / "frames.zst"
    data.write_bytes(frames())
    shim = build(tmp_path, "with-shim", [
        "-DPMB_ZSTD_DLOPEN=1", "-I", os.path.join(REPO, "launcher", "zstd-shim"),
        "-I", os.path.join(REPO, "launcher"),
        os.path.join(REPO, "launcher", "zstd-shim", "zstd_shim.c"),
        "-ldl"])
    lib = run(["sh", "-c", "ldconfig -p | grep -m1 'libzstd.so.1 ' | sed 's/.*=> //'"],
              timeout=30).stdout.strip()
    how = slurm.mount_propagation() if os.geteuid() == 0 else None
    if not lib or how is None:
        pytest.skip("needs libzstd.so.1 in the loader cache and a private mount namespace (root)")
    # hide the library inside a private mount namespace
    r = run(["unshare", "-m", "--propagation", how, "sh", "-c",
             f'mount --bind /dev/null "{lib}" && exec "$0" "$1"', shim, str(data)],
            timeout=60, check=False)
    assert r.returncode == 3, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cannot load libzstd.so.1" in lines[0] and "libzstd1 (Debian, Ubuntu)" in lines[0]
