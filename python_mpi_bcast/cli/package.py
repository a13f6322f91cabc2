"""``inspect``, ``verify``, ``unpack``: read a package file."""

from __future__ import annotations

import json

from ..support.errors import PmbError


def add_inspect(sub) -> None:
    ins = sub.add_parser("inspect", help="show a package's manifest")
    ins.add_argument("package")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)


def add_verify(sub) -> None:
    ver = sub.add_parser("verify", help="check a package's hashes and scan for leftover paths")
    ver.add_argument("package")
    ver.add_argument("--into", metavar="DIR",
                     help="unpack into DIR (which must not exist) and keep the tree there "
                          "(default: check and scan without writing anything)")
    ver.set_defaults(func=cmd_verify)


def add_unpack(sub) -> None:
    up = sub.add_parser("unpack", help="unpack packages (in order) into one directory")
    up.add_argument("packages", nargs="+", metavar="PKG")
    up.add_argument("dest", metavar="DEST")
    up.add_argument("-f", "--force", action="store_true", help="replace DEST if it exists")
    up.set_defaults(func=cmd_unpack)


def cmd_inspect(a) -> int:
    from ..package.verify import inspect
    m = inspect(a.package)
    if a.json:
        print(json.dumps(m.to_dict(), indent=2))
        return 0
    print(f"package:       {a.package}")
    for key in ("name", "kind", "python", "abi", "platform", "libpython", "executable",
                "site_dir", "files", "unpacked_size", "payload_size", "content_hash",
                "created_by"):
        value = getattr(m, key)
        if value != "":
            print(f"{key + ':':<14} {value}")
    print(f"{'shards:':<14} {len(m.shards) - 1} (+ tar end frame)")
    if m.parts:
        print(f"{'split files:':<14} {len({p.path for p in m.parts})} (across "
              f"{len(m.parts)} more shards; format version 3)")
    print(f"{'prefix files:':<14} {len(m.prefix_files)}")
    for p in m.prefix_files:
        print(f"  {p.mode:<6} {p.path}")
    return 0


def cmd_verify(a) -> int:
    from ..package.verify import verify
    from ..package.format import read_manifest
    m = read_manifest(a.package)[0]
    res = verify(a.package, m.sources.split(":") if m.sources else [], into=a.into)
    if res.leftovers:
        for name in res.leftovers[:20]:
            print(f"leftover source path in: {name}")
        raise PmbError(f"{a.package}: {len(res.leftovers)} files still refer to the "
                       f"source location ({m.sources}); repack with this version")
    if res.compiled_in:
        print(f"{len(res.compiled_in)} binary file(s) keep a compiled-in path of the source "
              f"as a fallback (not used when relocated): {', '.join(res.compiled_in[:5])}")
    print(f"{a.package}: OK ({res.files} files, {res.unpacked_size} bytes, "
          f"{len(m.shards) - 1} shards, hash {m.content_hash[:16]})")
    return 0


def cmd_unpack(a) -> int:
    from ..package.unpack import unpack
    unpack(a.packages, a.dest, force=a.force)
    print(a.dest)
    return 0
