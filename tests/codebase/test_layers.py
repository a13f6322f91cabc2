"""The package's folders are its layers and imports only go down:

    support -> source -> package -> packing -> launch, envs -> cli

A module may import from its own folder or from a lower one, never from a
higher one nor from a sibling of the same height (launch and envs do not
import each other), and no set of modules imports itself around a circle.
The walk reads every import of every module with ``ast``, function-local
ones included (they are how circles hid before).  The checker is proven to
fail on a small package written to tmp_path with a planted upward import, a
sibling import and a circle.

The C launcher (launcher/*.c) is layered the same way (see launcher/pmb.h):
each file is compiled and ``nm`` says which file's symbols it uses; a file
may use only files of lower layers, each through that file's header.

The tests keep the same kind of order: what several test modules share is in
tests/helpers.py (machinery in tests/support/), and no test, helper or
benchmark module imports a test module (checked the same way, and proven to
fail on a planted import)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess

import pytest

import python_mpi_bcast
from helpers import BIN, REPO

#: the height of each folder; the package's own __init__ (the version) is
#: below everything and imports nothing, __main__ is the top
LAYERS = {"support": 0, "source": 1, "package": 2, "packing": 3, "launch": 4, "envs": 4, "cli": 5}


def _modules(root: str, name: str) -> dict[str, str]:
    """{dotted module name: file} of the package at ``root`` named ``name``."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for fn in files:
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, fn), root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join([name] + rel)] = os.path.join(d, fn)
    return out


def _imports(mod: str, path: str, modules: dict[str, str], name: str) -> set[str]:
    """The package's modules that ``mod`` imports, anywhere in its body."""
    is_pkg = os.path.basename(path) == "__init__.py"
    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
    found = set()
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == name or a.name.startswith(name + "."):
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == name or target.startswith(name + ".")):
                continue
            for a in node.names:  # 'from pkg import mod' names a module, else a name in pkg
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return found


def _height(mod: str, name: str) -> tuple[str, float]:
    parts = mod.split(".")
    if len(parts) == 1:
        return "", -1            # the package's __init__: the version, imports nothing
    if parts[1] == "__main__":
        return "__main__", 99
    if parts[1] not in LAYERS:
        return parts[1], None
    return parts[1], LAYERS[parts[1]]


def layer_violations(root: str, name: str) -> list[str]:
    """Every upward, sideways or circular import in the package at ``root``,
    one line each (empty: the layers hold)."""
    modules = _modules(root, name)
    graph = {m: _imports(m, p, modules, name) - {m} for m, p in modules.items()}
    bad = []
    for m in sorted(graph):
        folder, h = _height(m, name)
        if h is None:
            bad.append(f"{m}: folder '{folder}' is not a layer (add it to LAYERS)")
            continue
        for t in sorted(graph[m]):
            tfolder, th = _height(t, name)
            if th is None:
                continue  # reported as its own module
            if h == -1:
                bad.append(f"{m} imports {t}: the package's __init__ imports nothing")
            elif tfolder == folder:
                continue  # same folder: only circles are wrong, found below
            elif th > h:
                bad.append(f"{m} imports {t}: upward ({folder} -> {tfolder})")
            elif th == h:
                bad.append(f"{m} imports {t}: sideways between sibling layers "
                           f"({folder} -> {tfolder})")
    return bad + circles(graph)


