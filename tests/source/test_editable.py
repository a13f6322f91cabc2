"""Editable installs (issue 22): ``pip install -e`` projects of every kind in
use are packed into the environment's site directory, so ranks import them
from the staged tree with the env *and* the sources moved away.

Kinds built here with real tools (setuptools and hatchling from PyPI, wheels
built offline with ``--no-build-isolation``): setuptools PEP 660 in its
default (lenient: ``__editable__.*_finder.py`` import hook), strict (a link
tree named by a ``.pth``) and compat (the source directory in a ``.pth``)
modes, with package data and a C extension built in place; hatchling (a
``_NAME.pth`` path entry of the ``src`` directory); a legacy develop install
(``NAME.egg-link`` + ``easy-install.pth`` + ``NAME.egg-info`` in the source,
written by hand exactly as setuptools < 64 wrote them); meson-python (a
``_NAME_editable_loader`` rebuild hook over a build directory in the
source, with a pure module, package data and a C extension).
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import pathlib
import shutil
import sys
import textwrap

import pytest

from helpers import CLI, LAUNCHER, MPIEXEC, make_venv, mpi_env, mpirun, run, tree_site

VER = f"{sys.version_info[0]}.{sys.version_info[1]}"
HAVE_CC = shutil.which(os.environ.get("CC", "gcc")) is not None
MISSING = "/nonexistent/pmb-gone-libs"


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))


def make_projects(src: str) -> dict:
    """The source checkouts of the editable projects: name -> directory."""
    sdemo = os.path.join(src, "sdemo")
    _write(f"{sdemo}/pyproject.toml", """\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "sdemo"
        version = "0.1"
        [tool.setuptools.package-data]
        sdemo = ["data.txt"]
        """)
    ext = ('Extension("sdemo._fast", ["sdemo/_fast.c"])' if HAVE_CC else "")
    _write(f"{sdemo}/setup.py", f"""\
        from setuptools import setup, Extension
        setup(packages=["sdemo", "sdemo.sub"], ext_modules=[{ext}])
        """)
    _write(f"{sdemo}/sdemo/__init__.py", """\
        import os
        def data():
            with open(os.path.join(os.path.dirname(__file__), "data.txt")) as f:
                return f.read().strip()
        """)
    _write(f"{sdemo}/sdemo/data.txt", "sdemo-data\n")
    _write(f"{sdemo}/sdemo/sub/__init__.py", "from .. import data\nSUB = 'sub'\n")
    _write(f"{sdemo}/sdemo/_fast.c", """\
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        static PyObject *twice(PyObject *self, PyObject *args) {
            long x; if (!PyArg_ParseTuple(args, "l", &x)) return NULL;
            return PyLong_FromLong(2 * x);
        }
        static PyMethodDef M[] = {{"twice", twice, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
        static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, M};
        PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&D); }
        """)
    out = {"sdemo": sdemo}
    for name in ("sstrict", "scompat"):
        d = os.path.join(src, name)
        _write(f"{d}/pyproject.toml", f"""\
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "{name}"
            version = "0.2"
            [tool.setuptools]
            packages = ["{name}"]
            [tool.setuptools.package-data]
            {name} = ["*.json"]
            """)
        _write(f"{d}/{name}/__init__.py", "import json, os\nHERE = os.path.dirname(__file__)\n"
               "def conf():\n    return json.load(open(os.path.join(HERE, 'conf.json')))\n")
        _write(f"{d}/{name}/conf.json", '{"k": 3}\n')
        out[name] = d
    hdemo = os.path.join(src, "hdemo")
    _write(f"{hdemo}/pyproject.toml", """\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [project]
        name = "hdemo"
        version = "0.3"
        """)
    _write(f"{hdemo}/src/hdemo/__init__.py", "def triple(x):\n    return 3 * x\n")
    _write(f"{hdemo}/src/hdemo/table.csv", "a,b\n1,2\n")
    out["hdemo"] = hdemo
    ldemo = os.path.join(src, "ldemo")
    _write(f"{ldemo}/ldemo.py", "def four():\n    return 4\n")
    _write(f"{ldemo}/setup.py", "from setuptools import setup\nsetup(name='ldemo', "
                                "version='0.4', py_modules=['ldemo'])\n")
    _write(f"{ldemo}/ldemo.egg-info/PKG-INFO",
           "Metadata-Version: 2.1\nName: ldemo\nVersion: 0.4\n")
    _write(f"{ldemo}/ldemo.egg-info/top_level.txt", "ldemo\n")
    _write(f"{ldemo}/ldemo.egg-info/SOURCES.txt", "ldemo.py\nsetup.py\n")
    out["ldemo"] = ldemo
    mdemo = os.path.join(src, "mdemo")
    _write(f"{mdemo}/pyproject.toml", """\
        [build-system]
        requires = ["meson-python"]
        build-backend = "mesonpy"
        [project]
        name = "mdemo"
        version = "0.5"
        """)
    ext = ("py.extension_module('_speed', 'mdemo/_speed.c', install: true, subdir: 'mdemo')"
           if HAVE_CC else "")
    _write(f"{mdemo}/meson.build", f"""\
        project('mdemo'{", 'c'" if HAVE_CC else ""})
        py = import('python').find_installation(pure: false)
        {ext}
        py.install_sources('mdemo/__init__.py', 'mdemo/pure.py', 'mdemo/data.txt',
                           subdir: 'mdemo')
        """)
    _write(f"{mdemo}/mdemo/__init__.py", """\
        import os
        from .pure import seven
        def data():
            with open(os.path.join(os.path.dirname(__file__), "data.txt")) as f:
                return f.read().strip()
        """)
    _write(f"{mdemo}/mdemo/pure.py", "def seven():\n    return 7\n")
    _write(f"{mdemo}/mdemo/data.txt", "mdemo-data\n")
    _write(f"{mdemo}/mdemo/_speed.c", """\
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        static PyObject *six(PyObject *self, PyObject *args) { return PyLong_FromLong(6); }
        static PyMethodDef M[] = {{"six", six, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
        static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, M};
        PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&D); }
        """)
    out["mdemo"] = mdemo
    plain = os.path.join(src, "plainlibs")
    _write(f"{plain}/plainmod.py", "FIVE = 5\n")
    _write(f"{plain}/notes/readme.txt", "not importable\n")
    out["mylibs.pth"] = plain
    return out


def install_editables(python: str, site: str, projects: dict) -> None:
    """pip install -e each project into the env of ``python`` (pip of the
    test run, --python; the build backends come from the env itself)."""
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q",
           "--disable-pip-version-check", "--no-build-isolation", "--no-deps"]
    run(pip[:-3] + ["-U", "setuptools>=70.1", "wheel", "hatchling", "editables",
                    "meson-python", "meson", "ninja"], timeout=900)
    run(pip + ["-e", projects["sdemo"]], timeout=600)
    run(pip + ["-e", projects["sstrict"], "--config-settings", "editable_mode=strict"],
        timeout=600)
    run(pip + ["-e", projects["scompat"], "--config-settings", "editable_mode=compat"],
        timeout=600)
    run(pip + ["-e", projects["hdemo"]], timeout=600)
    # meson-python runs meson and ninja from the env's bin, as an activated env has them
    path = os.path.dirname(python) + os.pathsep + os.environ.get("PATH", "")
    run(pip + ["-e", projects["mdemo"]], timeout=600, env=dict(os.environ, PATH=path))
    # a develop install as setuptools < 64 (pip install -e --no-use-pep517) wrote it
    with open(os.path.join(site, "ldemo.egg-link"), "w") as f:
        f.write(projects["ldemo"] + "\n.")
    with open(os.path.join(site, "easy-install.pth"), "a") as f:
        f.write(projects["ldemo"] + "\n")
    # a .pth a user wrote: a directory of modules, and one that is gone
    with open(os.path.join(site, "mylibs.pth"), "w") as f:
        f.write(f"# my libraries\n{projects['mylibs.pth']}\n{MISSING}\n")


CHECK = r"""
import importlib.metadata as md, os, sys
from mpi4py import MPI
import sdemo, sdemo.sub, sstrict, scompat, hdemo, ldemo, plainmod, mdemo, mdemo.pure
t = os.path.realpath(os.environ["PYTHON_MPI_TREE"])
mods = [sdemo, sdemo.sub, sstrict, scompat, hdemo, ldemo, plainmod, mdemo, mdemo.pure]
if HAVE_CC:
    import sdemo._fast, mdemo._speed
    mods += [sdemo._fast, mdemo._speed]
    x = sdemo._fast.twice(MPI.COMM_WORLD.rank) + mdemo._speed.six()
