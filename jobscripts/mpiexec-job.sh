#!/bin/bash
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --time=00:10:00
# mpiexec instead of srun (MPICH's hydra; inside a Slurm job it starts its
# proxies with srun, elsewhere give it -hosts or a host file).  Nothing else
# changes: python-mpi takes the place of python.
set -euo pipefail

export PYTHON_MPI_PKGROOT="$PROJECT/pkgs"
export PYTHON_MPI_PACKAGES="python-3.11.tar.zst:science.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/$SLURM_JOB_ID"
export PYTHON_MPI_VERBOSE=1
export PYTHON_MPI_CLEANUP=1
trap 'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 python-mpi-bcast clean --all' ERR

mpiexec -n "$SLURM_NTASKS" python-mpi "$PROJECT/my_script.py" --steps 10