def circles(graph: dict) -> list[str]:
    """Every circle a depth-first search meets (a back edge), as
    "circle: a -> b -> a", in the graph {node: nodes it uses}."""
    found: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                found.append("circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_the_package_imports_only_down_its_layers():
    root = os.path.dirname(python_mpi_bcast.__file__)
    assert layer_violations(root, "python_mpi_bcast") == []
    # the walk sees the package: every layer folder is there and has modules
    folders = {m.split(".")[1] for m in _modules(root, "python_mpi_bcast") if m.count(".")}
    assert set(LAYERS) <= folders


def _write(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = root / "toy" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in LAYERS:
        (root / "toy" / d).mkdir(parents=True, exist_ok=True)
        (root / "toy" / d / "__init__.py").touch()
    (root / "toy" / "__init__.py").write_text("__version__ = '0'\n")
    return str(root / "toy")


GOOD = {
    "support/errors.py": "class E(Exception):\n    pass\n",
    "support/paths.py": "from .errors import E\n",
    "package/format.py": "from ..support.errors import E\nfrom .. import __version__\n",
    "launch/run.py": "from ..package import format\nfrom ..support import paths\n",
    "envs/saved.py": "import toy.package.format\n",
    "cli/__init__.py": "def main():\n    from ..launch.run import x\n    from ..envs import saved\n",
    "__main__.py": "from .cli import main\n",
}


def test_the_checker_passes_a_package_that_imports_down(tmp_path):
    assert layer_violations(_write(tmp_path, GOOD), "toy") == []


@pytest.mark.parametrize("where, text, expected", [
    # an upward import hidden in a function body
    ("support/paths.py", "def f():\n    from ..launch.run import x\n",
     "toy.support.paths imports toy.launch.run: upward (support -> launch)"),
    # the same by absolute name, at module level
    ("package/format.py", "import toy.cli\n",
     "toy.package.format imports toy.cli: upward (package -> cli)"),
    # 'from .. import envs' names the subpackage envs
    ("source/pyinfo.py", "from .. import envs\n",
     "toy.source.pyinfo imports toy.envs: upward (source -> envs)"),
    # sibling layers of one height
    ("launch/run.py", "def f():\n    from ..envs.saved import load_record\n",
     "toy.launch.run imports toy.envs.saved: sideways between sibling layers (launch -> envs)"),
    # a folder nobody placed
    ("extras/x.py", "", "toy.extras.x: folder 'extras' is not a layer (add it to LAYERS)"),
])
def test_the_checker_fails_on_a_planted_wrong_import(tmp_path, where, text, expected):
    files = dict(GOOD)
    files[where] = files.get(where, "") + text
    bad = layer_violations(_write(tmp_path, files), "toy")
    assert expected in bad, bad


def test_the_checker_fails_on_a_circle_inside_one_layer(tmp_path):
    # the shape of the old cache.py <-> run.py: both imports are inside functions
    files = dict(GOOD)
    files["package/store.py"] = "def f():\n    from .unpack import g\n"
    files["package/unpack.py"] = "def g():\n    from . import store\n"
    bad = layer_violations(_write(tmp_path, files), "toy")
    assert bad == ["circle: toy.package.store -> toy.package.unpack -> toy.package.store"], bad


# -- the C launcher ------------------------------------------------------------

#: the launcher's files by layer, top first; a file uses only lower layers
C_LAYERS = [
    ("main", "exec_shim"),          # python-mpi; the shim an exec'd interpreter preloads
    ("tools",),                     # the helper modes (--pmb-unpack, --pmb-info, ...)
    ("start",),                     # embed / exec
    ("stage",),                     # MPI distribution, node directories
    ("nodes",),                     # holds on trees, reclaiming
    ("mpilib",),                    # mpi4py finds the launcher's MPI
    ("threads",),                   # the unpacking threads, shard assignment
    ("unpack",),                    # zstd + tar into the tree
    ("manifest", "config", "comm"),  # package headers, settings, waiting on MPI
    ("zstd_shim", "sha256"),        # libzstd loaded at run time; SHA-256
    ("util", "own", "shim_blob"),   # errors, I/O, allocation; MPI as the program sees it
]
#: the header through which a file's functions are used (None: data only)
C_HEADERS = {"util": "pmb.h", "zstd_shim": "zstd.h", "shim_blob": None}
#: C library functions the exec shim stands in for inside an exec'd
#: interpreter: a launcher file that calls one calls the C library's
C_INTERPOSED = {"_exit", "exit", "__libc_start_main"}


def _c_symbols(src: str, out: str) -> tuple[dict, dict, dict]:
    """Compile every launcher file under ``src`` into ``out``: ({symbol:
    defining file}, {file: symbols it uses}, {file: headers it includes})."""
    defined, used, includes = {}, {}, {}
    blob = os.path.join(out, "empty-shim.so")
    open(blob, "wb").close()
    for d, _, files in os.walk(src):
        for fn in sorted(files):
            if not fn.endswith(".c"):
                continue
            name, path = fn[:-2], os.path.join(d, fn)
            obj = os.path.join(out, name + ".o")
            r = subprocess.run(
                [os.path.join(BIN, "mpicc"), "-std=gnu11", "-O0", "-c", "-DPMB_ZSTD_DLOPEN=1",
                 f'-DPMB_EXEC_SHIM_FILE="{blob}"', "-I", os.path.join(src, "zstd-shim"),
                 "-I", src, path, "-o", obj], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            nm = subprocess.run(["nm", obj], capture_output=True, text=True, timeout=60,
                                check=True).stdout
            used[name] = set()
            for line in nm.splitlines():
                f = line.split()
                if len(f) == 2 and f[0] == "U":
                    used[name].add(f[1])
                elif len(f) == 3 and f[1] in "TDBRVWGSCu" and f[2] not in C_INTERPOSED:
                    defined[f[2]] = name
            includes[name] = _c_includes(path)
    # what a launcher header includes counts as included (each includes pmb.h)
    for name, inc in includes.items():
        for h in list(inc):
            if os.path.exists(os.path.join(src, h)):
                inc |= _c_includes(os.path.join(src, h))
    return defined, used, includes


def _c_includes(path: str) -> set[str]:
    with open(path) as f:
        return set(re.findall(r'^#include [<"](?:\.\./)?([\w.]+)[>"]', f.read(), re.M))


def c_layer_violations(src: str, out: str) -> list[str]:
    """Every use of a file of the same or a higher layer, every use of a
    lower file without its header, and every circle among the launcher
    files under ``src`` (empty: the layers hold)."""
    height = {n: len(C_LAYERS) - i for i, names in enumerate(C_LAYERS) for n in names}
    defined, used, includes = _c_symbols(src, out)
    graph: dict[str, dict[str, set]] = {n: {} for n in used}
    for n, syms in used.items():
        for s in syms:
            t = defined.get(s)
            if t and t != n:
                graph[n].setdefault(t, set()).add(s)
    bad = []
    for n in sorted(graph):
        if n not in height:
            bad.append(f"{n}.c: not a layer (add it to C_LAYERS)")
            continue
        for t, syms in sorted(graph[n].items()):
            what = f"{n}.c uses {t}.c ({', '.join(sorted(syms))})"
            if t not in height:
                continue  # reported as its own file
            if height[t] > height[n]:
                bad.append(f"{what}: upward ({n} -> {t})")
            elif height[t] == height[n]:
                bad.append(f"{what}: sideways in one layer ({n} -> {t})")
            else:
                header = C_HEADERS.get(t, t + ".h")
                if header and header not in includes[n]:
                    bad.append(f"{what} without #include \"{header}\"")
    return bad + circles(graph)


def test_the_launcher_calls_only_down_its_layers(tmp_path):
    src = os.path.join(REPO, "launcher")
    assert c_layer_violations(src, str(tmp_path)) == []
    # the check sees the launcher: every file of every layer was compiled
    compiled = {f[:-2] for f in os.listdir(tmp_path) if f.endswith(".o")}
    assert compiled == {n for names in C_LAYERS for n in names}


def test_the_launcher_check_fails_on_planted_wrong_calls(tmp_path):
    src = tmp_path / "launcher"
    shutil.copytree(os.path.join(REPO, "launcher"), src)
    plants = {
        # an upward call: the bottom layer into staging (a circle, as util.c
        # into threads.c's pmb_thread_die once was)
        "util.c": '#include "stage.h"\nvoid pmb_planted_up(void) { pmb_stage(0, 0, 0, 0); }\n',
        # a call down without the layer's header (declared by hand)
        "mpilib.c": "int pmb_threads_local(void);\n"
                    "int pmb_planted_hidden(void) { return pmb_threads_local(); }\n",
        # a sideways call inside one layer
        "config.c": '#include "manifest.h"\n'
                    'const char *pmb_planted_side(void) { return pmb_path_problem("a", 1); }\n',
    }
    for fn, text in plants.items():
        with open(src / fn, "a") as f:
            f.write(text)
    (src / "extra.c").write_text("int pmb_planted_extra;\n")
    out = tmp_path / "obj"
    out.mkdir()
    bad = c_layer_violations(str(src), str(out))
    expected = [
        "util.c uses stage.c (pmb_stage): upward (util -> stage)",
        'mpilib.c uses threads.c (pmb_threads_local) without #include "threads.h"',
        "config.c uses manifest.c (pmb_path_problem): sideways in one layer (config -> manifest)",
        "extra.c: not a layer (add it to C_LAYERS)",
    ]
    for line in expected:
        assert line in bad, bad
    # and the upward call closes a circle through staging and util
    circles = [b for b in bad if b.startswith("circle: ")]
    assert circles and all("stage" in c and "util" in c for c in circles), bad
    assert sorted(bad) == sorted(expected + circles), bad


# ---- the tests: helpers in tests/helpers.py, machinery in tests/support/ -----

def imports_of_test_modules(paths: list[str]) -> list[str]:
    """Every import of a test module (test_*, conftest) by another file of
    ``paths``, one line each: what tests share lives in tests/helpers.py
    (machinery in tests/support/), so reading one test module never means
    reading another."""
    bad = []
    for path in sorted(paths):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top.startswith("test_") or top == "conftest":
                    bad.append(f"{os.path.basename(path)}:{node.lineno} imports {n}")
    return bad


def _test_files() -> list[str]:
    from helpers import REPO
    out = []
    for d in ("tests", "benchmarks"):  # every folder below them: tests/LAYER/, tests/support/
        for top, _, files in os.walk(os.path.join(REPO, d)):
            out += [os.path.join(top, f) for f in files if f.endswith(".py")]
    return out


def test_no_test_module_imports_another():
    files = _test_files()
    # the walk sees the helpers, the machinery and the test modules in every folder
    names = {os.path.relpath(f, REPO) for f in files}
    assert {"tests/helpers.py", "tests/conftest.py", "tests/support/slurm.py",
            "tests/codebase/test_layers.py", "tests/launcher/test_launcher.py"} <= names, names
    assert imports_of_test_modules(files) == []


def test_every_test_module_is_in_a_folder_the_map_names():
    """tests/ reads as a map: each test module sits in a folder named for
    what it checks (tests/conftest.py's docstring names every folder), none
    at the top, and no two share a basename (pytest imports them by it)."""
    from helpers import REPO
    tests = os.path.join(REPO, "tests")
    with open(os.path.join(tests, "conftest.py")) as f:
        the_map = ast.get_docstring(ast.parse(f.read()))
    modules = [os.path.relpath(os.path.join(top, f), tests)
               for top, _, files in os.walk(tests) for f in files
               if f.startswith("test_") and f.endswith(".py")]
    assert len(modules) > 30, modules
    folders = {os.path.dirname(m) for m in modules}
    assert "" not in folders, [m for m in modules if "/" not in m]
    assert all(f"{d}/" in the_map for d in folders), (folders, the_map)
    names = [os.path.basename(m) for m in modules]
    assert len(set(names)) == len(names), sorted(names)


@pytest.mark.parametrize("text", ["from test_cache import copy_numpy\n",
                                  "def f():\n    import test_examples\n",
                                  "from conftest import CACHE\n"])
def test_the_test_import_checker_fails_on_a_planted_import(tmp_path, text):
    (tmp_path / "test_a.py").write_text("import os\nfrom helpers import run\n" + text)
    bad = imports_of_test_modules([str(tmp_path / "test_a.py")])
    assert len(bad) == 1 and bad[0].startswith("test_a.py:"), bad