else:
    x = 2 * MPI.COMM_WORLD.rank + 6
for m in mods:
    assert os.path.realpath(m.__file__).startswith(t + "/"), (m.__name__, m.__file__, t)
assert not [p for p in sys.path if SRC in p], sys.path
assert not [m for m in sys.modules if m.startswith("__editable__") or
            m.endswith("_editable_loader")], "a hook was imported"
assert mdemo.data() == "mdemo-data" and md.version("mdemo") == "0.5"
assert sdemo.data() == sdemo.sub.data() == "sdemo-data"
assert sstrict.conf() == scompat.conf() == {"k": 3}
assert md.version("sdemo") == "0.1" and md.version("hdemo") == "0.3"
assert md.version("ldemo") == "0.4"
y = x + hdemo.triple(1) + ldemo.four() + sstrict.conf()["k"] + plainmod.FIVE + mdemo.seven()
y += extra(t)
s = MPI.COMM_WORLD.allreduce(y)
if MPI.COMM_WORLD.rank == 0:
    print("TOTAL", s, MPI.COMM_WORLD.size)
"""


def expected_total(n: int, extra: int = 0) -> int:
    return sum(2 * r + 6 + 3 + 4 + 3 + 5 + 7 + extra for r in range(n))


def check_pack_lines(stderr: str, projects: dict) -> None:
    """One line per editable project, naming it and where its files came from."""
    for name, d in projects.items():
        lines = [ln for ln in stderr.splitlines() if "editable" in ln and f" {name} " in ln]
        assert len(lines) == 1, (name, stderr)
        assert d in lines[0], (name, lines[0])
    gone = [ln for ln in stderr.splitlines() if MISSING in ln]
    assert len(gone) == 1 and "mylibs.pth" in gone[0] and "does not exist" in gone[0], stderr


def run_moved(pkroot: str, packages: str, chroot: str, src: str,
              moved: list[tuple[str, str]], extra: str = "", extra_total: int = 0,
              traced: bool = False) -> None:
    """CHECK on 4 ranks on 2 nodes with ``moved`` (env, sources) moved away;
    ``extra`` defines extra(tree) -> a rank's addition to the total.
    ``traced``: the whole job under strace, which must show no call naming a
    path under any of the moved directories (old place or new)."""
    for a, b in moved:
        shutil.move(a, b)
    try:
        env = mpi_env(pkroot, chroot, cliques=2, packages=packages)
        code = (f"HAVE_CC = {HAVE_CC}\nSRC = {src!r}\n" + (extra or "def extra(t):\n"
                "    return 0\n") + CHECK)
        if traced:
            import filecalls
            tasks = filecalls.trace([MPIEXEC, "-n", "4", LAUNCHER, "-c", code], env=env,
                                    timeout=600, check=False)
            r = tasks[None]
        else:
            r = mpirun(4, ["-c", code], env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"TOTAL {expected_total(4, extra_total)} 4" in r.stdout, r.stdout
        nodes = os.listdir(os.path.dirname(chroot.replace("%n", "0")))
        assert len(nodes) == 2, nodes
        if traced:
            roots = sorted({p for ab in moved for p in ab} |
                           {os.path.realpath(p) for ab in moved for p in ab})
            calls, pids, nbytes = filecalls.count_roots(tasks, roots)
            assert (calls, nbytes) == (0, 0), (calls, pids, nbytes, [
                f"{tid}: {ev.name}({ev.args[:160]})" for tid, t in tasks.items() if tid
                for ev in t.events if not isinstance(ev, tuple)
                and any(filecalls.under(q, r) for q in ev.paths for r in roots)][:10])
            ranks = [t for tid, t in tasks.items() if tid and any(
                isinstance(ev, tuple) and ev[0] == "exec" and ev[1].endswith("python-mpi")
                for ev in t.events)]
            assert len(ranks) == 4, len(ranks)  # every rank was traced
    finally:
        for a, b in moved:
            shutil.move(b, a)


@pytest.fixture(scope="module")
def edit_venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("editable")
    projects = make_projects(str(base / "src"))
    v = str(base / "v")
    make_venv(v, ["mpi4py"])
    site = os.path.join(v, "lib", f"python{VER}", "site-packages")
    install_editables(os.path.join(v, "bin", "python"), site, projects)
    return {"base": str(base), "venv": v, "src": str(base / "src"), "projects": projects,
            "site": site}


def test_venv_with_editable_installs_of_every_kind_runs_from_the_tree_with_env_and_sources_moved(
        edit_venv, shm_chroot):
    out = os.path.join(edit_venv["base"], "out")
    r = run(CLI + ["pack", edit_venv["venv"], "--python", "-o", out, "-q"], timeout=900)
    check_pack_lines(r.stderr, edit_venv["projects"])
    run_moved(out, f"python-{VER}.tar.zst:v.tar.zst", shm_chroot, edit_venv["src"],
              [(edit_venv["venv"], edit_venv["venv"] + "-moved"),
               (edit_venv["src"], edit_venv["src"] + "-moved")])


def test_packed_tree_holds_the_projects_files_and_none_of_their_hooks(edit_venv, tmp_path):
    out = tmp_path / "out"
    run(CLI + ["pack", edit_venv["venv"], "-o", str(out), "-q"], timeout=900)
    tree = tmp_path / "tree"
    run(CLI + ["unpack", str(out / "v.tar.zst"), str(tree)], timeout=300)
    site = pathlib.Path(tree_site(str(tree)))
    names = set(os.listdir(site))
    assert not [n for n in names if n.startswith("__editable__") or n.endswith(".egg-link")
                or n in ("_hdemo.pth", "easy-install.pth", "mdemo-editable.pth")
                or n.endswith("_editable_loader.py")], names
    for rel in ("sdemo/__init__.py", "sdemo/data.txt", "sdemo/sub/__init__.py",
                "sstrict/conf.json", "scompat/conf.json", "hdemo/table.csv", "ldemo.py",
                "ldemo.egg-info/PKG-INFO", "plainmod.py", "mdemo/__init__.py", "mdemo/pure.py",
                "mdemo/data.txt"):
        assert (site / rel).is_file(), rel
    # the user's .pth keeps its comment only: no line names a source any more
    assert "mylibs.pth" not in names or "/" not in (site / "mylibs.pth").read_text()
    assert "notes" not in names  # a directory without Python code is not importable
    if HAVE_CC:
        assert [n for n in os.listdir(site / "sdemo") if n.startswith("_fast.") and
                n.endswith(".so")]
        assert [n for n in os.listdir(site / "mdemo") if n.startswith("_speed.") and
                n.endswith(".so")]
    # none of meson's build directory but what its install plan maps
    built = [n for n in os.listdir(site / "mdemo") if n != "__pycache__"]
    assert sorted(built) == sorted(["__init__.py", "pure.py", "data.txt"] + (
        [n for n in built if n.startswith("_speed.") and n.endswith(".so")] if HAVE_CC else []))
    # the sources' own clutter is not importable and is not packed
    assert "setup.py" not in names and "pyproject.toml" not in names and "src" not in names
    for d in (tree, ):
        for dirpath, _, files in os.walk(d):
            for fn in files:
                p = os.path.join(dirpath, fn)
                if not os.path.islink(p) and fn.endswith((".py", ".pth", ".txt", ".json")):
                    assert edit_venv["src"].encode() not in open(p, "rb").read(), p


def test_refuse_editable_keeps_the_old_refusal(edit_venv, tmp_path):
    r = run(CLI + ["pack", edit_venv["venv"], "-o", str(tmp_path), "--refuse-editable"],
            check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "editable" in r.stderr and "without -e" in r.stderr
    assert not os.listdir(tmp_path)


def test_run_repacks_after_an_edit_to_an_editable_source(edit_venv):
    from python_mpi_bcast.launch.run import content_key
    k1 = content_key(edit_venv["venv"])
    assert content_key(edit_venv["venv"]) == k1
    f = os.path.join(edit_venv["projects"]["hdemo"], "src", "hdemo", "__init__.py")
    old = open(f).read()
    try:
        with open(f, "a") as fh:
            fh.write("# edited\n")
        assert content_key(edit_venv["venv"]) != k1
    finally:
        with open(f, "w") as fh:
            fh.write(old)
    # a C source of the meson-python project, not yet rebuilt: the next run
    # packs again (and says the build is out of date) instead of reusing
    c = os.path.join(edit_venv["projects"]["mdemo"], "mdemo", "_speed.c") if HAVE_CC else \
        os.path.join(edit_venv["projects"]["mdemo"], "meson.build")
    st = os.stat(c)
    k2 = content_key(edit_venv["venv"])  # the restored hdemo file has a new mtime
    try:
        os.utime(c, (st.st_atime, st.st_mtime + 60))
        assert content_key(edit_venv["venv"]) != k2
    finally:
        os.utime(c, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_key(edit_venv["venv"]) == k2
    # a new module in a package of the lenient setuptools finder
    g = os.path.join(edit_venv["projects"]["sdemo"], "sdemo", "extra.py")
    try:
        open(g, "w").close()
        assert content_key(edit_venv["venv"]) != k1
    finally:
        os.unlink(g)


def test_python_given_a_venv_says_it_packs_only_the_interpreter(edit_venv, tmp_path):
    # the order a user types after reading "--python [PREFIX]: ... or a venv";
    # the README's quick start packs the interpreter this way, the venv next
    r = run(CLI + ["pack", "--python", edit_venv["venv"], "-o", str(tmp_path), "-q"],
            timeout=900)
    assert sorted(os.listdir(tmp_path)) == [f"python-{VER}.tar.zst",
                                            f"python-{VER}.tar.zst.shards"]  # + its shard index
    said = [ln for ln in r.stderr.splitlines() if "--python" in ln]
    assert len(said) == 1, r.stderr
    assert "packed that venv's base interpreter only, not the venv" in said[0]
    assert edit_venv["venv"] in said[0]
    assert f"pack {edit_venv['venv']} --python" in said[0]
    # the venv given too: both, and nothing said about it
    r = run(CLI + ["pack", edit_venv["venv"], "--python", "-o", str(tmp_path / "b"), "-q"],
            timeout=900)
    assert sorted(os.listdir(tmp_path / "b")) == sorted(
        [f"python-{VER}.tar.zst", "v.tar.zst", f"python-{VER}.tar.zst.shards", "v.tar.zst.shards"])
    assert "--python" not in r.stderr


def test_a_pth_that_is_a_link_to_the_users_file_is_never_written_through(tmp_path):
    """A .pth in site-packages that is a symlink to a file of the user's
    (a dotfiles manager's link): pack drops its path line from the packed
    copy and leaves the user's file byte for byte as it was."""
    v = make_venv(str(tmp_path / "v"), [])
    src = tmp_path / "ext" / "src"
    src.mkdir(parents=True)
    (src / "extmod.py").write_text("X = 1\n")
    mine = tmp_path / "dotfiles" / "mine.pth"
    mine.parent.mkdir()
    mine.write_text(f"{src}\nimport os\n")
    before = mine.read_bytes()
    site = tree_site(v)
    os.symlink(mine, os.path.join(site, "mine.pth"))
    run(CLI + ["pack", v, "-o", str(tmp_path / "out"), "-q"], timeout=900)
    assert mine.read_bytes() == before
    tree = tmp_path / "tree"
    run(CLI + ["unpack", str(tmp_path / "out" / "v.tar.zst"), str(tree)], timeout=300)
    packed = os.path.join(tree_site(str(tree)), "mine.pth")
    assert not os.path.islink(packed)
    with open(packed) as f:
        assert f.read() == "import os\n"
    assert os.path.isfile(os.path.join(tree_site(str(tree)), "extmod.py"))


def test_a_meson_python_build_out_of_date_or_gone_gets_one_line_and_no_rebuild_hook(
        edit_venv, tmp_path):
    """meson-python's hook rebuilds on import; pack takes what the last build
    left (it does not run ninja), so a source newer than its build is one
    line saying to build it, and a build directory that is gone is one line
    saying to reinstall: the project is left out and its hook is not packed
    (ranks would run ninja in a directory on the shared filesystem)."""
    from python_mpi_bcast.source import editable
    site, mdemo = edit_venv["site"], edit_venv["projects"]["mdemo"]

    def said():
        f = editable.find(site, [edit_venv["venv"]])
        return ([w for w in f.warnings if "mdemo" in w],
                [e for e in f.editables if e.name == "mdemo"])

    lines, eds = said()
    assert not lines and len(eds) == 1 and eds[0].origin == mdemo, (lines, eds)
    src = os.path.join(mdemo, "mdemo", "_speed.c") if HAVE_CC else os.path.join(mdemo,
                                                                                 "meson.build")
    st = os.stat(src)
    os.utime(src, (st.st_atime, st.st_mtime + 3600))  # edited after the build
    try:
        lines, eds = said()
        assert len(lines) == 1 and "out of date" in lines[0] and src in lines[0], lines
        assert "ninja -C " + os.path.join(mdemo, "build") in lines[0], lines
        assert len(eds) == 1  # packed as last built
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    build = os.path.join(mdemo, "build")
    shutil.move(build, build + "-gone")
    try:
        out = tmp_path / "out"
        r = run(CLI + ["pack", edit_venv["venv"], "-o", str(out), "-q"], timeout=900)
        lines = [ln for ln in r.stderr.splitlines() if "mdemo" in ln]
        assert len(lines) == 1, r.stderr
        assert "_mdemo_editable_loader.py" in lines[0] and "does not exist" in lines[0]
        assert f"pip install -e {mdemo}" in lines[0], lines
        tree = tmp_path / "tree"
        run(CLI + ["unpack", str(out / "v.tar.zst"), str(tree)], timeout=300)
        names = os.listdir(tree_site(str(tree)))
        assert "mdemo" not in names and "mdemo-editable.pth" not in names, names
        assert "_mdemo_editable_loader.py" not in names, names
    finally:
        shutil.move(build + "-gone", build)


def test_a_meson_python_0_13_loader_maps_the_same_files(edit_venv, tmp_path):
    """meson-python 0.13 wrote ``NAME-editable.pth`` as a bare ``import
    _NAME_editable_loader`` and ended the loader with ``install(names,
    build_dir, cmd, verbose)`` (its mesonpy/__init__.py); read as literals
    like the current ``MesonpyMetaFinder(...)`` call, it maps the same files
    of the same build."""
    from python_mpi_bcast.source import editable
    site = tmp_path / "site"
    site.mkdir()
    build = os.path.join(edit_venv["projects"]["mdemo"], "build", f"cp{VER.replace('.', '')}")
    (site / "mdemo-editable.pth").write_text("import _mdemo_editable_loader")
    (site / "_mdemo_editable_loader.py").write_text(
        "import sys\n\ndef install(names, path, cmd, verbose):\n"
        "    sys.meta_path.insert(0, MesonpyMetaFinder(names, path, cmd, verbose))\n"
        f"\ninstall(\n    {{'mdemo'}},\n    {build!r},\n    ['ninja'],\n    False,\n)")
    old = editable.find(str(site), [str(tmp_path)])
    new = editable.find(edit_venv["site"], [edit_venv["venv"]])
    (ed,) = old.editables
    (want,) = [e for e in new.editables if e.kind == "meson-python rebuild hook"]
    assert sorted(ed.files) == sorted(want.files) and len(ed.files) >= 3, (ed.files, want.files)
    assert ed.origin == edit_venv["projects"]["mdemo"] and not old.warnings, old.warnings
    assert "_mdemo_editable_loader.py" in old.hooks
    assert old.pth_drop == {"mdemo-editable.pth": ["import _mdemo_editable_loader"]}


def test_pth_code_naming_paths_outside_the_env_and_extensions_for_another_python_get_a_line(
        tmp_path):
    """What cannot be packed faithfully is said, one line each, naming the
    file and what to do (issue 22 item 3): a .pth line that runs code
    written with a path outside the env (one that exists, one that does not;
    the code is not run at pack time, only its literals read), and an
    extension module built for another CPython (a copied checkout).  Lines
    that run code naming nothing outside (setuptools' distutils-precedence.pth)
    and an extension of this Python say nothing."""
    import sysconfig
    v = make_venv(str(tmp_path / "v"), [])
    site = os.path.join(v, "lib", f"python{VER}", "site-packages")
    home = tmp_path / "home" / "u" / "x"
    home.mkdir(parents=True)
    (home / "xmod.py").write_text("X = 1\n")
    gone = "/nonexistent/pmb-u-opt"
    with open(os.path.join(site, "hack.pth"), "w") as f:
        f.write(f"# added by hand\nimport sys; sys.path.insert(0, {str(home)!r})\n"
                f"import os; os.environ.setdefault('PMB_OPT', {gone!r})\n"
                f"import sys; sys.path.append({site!r})\n")
    dynload = os.path.join(os.path.dirname(os.__file__), "lib-dynload")
    ext = sorted(n for n in os.listdir(dynload) if f".{sysconfig.get_config_var('SOABI')}."
                 in n and n.endswith(".so"))[0]
    real = os.path.join(dynload, ext)
    pkg = os.path.join(site, "oldpkg")
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    other = os.path.join(pkg, "_json.cpython-39-x86_64-linux-gnu.so")
    shutil.copy(real, other)
    shutil.copy(real, os.path.join(pkg, ext))  # built for this Python
    r = run(CLI + ["pack", v, "-o", str(tmp_path / "out"), "-q"], timeout=900)
    pth = [ln for ln in r.stderr.splitlines() if "hack.pth" in ln]
    assert len(pth) == 2, r.stderr
    assert "line 2 runs code" in pth[0] and str(home) in pth[0] and gone not in pth[0], pth
    assert "line 3 runs code" in pth[1] and f"{gone} (which does not exist)" in pth[1], pth
    assert "install that code into the environment or remove the line" in pth[0], pth
    exts = [ln for ln in r.stderr.splitlines() if "extension module" in ln]
    assert len(exts) == 1 and other in exts[0] and "Python 3.9" in exts[0], r.stderr
    assert f"rebuild it for {VER}" in exts[0], exts
    assert len(r.stderr.strip().splitlines()) == 3, r.stderr


# numpy as conda installed it, and the version pip then put over it (the one
# the test's own venv holds, so pip finds its wheel in the cache), as in test_conda
PIP_NUMPY = importlib.metadata.version("numpy")
CONDA_NUMPY = "2.3.5" if PIP_NUMPY != "2.3.5" else "2.2.6"

# what a rank checks and adds in the conda env besides the editable projects
CONDA_EXTRA = f"""
def extra(t):
    import ctypes, subprocess, numpy
    assert numpy.__version__ == {PIP_NUMPY!r}, numpy.__version__  # pip's, over conda's
    assert os.path.realpath(numpy.__file__).startswith(t + "/"), numpy.__file__
    try:
        import six
        raise SystemExit("six, which pip uninstalled, is in the tree: " + six.__file__)
    except ImportError:
        pass
    # pmblink's files are links into pmbdemo's: a library and a program
    lib = ctypes.CDLL(os.path.join(t, "lib", "libpmbalias.so"))
    lib.pmbdemo_data.restype = ctypes.c_char_p
    data = os.path.realpath(lib.pmbdemo_data().decode())
    assert data == t + "/share/pmbdemo/greeting.txt", data
    p = subprocess.run([os.path.join(t, "bin", "pmbdemo-alias")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "greeting=hello from pmbdemo" in p.stdout, p.stdout + p.stderr
    return int(numpy.arange(4.0).sum())
"""


@pytest.fixture(scope="module")
def edit_conda(tmp_path_factory):
    """A conda-layout env holding together what issue 22 lists: the editable
    projects of every kind (make_projects), numpy as a conda package that
    ``pip install --force-reinstall`` replaced by another version, six as a
    conda package ``pip uninstall`` removed, and a conda package (pmblink)
    whose files are symlinks into another package's (pmbdemo's library and
    program), beside python's own bin/python3 -> python3.X."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    base = tmp_path_factory.mktemp("editable-conda")
    root = str(base / "conda")
    prefix = condaenv.build(root, sys.executable, ["mpi4py"])
    # conda's python package ships its C headers; the test builder's has none
    inc = os.path.join(prefix, "include", f"python{VER}")
    if not os.path.isfile(os.path.join(inc, "Python.h")):
        import sysconfig
        shutil.copytree(sysconfig.get_path("include"), inc, dirs_exist_ok=True)
    wheels = str(base / "wheels")
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--no-deps", "-d", wheels, f"numpy=={CONDA_NUMPY}", "six==1.17.0"], timeout=600)
    records = [condaenv.install_wheel_as_conda(root, prefix, w)
               for w in sorted(glob.glob(os.path.join(wheels, "*.whl")))]
    records.append(condaenv.install_links_as_conda(
        root, prefix, "pmblink", {"lib/libpmbalias.so": "libpmbdemo.so",
                                  "bin/pmbdemo-alias": "pmbdemo"}))
    py = os.path.join(prefix, "bin", "python3")
    pip = [sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check"]
    run(pip + ["install", "-q", "--no-compile", "--no-deps", "--force-reinstall",
               f"numpy=={PIP_NUMPY}"], timeout=900)
    run(pip + ["uninstall", "-q", "-y", "six"], timeout=300)
    projects = make_projects(str(base / "src"))
    site = os.path.join(prefix, "lib", f"python{VER}", "site-packages")
    install_editables(py, site, projects)
    return {"base": str(base), "prefix": prefix, "src": str(base / "src"),
            "projects": projects, "records": records}


def test_conda_env_with_every_editable_kind_pip_changes_and_cross_package_links_runs_moved(
        edit_conda, shm_chroot):
    """The issue's combined check: everything above in one conda env, packed;
    conda-pack (the reference) refuses it; with the env and every editable
    source (and meson's build directory in it) moved away, 4 ranks on 2
    nodes import it all and compute, and strace of the job shows no call
    naming the env's or a source's path, old or new."""
    prefix = edit_conda["prefix"]
    cp = run([os.path.join(os.path.dirname(sys.executable), "conda-pack"), "-p", prefix,
              "-o", os.path.join(edit_conda["base"], "cp.tar.gz"), "-q"], timeout=900,
             check=False)
    print(f"conda-pack on the same env (the reference): exit {cp.returncode}: "
          f"{(cp.stdout + cp.stderr).strip()}")
    assert cp.returncode != 0, cp.stdout + cp.stderr
    out = os.path.join(edit_conda["base"], "out")
    r = run(CLI + ["pack", prefix, "-o", out, "-q"], timeout=900)
    check_pack_lines(r.stderr, edit_conda["projects"])
    changed = [ln for ln in r.stderr.splitlines() if "pip replaced/removed them" in ln]
    numpy_rec, six_rec = sorted(rec for rec in edit_conda["records"] if "pmblink" not in rec)
    assert len(changed) == 2 and numpy_rec in changed[0] and six_rec in changed[1], r.stderr
    assert "pmblink" not in r.stderr, r.stderr
    run_moved(out, "demo.tar.zst", shm_chroot, edit_conda["src"],
              [(prefix, prefix + "-moved"), (edit_conda["src"], edit_conda["src"] + "-moved")],
              extra=CONDA_EXTRA, extra_total=6, traced=bool(shutil.which("strace")))
