#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=32
#SBATCH --array=1-3
#SBATCH --time=00:10:00
# A job array whose tasks share one staged tree per node: the node directory
# is named after the array, not the task, so a task that lands on a node
# where another one staged (or is staging) the same packages reuses the tree
# (or waits for it) instead of unpacking again.  A tree stays while any task
# of the array that used it runs on the node; the next python-mpi start on
# the node after that gives it back (a task that fails removes what no
# running task holds).
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/pmb-array-$SLURM_ARRAY_JOB_ID"
export PYTHON_MPI_VERBOSE=1
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' ERR

srun --kill-on-bad-exit=1 python-mpi "$PROJECT/my_script.py" --steps "$SLURM_ARRAY_TASK_ID"
