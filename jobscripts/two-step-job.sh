#!/bin/bash
# Two job steps with any MPI: stage once, then start the staged interpreter
# directly (no embedding).  A second python-mpi step in the same allocation
# with the same packages reads and sends nothing: the tree is reused.
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"

TREE="$(srun -n "$SLURM_NTASKS" python-mpi --stage-only)"   # prints the staged tree
# the staged interpreter is an ordinary Python; mpi4py in it needs the MPI
# library on LD_LIBRARY_PATH, as for any Python on the cluster
srun -n "$SLURM_NTASKS" "$TREE/bin/python3" "$PROJECT/my_script.py" --steps 10
