#!/bin/bash
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --time=00:10:00
# Two job steps with any MPI: stage once, then start the staged interpreter
# directly (no embedding).  A second python-mpi step in the same allocation
# with the same packages reads and sends nothing: the tree is reused.
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"
# at the end, failed or not: remove the tree from every node's memory
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' EXIT

TREE="$(srun --kill-on-bad-exit=1 python-mpi --stage-only)"   # prints the staged tree
# the staged interpreter's mpi4py uses python-mpi's MPI library (recorded
# beside the tree by the staging step): no LD_LIBRARY_PATH needed
srun --kill-on-bad-exit=1 "$TREE/bin/python3" "$PROJECT/my_script.py" --steps 10
