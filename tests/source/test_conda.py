"""Conda environments (issue 8): ``pack CONDA_PREFIX`` on a real conda
layout (tests/support/condaenv.py), checked against conda-pack + conda-unpack as the
reference, and run under python-mpi on two simulated nodes."""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile

import pytest
import zstandard

from helpers import (BIN, CLI, SBATCH_SIZE, can_hide, conda_origin, conda_outputs, hidden, mpi_env,
                     mpirun, pyc_code_digest, readme_blocks, run)
from python_mpi_bcast.package.archive import iter_frames


def leftovers(tree: str, old: bytes) -> set[str]:
    found = set()
    for dirpath, dirnames, files in os.walk(tree):
        for fn in files:
            full = os.path.join(dirpath, fn)
            if os.path.islink(full):
                continue
            with open(full, "rb") as f:
                if old in f.read():
                    found.add(os.path.relpath(full, tree))
    return found


@pytest.fixture(scope="module")
def packed(conda_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("condapkgs")
    run(CLI + ["pack", conda_env, "-o", str(out), "-q"], timeout=900)
    cp = str(out / "cp.tar.zst")
    run([os.path.join(BIN, "conda-pack"), "-p", conda_env, "-o", cp, "-q"], timeout=900)
    return {"root": str(out), "ours": str(out / "demo.tar.zst"), "cp": cp}


def test_manifest_lists_conda_recorded_prefix_files(packed):
    r = run(CLI + ["inspect", "--json", packed["ours"]], timeout=60)
    m = json.loads(r.stdout)
    assert m["kind"] == "interpreter" and m["libpython"] and m["executable"] == "bin/python3.11"
    pf = {p["path"]: p for p in m["prefix_files"]}
    for rel in ("bin/pmbdemo", "lib/libpmbdemo.so"):
        # our own placeholder, exactly as long as conda-build's 255-byte one
        assert pf[rel]["mode"] == "binary"
        assert len(pf[rel]["placeholder"]) == 255
    for rel in ("lib/python3.11/site-packages/pmbdemo_paths.py", "lib/pkgconfig/pmbdemo.pc",
                "etc/conda/activate.d/pmbdemo_activate.sh", "conda-meta/history"):
        assert pf[rel]["mode"] == "text", rel
    # shebangs (conda's and pip's) became relocatable preambles, not prefix files
    assert "bin/pmbdemo-script" not in pf and "bin/f2py" not in pf
    r = run(CLI + ["verify", packed["ours"]], timeout=120)
    assert "OK" in r.stdout


def test_unpacked_env_runs_like_conda_packs_with_the_original_moved_away(conda_env, packed):
    base = tempfile.mkdtemp(prefix="pmb-conda-")
    try:
        ours, theirs = os.path.join(base, "ours"), os.path.join(base, "theirs")
        run(CLI + ["unpack", packed["ours"], ours], timeout=300)
        os.makedirs(theirs)
        run(["tar", "--zstd", "-xf", packed["cp"], "-C", theirs], timeout=300)
        run([f"{theirs}/bin/python", f"{theirs}/bin/conda-unpack"], timeout=300)
        hide = [conda_env] + conda_origin()
        a, b = conda_outputs(ours, hide), conda_outputs(theirs, hide)
        assert a == b
        assert "greeting=hello from pmbdemo" in a and "data=<T>/share/pmbdemo" in a
        assert "search=<T>/lib:<T>/share\n" in a
        old = conda_env.encode()
        left_ours, left_theirs = leftovers(ours, old), leftovers(theirs, old)
        assert left_ours <= left_theirs, left_ours - left_theirs
        assert not left_ours, left_ours
        # binaries keep their size; the rest of each string stays in place
        for rel in ("bin/pmbdemo", "lib/libpmbdemo.so"):
            assert os.path.getsize(f"{ours}/{rel}") == os.path.getsize(f"{conda_env}/{rel}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_conda_env_under_python_mpi_on_two_nodes(conda_env, packed, shm_chroot):
    script = (
        "import os, sys, subprocess, numpy\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "s = c.allreduce(numpy.arange(4.0) * (c.rank + 1), op=MPI.SUM)\n"
        "t = os.environ['PYTHON_MPI_TREE']\n"
        "assert os.environ['CONDA_PREFIX'] == sys.prefix == t, (os.environ.get('CONDA_PREFIX'), t)\n"
        "assert os.environ['PATH'].split(':')[0] == t + '/bin'\n"
        "g = subprocess.run(['pmbdemo'], capture_output=True, text=True, timeout=60).stdout\n"
        "assert 'hello from pmbdemo' in g and t + '/share' in g, g\n"
        "if c.rank == 0: print('SUM', s.tolist(), c.size)\n"
    )
    pk = {"root": packed["root"], "python": "demo.tar.zst", "env": ""}
    env = mpi_env(pk, shm_chroot, cliques=2, packages="demo.tar.zst")
    prefix = hidden([conda_env], []) if can_hide() else None
    r = mpirun(4, ["-c", script], env, timeout=300, prefix=prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUM [0.0, 10.0, 20.0, 30.0] 4" in r.stdout
    nodes = [d for d in os.listdir(os.path.dirname(shm_chroot.replace("%n", "0")))]
    assert len(nodes) == 2, nodes


def test_slim_packs_a_conda_env_whole_and_strips_nothing(packed, conda_env, tmp_path):
    """README: "Conda environments are always packed whole" — also with
    --slim, which strips debug info of an interpreter package only: a conda
    env's binaries stay as conda installed them (and none is copied into
    $TMPDIR to be stripped)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = run(CLI + ["pack", "--slim", conda_env, "-o", str(tmp_path), "--tmpdir", str(tmp)],
            timeout=900)
    assert "packed whole" in r.stderr and "debug info" not in r.stderr, r.stderr
    slim, whole = regular_files(str(tmp_path / "demo.tar.zst")), regular_files(packed["ours"])
    assert slim == whole and sum(1 for d in whole.values() if d[1]) > 10
    assert not os.listdir(tmp)


def regular_files(pkg: str) -> dict:
    """Each regular file of a package: (SHA-256 of its bytes, is it ELF); a
    .pyc by its code (helpers.pyc_code_digest: the environment's python
    writes .pyc into it when a test runs it, and pack then takes their code,
    marshalled differently)."""
    out = {}
    for _m, _i, frame in iter_frames(pkg):
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
        with tarfile.open(fileobj=io.BytesIO(raw + bytes(1024))) as t:
            for ti in t:
                if ti.isfile():
                    data = t.extractfile(ti).read()
                    digest = (pyc_code_digest(data) if ti.name.endswith(".pyc")
                              else hashlib.sha256(data).hexdigest())
                    out[ti.name] = (digest, data[:4] == b"\x7fELF")
    return out


def test_tree_longer_than_the_conda_placeholder_is_refused_naming_the_file(packed):
    base = tempfile.mkdtemp(prefix="pmb-conda-")
    try:
        dest = os.path.join(base, *["d" * 50] * 5)
        r = run(CLI + ["unpack", packed["ours"], dest], timeout=300, check=False)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "can hold a path of at most 255 bytes" in r.stderr
        assert "pmbdemo" in r.stderr
        assert not os.path.exists(dest)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_readme_conda_section(conda_env, sandbox):
    blocks = readme_blocks("sh", "Conda environments\n---", "Saved environments: ``save``")
    assert len(blocks) == 2
    env = dict(sandbox["env"], CONDA_PREFIX=conda_env)
    script = sandbox["tmp"] / "readme-conda-job.sh"   # run as a batch job on the test cluster
    script.write_text("#!/bin/bash\nset -euo pipefail\ncd \"$PROJECT\"\n" + "\n".join(blocks)
                      + "\n")
    state, code, out = sandbox["cluster"].sbatch(str(script), SBATCH_SIZE, env=env,
                                                 cwd=str(sandbox["tmp"]), timeout=900)
    assert (state, code) == ("COMPLETED", 0), out
    assert "kind:          interpreter" in out and "binary bin/pmbdemo" in out
    assert "my_script: 4 ranks, total 4.0" in out
    assert out.strip().splitlines()[-1][:1].isdigit()  # numpy's version


# numpy as conda installed it, and the version pip then put over it (the one
# the test's own venv holds, so pip finds its wheel in the cache)
PIP_NUMPY = importlib.metadata.version("numpy")
CONDA_NUMPY = "2.3.5" if PIP_NUMPY != "2.3.5" else "2.2.6"
PIP_CHANGED = "pip replaced/removed them"


@pytest.fixture(scope="module")
def pip_changed(tmp_path_factory):
    """A conda-layout env as most envs on clusters are: conda installed numpy
    and six (made from real wheels, as conda-forge builds them), then the
    user ran ``pip install --force-reinstall numpy==<other>`` and
    ``pip uninstall six``."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    base = tmp_path_factory.mktemp("pip-changed-conda")
    root = str(base / "conda")
    prefix = condaenv.build(root, sys.executable, ["mpi4py"])
    wheels = str(base / "wheels")
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--no-deps", "-d", wheels, f"numpy=={CONDA_NUMPY}", "six==1.17.0"], timeout=600)
    records = [condaenv.install_wheel_as_conda(root, prefix, w)
               for w in sorted(glob.glob(os.path.join(wheels, "*.whl")))]
    py = os.path.join(prefix, "bin", "python3")
    pip = [sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check"]
    r = run([py, "-c", "import numpy, six; print(numpy.__version__)"], timeout=120)
    assert r.stdout.strip() == CONDA_NUMPY
    run(pip + ["install", "-q", "--no-compile", "--no-deps", "--force-reinstall",
               f"numpy=={PIP_NUMPY}"], timeout=900)
    run(pip + ["uninstall", "-q", "-y", "six"], timeout=300)
    # and a file of a conda package removed by hand (no pip in sight)
    os.remove(os.path.join(prefix, "etc/conda/deactivate.d/pmbdemo_deactivate.sh"))
    return {"base": str(base), "prefix": prefix, "records": records}


def run_moved_away(prefix: str, out: str, shm_chroot: str, script: str,
                   hide: list[str] | None = None) -> str:
    """``script`` on 2 ranks on 2 simulated nodes from ``out``/demo.tar.zst,
    with the env at ``prefix`` moved away meanwhile: both ranks' output."""
    moved = prefix + "-moved"
    shutil.move(prefix, moved)
    try:
        env = mpi_env(out, shm_chroot, cliques=2, packages="demo.tar.zst")
        r = mpirun(2, ["-c", script], env, timeout=300, prefix=hide)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    finally:
        shutil.move(moved, prefix)


def test_conda_env_changed_by_pip_packs_with_one_warning_per_package_and_runs_pips_numpy(
        pip_changed, shm_chroot):
    prefix = pip_changed["prefix"]
    out = os.path.join(pip_changed["base"], "out")
    # the reference: conda-pack refuses this env (its issues 98, 197, 243...)
    cp = run([os.path.join(BIN, "conda-pack"), "-p", prefix, "-o",
              os.path.join(pip_changed["base"], "cp.tar.gz"), "-q"], timeout=900, check=False)
    assert cp.returncode != 0 and "numpy" in cp.stderr, cp.stdout + cp.stderr
    r = run(CLI + ["pack", prefix, "-o", out], timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    changed = [ln for ln in r.stderr.splitlines() if PIP_CHANGED in ln]
    assert len(changed) == 2, r.stderr
    numpy_rec, six_rec = sorted(pip_changed["records"])
    assert numpy_rec.startswith(f"numpy-{CONDA_NUMPY}-") and six_rec.startswith("six-")
    for rec, line in zip((numpy_rec, six_rec), changed):
        assert rec in line and "files" in line, line
    by_hand = [ln for ln in r.stderr.splitlines() if "removed outside conda" in ln]
    assert len(by_hand) == 1 and "pmbdemo-1.0-" in by_hand[0] and "1 of its files" in by_hand[0]
    script = (
        "import os, sys, numpy\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "t = os.environ['PYTHON_MPI_TREE']\n"
        "assert numpy.__file__.startswith(t + '/'), numpy.__file__\n"
        "try:\n"
        "    import six\n"
        "    raise SystemExit('six, which pip uninstalled, is in the tree: ' + six.__file__)\n"
        "except ImportError:\n"
        "    pass\n"
        "s = c.allreduce(float(numpy.arange(4.0).sum()) * (c.rank + 1), op=MPI.SUM)\n"
        "sys.stdout.write(f'numpy {numpy.__version__} {s} {c.size}\\n')\n"
    )
    hide = hidden(conda_origin(), []) if can_hide() else None
    out_ = run_moved_away(prefix, out, shm_chroot, script, hide)
    assert out_.count(f"numpy {PIP_NUMPY} 18.0 2\n") == 2, out_
    nodes = os.listdir(os.path.dirname(shm_chroot.replace("%n", "0")))
    assert len(nodes) == 2, nodes


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A conda-layout env whose conda files were changed after conda
    installed them, so conda's records of which files hold the prefix (and
    how) no longer describe them: a data file conda recorded as holding no
    prefix now names the env's prefix, and the program conda recorded as a
    binary holding the prefix (padded strings) is now a shell script naming
    it (a user's wrapper, or a rebuild by hand)."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    base = tmp_path_factory.mktemp("edited-conda")
    prefix = condaenv.build(str(base / "conda"), sys.executable, [])
    for rel, text, mode in (
            ("share/pmbdemo/greeting.txt", f"hello from {prefix}/share/pmbdemo\n", 0o644),
            ("bin/pmbdemo", f"#!/bin/sh\necho \"data={prefix}/share/pmbdemo/greeting.txt\"\n",
             0o755)):
        path = os.path.join(prefix, rel)
        os.remove(path)  # a new file: conda hard-linked the old one from its package cache
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    return {"base": str(base), "prefix": prefix}


def test_conda_files_changed_since_install_are_scanned_for_the_prefix_not_trusted(
        edited, shm_chroot):
    prefix = edited["prefix"]
    out = os.path.join(edited["base"], "out")
    run(CLI + ["pack", prefix, "-o", out, "-q"], timeout=900)
    script = (
        "import os, subprocess, sys\n"
        "t = os.environ['PYTHON_MPI_TREE']\n"
        "with open(t + '/share/pmbdemo/greeting.txt') as f:\n"
        "    g = f.read()\n"
        "p = subprocess.run([t + '/bin/pmbdemo'], capture_output=True, text=True, timeout=60)\n"
        "assert p.returncode == 0, p.stderr\n"
        "sys.stdout.write(f'greeting={g.strip()}|{p.stdout.strip()}\\n'.replace(t, '<T>'))\n"
    )
    out_ = run_moved_away(prefix, out, shm_chroot, script)
    want = "greeting=hello from <T>/share/pmbdemo|data=<T>/share/pmbdemo/greeting.txt\n"
    assert out_.count(want) == 2, out_


@pytest.fixture(scope="module")
def pixi_env(tmp_path_factory):
    """A conda-layout env as pixi (rattler) leaves it: no conda-meta/history
    (pixi envs are declared, not mutated), ``link`` null in every record, and
    pixi's own conda-meta/pixi (JSON naming the manifest) and
    conda-meta/pixi_env_prefix (the env's path, plain text).  conda-pack's
    PR 305 and issue 413 are where these facts come from."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    base = tmp_path_factory.mktemp("pixi-conda")
    prefix = condaenv.build(str(base / "conda"), sys.executable, [])
    meta = os.path.join(prefix, "conda-meta")
    os.remove(os.path.join(meta, "history"))
    for fn in os.listdir(meta):
        with open(os.path.join(meta, fn)) as f:
            rec = json.load(f)
        rec["link"] = None
        with open(os.path.join(meta, fn), "w") as f:
            json.dump(rec, f, indent=1)
    with open(os.path.join(meta, "pixi"), "w") as f:
        json.dump({"manifest_path": str(base / "project" / "pixi.toml"),
                   "environment_name": "default", "pixi_version": "0.40.0",
                   "environment_lock_file_hash": "0" * 16}, f)
    with open(os.path.join(meta, "pixi_env_prefix"), "w") as f:
        f.write(prefix)
    return {"base": str(base), "prefix": prefix}


def test_pixi_env_without_conda_history_packs_and_runs_from_the_tree(pixi_env, shm_chroot):
    prefix = pixi_env["prefix"]
    out = os.path.join(pixi_env["base"], "out")
    r = run(CLI + ["pack", prefix, "-o", out, "-q"], timeout=900, check=False)
    assert r.returncode == 0 and not r.stderr, r.stderr
    script = (
        "import io, os, sys, contextlib, pmbdemo_py\n"
        "t = os.environ['PYTHON_MPI_TREE']\n"
        "o = io.StringIO()\n"
        "with contextlib.redirect_stdout(o):\n"
        "    pmbdemo_py.main()\n"
        "with open(t + '/conda-meta/pixi_env_prefix') as f:\n"
        "    p = f.read()\n"
        "assert sys.prefix == t and p == t, (sys.prefix, p, t)\n"
        "sys.stdout.write(o.getvalue().replace(t, '<T>').replace('\\n', '|') + '\\n')\n"
    )
    out_ = run_moved_away(prefix, out, shm_chroot, script)
    want = ("lib-data=<T>/share/pmbdemo/greeting.txt|data-dir=<T>/share/pmbdemo|"
            "greeting=hello from pmbdemo|\n")
    assert out_.count(want) == 2, out_


def test_a_moved_conda_env_keeps_its_binary_prefix_files_patchable(conda_env, tmp_path):
    """conda's records stay trusted for files a move rewrote as conda does
    (same size, prefix padded): relocate rewrites the prefix, so text files
    no longer match conda's sha256_in_prefix, and binary ones keep their
    size; packing the moved env still lists the binaries with conda's
    placeholder length, as for the original."""
    moved = str(tmp_path / "moved")
    run(CLI + ["relocate", conda_env, "-o", moved], timeout=600)
    run(CLI + ["pack", moved, "-o", str(tmp_path / "out"), "-q"], timeout=900)
    r = run(CLI + ["inspect", "--json", str(tmp_path / "out" / "moved.tar.zst")], timeout=60)
    pf = {p["path"]: p for p in json.loads(r.stdout)["prefix_files"]}
    for rel in ("bin/pmbdemo", "lib/libpmbdemo.so"):
        assert pf[rel]["mode"] == "binary" and len(pf[rel]["placeholder"]) == 255, rel


def test_a_file_pip_now_owns_loses_condas_prefix_record(tmp_path):
    """conda recorded bin/tool as a binary holding the prefix; pip's RECORD
    (a package pip installed later, over it) now lists it: it is pip's, and
    conda's record no longer says how to rewrite it.  A conda-recorded
    dist-info (INSTALLER conda) claims nothing; a lib/python3.1 link to the
    lib/python3.11 directory does not list pip's files twice."""
    from python_mpi_bcast.source import conda
    prefix = str(tmp_path / "env")
    site = os.path.join(prefix, "lib", "python3.11", "site-packages")
    for d in ("conda-meta", "bin", os.path.join(site, "tool-2.dist-info"),
              os.path.join(site, "old-1.dist-info")):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    files = {"bin/tool": "#!/bin/sh\n", "bin/other": "\0",
             "lib/python3.11/site-packages/tool-2.dist-info/INSTALLER": "pip\n",
             "lib/python3.11/site-packages/tool-2.dist-info/RECORD":
                 "../../../bin/tool,,\ntool-2.dist-info/INSTALLER,,\ntool-2.dist-info/RECORD,,\n",
             "lib/python3.11/site-packages/old-1.dist-info/INSTALLER": "conda\n",
             "lib/python3.11/site-packages/old-1.dist-info/RECORD": "../../../bin/other,,\n"}
    for rel, text in files.items():
        with open(os.path.join(prefix, rel), "w") as f:
            f.write(text)
    paths = [{"_path": "bin/tool", "file_mode": "binary", "prefix_placeholder": "/ph" * 20,
              "path_type": "hardlink", "size_in_bytes": 10},
             {"_path": "bin/other", "file_mode": "binary", "prefix_placeholder": "/ph" * 20,
              "path_type": "hardlink", "size_in_bytes": 1},
             {"_path": "lib/python3.11/site-packages/old-1.dist-info/INSTALLER"},
             {"_path": "lib/python3.11/site-packages/old-1.dist-info/RECORD"}]
    with open(os.path.join(prefix, "conda-meta", "old-1-0.json"), "w") as f:
        json.dump({"name": "old", "version": "1", "build": "0",
                   "files": [p["_path"] for p in paths],
                   "paths_data": {"paths": paths, "paths_version": 1}}, f)
    os.symlink("python3.11", os.path.join(prefix, "lib", "python3.1"))  # as conda's python has
    env = conda.read_env(prefix)
    assert env.pip_owned == {"bin/tool", "lib/python3.11/site-packages/tool-2.dist-info/INSTALLER",
                             "lib/python3.11/site-packages/tool-2.dist-info/RECORD"}
    assert set(env.prefix_files) == {"bin/other"}
    assert len(env.warnings) == 1 and "conda package old 1" in env.warnings[0], env.warnings
    assert "1 of its files are now pip's; pip replaced/removed them" in env.warnings[0]


def test_migrating_a_conda_env_changed_by_pip_writes_specs_of_what_is_on_disk(
        pip_changed, tmp_path):
    """environment.yml is how the user recreates the env elsewhere: numpy
    as pip put it there (under pip:, its version), not conda's record of the
    numpy pip replaced; six, which pip uninstalled, not at all."""
    prefix = pip_changed["prefix"]
    specs = str(tmp_path / "specs")
    r = run(CLI + ["migrate", "-d", os.path.dirname(prefix), os.path.basename(prefix),
                   "--to", str(tmp_path / "new"), "--keep", "--specs", specs],
            timeout=1200, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    yml = open(os.path.join(specs, "demo", "environment.yml")).read()
    deps = yml.split("dependencies:\n", 1)[1].splitlines()
    assert f"    - numpy=={PIP_NUMPY}" in deps, yml
    assert not [d for d in deps if d.startswith("  - ") and "numpy" in d], yml
    assert not [d for d in deps if not d.lstrip().startswith("#") and "six" in d], yml
    assert [d for d in deps if d.startswith("  # six=1.17.0=") and "pip uninstalled" in d], yml
    assert "  - conda-forge::pmbdemo=1.0=h_pmb_0" in deps, yml
    req = open(os.path.join(specs, "demo", "requirements.txt")).read()
    assert f"\nnumpy=={PIP_NUMPY}\n" in req and "six" not in req, req
    assert os.path.isdir(prefix)  # --keep


def test_a_changed_binary_that_still_names_the_env_gets_one_line(tmp_path):
    """conda recorded bin/pmbdemo as a binary holding the env's prefix; the
    file changed since (here: bytes appended, as a rebuild or a patch tool
    would change its size), so the record is void and the binary is packed
    as it is, still naming the env's location: one line says so and what to
    do, instead of a tree that silently reads from the shared filesystem."""
    from support import condaenv
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    prefix = condaenv.build(str(tmp_path / "conda"), sys.executable, [])
    path = os.path.join(prefix, "bin", "pmbdemo")
    with open(path, "rb") as f:
        data = f.read()
    assert prefix.encode() in data
    os.remove(path)  # conda hard-linked it from its package cache
    with open(path, "wb") as f:
        f.write(data + b"\0" * 64)
    os.chmod(path, 0o755)
    for cmd in (["pack", prefix, "-o", str(tmp_path / "out")], ["save", "chg", "--venv", prefix]):
        r = run(CLI + cmd, timeout=900)
        lines = [ln for ln in r.stderr.splitlines() if "bin/pmbdemo" in ln]
        assert len(lines) == 1, r.stderr
        assert "pmbdemo-1.0-h_pmb_0" in lines[0] and f"still names {prefix}" in lines[0], lines
        assert "reinstall that package with conda" in lines[0], lines


NOARCH_MAIN = ("import os, sys\ndef main():\n"
               "    print('pmbnoarch from ' + os.path.dirname(__file__))\n    return 0\n")


@pytest.fixture(scope="module")
def noarch_env(tmp_path_factory):
    """A conda-layout env with ``noarch: python`` packages as conda installs
    them (condaenv.install_noarch_python_as_conda): pmbnoarch, recorded as
    conda < 4.4 did (paths_data naming the package's site-packages/...
    paths, files the installed ones), with a text file holding the prefix
    and an entry point; six from its real wheel (conda-forge's six is
    noarch: python), recorded as conda does now, which the user then
    reinstalled with pip (``pip install --force-reinstall``)."""
    from support import condaenv
    import zipfile
    if condaenv.unavailable():
        pytest.skip(condaenv.unavailable())
    base = tmp_path_factory.mktemp("noarch-conda")
    root = str(base / "conda")
    prefix = condaenv.build(root, sys.executable, [])
    dist = "site-packages/pmbnoarch-1.0.dist-info"
    old = condaenv.install_noarch_python_as_conda(
        root, prefix, "pmbnoarch", "1.0", {
            "site-packages/pmbnoarch/__init__.py": NOARCH_MAIN,
            "site-packages/pmbnoarch/where.py": 'PREFIX = "PLACEHOLDER"\n',
            f"{dist}/METADATA": "Metadata-Version: 2.1\nName: pmbnoarch\nVersion: 1.0\n",
            f"{dist}/INSTALLER": "conda\n",
            f"{dist}/RECORD": "pmbnoarch/__init__.py,,\npmbnoarch/where.py,,\n"
                              "pmbnoarch-1.0.dist-info/METADATA,,\n"
                              "pmbnoarch-1.0.dist-info/INSTALLER,,\n"
                              "pmbnoarch-1.0.dist-info/RECORD,,\n",
            "python-scripts/pmbnoarch-data": "#!/bin/sh\necho data\n"},
        {"pmbnoarch": "pmbnoarch:main"}, prefix_texts=("site-packages/pmbnoarch/where.py",),
        old_conda=True)
    wheels = str(base / "wheels")
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--no-deps", "-d", wheels, "six==1.17.0"], timeout=600)
    with zipfile.ZipFile(glob.glob(os.path.join(wheels, "six-*.whl"))[0]) as z:
        six_files = {f"site-packages/{n}": z.read(n).decode() for n in z.namelist()}
    six_files["site-packages/six-1.17.0.dist-info/INSTALLER"] = "conda\n"
    six_files["site-packages/six-1.17.0.dist-info/RECORD"] += "six-1.17.0.dist-info/INSTALLER,,\n"
    six = condaenv.install_noarch_python_as_conda(root, prefix, "six", "1.17.0", six_files, {})
    py = os.path.join(prefix, "bin", "python3")
    r = run([py, "-c", "import six, pmbnoarch.where as w; print(w.PREFIX)"], timeout=120)
    assert r.stdout.strip() == prefix
    run([sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check", "install",
         "-q", "--no-compile", "--no-deps", "--force-reinstall", "six==1.17.0"], timeout=600)
    return {"base": str(base), "prefix": prefix, "old": old, "six": six}


def test_noarch_python_packages_map_to_the_site_directory_and_run_from_the_tree(
        noarch_env, shm_chroot):
    """conda's records of noarch: python packages name the installed paths
    (lib/pythonX.Y/site-packages/..., bin/...), or, written by conda < 4.4,
    the package's own (site-packages/..., python-scripts/...): either way
    they describe the files on disk, so nothing is 'gone', the recorded
    prefix file is the installed one, and a noarch package pip reinstalled
    is pip's.  Ranks import both and run the entry point from the tree."""
    from python_mpi_bcast.source import conda
    prefix = noarch_env["prefix"]
    site = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    env = conda.read_env(prefix)
    assert not [p for p in env.managed if p.startswith(("site-packages/", "python-scripts/"))]
    assert f"{site}/pmbnoarch/where.py" in env.prefix_files
    assert "bin/pmbnoarch-data" in env.managed and "bin/pmbnoarch" in env.managed
    assert f"{site}/six.py" in env.pip_owned
    out = os.path.join(noarch_env["base"], "out")
    r = run(CLI + ["pack", prefix, "-o", out], timeout=900)
    said = [ln for ln in r.stderr.splitlines() if "conda package" in ln]
    assert len(said) == 1 and noarch_env["six"] in said[0] and "now pip's" in said[0], r.stderr
    assert "gone" not in said[0], said
    script = (
        "import os, subprocess, sys, six, pmbnoarch, pmbnoarch.where\n"
        "t = os.environ['PYTHON_MPI_TREE']\n"
        "assert pmbnoarch.where.PREFIX == t, (pmbnoarch.where.PREFIX, t)\n"
        "assert six.__file__.startswith(t + '/'), six.__file__\n"
        "p = subprocess.run([t + '/bin/pmbnoarch'], capture_output=True, text=True, timeout=60)\n"
        "q = subprocess.run([t + '/bin/pmbnoarch-data'], capture_output=True, text=True,\n"
        "                   timeout=60)\n"
        "assert p.returncode == 0 and q.returncode == 0, p.stderr + q.stderr\n"
        "sys.stdout.write((p.stdout + q.stdout).replace(t, '<T>').replace('\\n', '|') + '\\n')\n"
    )
    out_ = run_moved_away(prefix, out, shm_chroot, script)
    want = f"pmbnoarch from <T>/{site}/pmbnoarch|data|\n"
    assert out_.count(want) == 2, out_
