"""Every example in README.rst and jobscripts/ runs, so none goes stale.

Slurm is not installed here: a stand-in ``srun`` on PATH turns
``srun -n N cmd`` into ``mpiexec -n min(N, 4) cmd`` over 2 simulated nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid

import pytest

from conftest import BIN, REPO, run

SRUN = """#!/bin/bash
n=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2;;
    --ntasks=*) n=${1#*=}; shift;;
    -*) shift;;
    *) break;;
  esac
done
[ "$n" -gt "${PMB_SRUN_MAX:-4}" ] && n=${PMB_SRUN_MAX:-4}
exec mpiexec -n "$n" "$@"
"""

MY_SCRIPT = """import argparse, numpy as np
from mpi4py import MPI
p = argparse.ArgumentParser(); p.add_argument("--steps", type=int, default=1)
p.add_argument("--its-args", action="store_true")
a = p.parse_args()
c = MPI.COMM_WORLD
x = c.allreduce(float(np.ones(a.steps).sum()))
if c.rank == 0:
    print(f"my_script: {c.size} ranks, total {x}")
"""

needs_311 = pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                               reason="the examples name python-3.11.tar.zst")


@pytest.fixture
def sandbox(tmp_path, demo_venv):
    """HOME, PROJECT, a Slurm job id and a stand-in srun, like a cluster."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "srun").write_text(SRUN)
    (shim / "srun").chmod(0o755)
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    (project / "my_script.py").write_text(MY_SCRIPT)
    job = "pmbtest" + uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_MPI_", "SLURM_"))}
    env.update(HOME=str(home), PROJECT=str(project), SLURM_JOB_ID=job, SLURM_NTASKS="4",
               MPIR_CVAR_NUM_CLIQUES="2", PATH=f"{shim}:{BIN}:{env['PATH']}",
               LD_LIBRARY_PATH=os.path.join(os.path.dirname(BIN), "lib"))
    yield {"env": env, "home": home, "project": project, "tmp": tmp_path}
    shutil.rmtree(f"/dev/shm/{job}", ignore_errors=True)


def readme_blocks() -> list[str]:
    text = open(os.path.join(REPO, "README.rst")).read()
    blocks = []
    for m in re.finditer(r"^\.\. code-block:: bash\n\n((?:   .*\n|\n)+)", text, re.M):
        blocks.append("\n".join(line[3:] for line in m.group(1).splitlines()))
    return blocks


def readme_block(*words: str) -> str:
    """The one README example that holds all these words."""
    (block,) = [b for b in readme_blocks() if all(w in b for w in words)]
    return block


def test_readme_has_the_examples_we_run():
    blocks = readme_blocks()
    assert len(blocks) == 6  # the three install examples run in test_install.py
    assert "bash jobscripts/quickstart.sh" in blocks[0] and "bash tests/run.sh" in blocks[0]


@needs_311
def test_readme_pack_and_job_examples(sandbox):
    """The pack and job examples (the quick start block is the next test;
    its second line is this very test suite)."""
    script = ("set -euo pipefail\n" + readme_block("python-mpi-bcast pack") + "\n"
              + readme_block("srun -n 4096 python-mpi") + "\n")
    r = run(["bash", "-c", script], env=sandbox["env"], cwd=str(sandbox["project"]), timeout=900,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kind:          environment" in r.stdout
    assert "OK (" in r.stdout  # verify
    assert "my_script: 4 ranks, total 4.0" in r.stdout


def test_quickstart(tmp_path):
    env = dict(os.environ, PMB_SKIP_SETUP="1", PMB_DEMO_DIR=str(tmp_path / "demo"),
               PMB_DEMO_RANKS="4", PMB_DEMO_NODES="2")
    env.pop("PYTHON_MPI_CHROOT", None)
    r = run(["bash", os.path.join(REPO, "jobscripts", "quickstart.sh")], env=env, timeout=900,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "distinct sys.prefix (one per node when staged): 2" in r.stdout
    assert "python-mpi: stage: 2 package(s)" in r.stderr
    assert "== end to end: python-mpi" in r.stdout
    assert not [d for d in os.listdir("/dev/shm") if d.startswith("python-mpi-demo.")
                and os.path.exists(f"/dev/shm/{d}/node-0")]


@pytest.fixture
def science_pkgs(sandbox, demo_venv):
    pkgs = sandbox["project"] / "pkgs"
    cli = [os.path.join(BIN, "python-mpi-bcast")]
    run(cli + ["pack", "--python", demo_venv, "-o", str(pkgs), "-q"], timeout=600)
    run(cli + ["pack", demo_venv, "-n", "science", "-o", str(pkgs), "-q"], timeout=600)
    return pkgs


@needs_311
def test_slurm_job_script(sandbox, science_pkgs):
    env = dict(sandbox["env"], SCRATCH=str(sandbox["tmp"]))
    r = run(["bash", os.path.join(REPO, "jobscripts", "slurm-job.sh")], env=env, timeout=300,
            check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "my_script: 4 ranks, total 40.0" in r.stdout
    assert "python-mpi: stage:" in r.stderr
    job_dir = f"/dev/shm/{env['SLURM_JOB_ID']}"
    assert not os.path.exists(job_dir) or not any(e.startswith("env-") for e in os.listdir(job_dir))


@needs_311
def test_two_step_job_script(sandbox, science_pkgs):
    r = run(["bash", os.path.join(REPO, "jobscripts", "two-step-job.sh")], env=sandbox["env"],
            timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "my_script: 4 ranks, total 40.0" in r.stdout
