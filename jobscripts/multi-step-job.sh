#!/bin/bash
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --time=00:30:00
# Several job steps from one staged tree: the first python-mpi step stages
# the packages into every node's memory, the later ones find the tree there
# and read and send nothing.  At the end, failed or not, a step removes the
# tree on every node.
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"
export PYTHON_MPI_VERBOSE=1
# one task per node: remove the staged tree (and anything a killed step left)
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' EXIT

for steps in 1 2 3; do
  srun --kill-on-bad-exit=1 python-mpi "$PROJECT/my_script.py" --steps "$steps"
done
