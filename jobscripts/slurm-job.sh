#!/bin/bash
#SBATCH --job-name=python-mpi-example
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --time=00:10:00
# A Slurm batch script: numpy on every rank, started from node-local memory.
# Submit with: sbatch jobscripts/slurm-job.sh
# Packages were made on the login node with:
#   python-mpi-bcast pack --python $HOME/envs/science -o $PROJECT/pkgs
#   python-mpi-bcast pack $HOME/envs/science -o $PROJECT/pkgs
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"
export PYTHON_MPI_VERBOSE=1
export PYTHON_MPI_CLEANUP=1     # remove the node directory when the step ends
# a failing step ends the job without that clean-up: remove the trees then
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' ERR

# start scripts from a fast filesystem, not $HOME
cd "${SCRATCH:-$PWD}"
# one rank per task of the job; --kill-on-bad-exit: a killed rank ends the
# step instead of leaving the others waiting (add --mpi=pmi2 for MPICH if
# your site's MpiDefault is none)
srun --kill-on-bad-exit=1 python-mpi "$PROJECT/my_script.py" --steps 10
