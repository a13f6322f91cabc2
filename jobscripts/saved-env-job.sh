#!/bin/bash
#SBATCH --job-name=python-mpi-saved-env
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --time=00:10:00
# Launch an environment saved in the cache, as it is: the cache is a package
# root and a saved environment is one package holding its interpreter.
# Saved on the login node with:
#   python-mpi-bcast save science --venv $HOME/envs/science
# Submit with: sbatch jobscripts/saved-env-job.sh
set -euo pipefail

export PYTHON_MPI_PKGROOT="${PYTHON_MPI_BCAST_CACHE:-$HOME/.local/share/python-mpi-bcast/envs}"
export PYTHON_MPI_PACKAGES=science.tar.zst
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"
export PYTHON_MPI_VERBOSE=1
export PYTHON_MPI_CLEANUP=1
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' ERR

cd "${SCRATCH:-$PWD}"
srun --kill-on-bad-exit=1 python-mpi "$PROJECT/my_script.py" --steps 10
