#!/bin/bash
# Quick start: from a fresh Debian/Ubuntu machine to numpy on 8 MPI ranks
# spread over 4 simulated nodes, with timings.
#   1. set up: system packages, .venv with MPICH + mpi4py from PyPI, the launcher
#   2. make a demo venv with numpy and mpi4py (as a user would on a login node)
#   3. pack its interpreter and the venv into packages
#   4. run the demo with python-mpi (staged to node-local memory) and, for
#      comparison, with the plain venv
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${PMB_SKIP_SETUP:-0}" = 1 ] || bash .ci/setup
export PATH="$PWD/.venv/bin:$PATH"
WORK="${PMB_DEMO_DIR:-$PWD/build/demo}"
RANKS="${PMB_DEMO_RANKS:-8}"
NODES="${PMB_DEMO_NODES:-4}"
mkdir -p "$WORK"

if [ ! -x "$WORK/venv/bin/python" ]; then
  echo "== creating the demo venv (numpy, mpi4py) in $WORK/venv"
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check numpy mpi4py \
    2>&1 | grep -v '^WARNING: Location' || true
fi
PYVER="$("$WORK/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

echo "== packing"
t0=$(date +%s.%N)
python-mpi-bcast pack --python "$WORK/venv" -o "$WORK/pkgs" --force --quiet
python-mpi-bcast pack "$WORK/venv" -n demo -o "$WORK/pkgs" --force --quiet
t1=$(date +%s.%N)
ls -l "$WORK/pkgs"
echo "pack: $(python3 -c "print(round($t1 - $t0, 2))") s"

echo "== python-mpi: $RANKS ranks on $NODES simulated nodes"
export PYTHON_MPI_PKGROOT="$WORK/pkgs"
export PYTHON_MPI_PACKAGES="python-$PYVER.tar.zst:demo.tar.zst"
export PYTHON_MPI_CHROOT="/dev/shm/python-mpi-demo.$$/node-%n"
export PYTHON_MPI_VERBOSE=1
export PYTHON_MPI_CLEANUP=1
export MPIR_CVAR_NUM_CLIQUES="$NODES"
trap 'rm -rf "/dev/shm/python-mpi-demo.$$"' EXIT
t0=$(date +%s.%N)
mpiexec -n "$RANKS" python-mpi jobscripts/demo.py
t1=$(date +%s.%N)
staged=$(python3 -c "print(round($t1 - $t0, 2))")

echo "== plain venv: $RANKS ranks"
t0=$(date +%s.%N)
# the demo venv has no MPI of its own: point mpi4py at the launcher's MPI,
# as a cluster's module system would
LD_LIBRARY_PATH="$PWD/.venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  mpiexec -n "$RANKS" "$WORK/venv/bin/python" jobscripts/demo.py
t1=$(date +%s.%N)
plain=$(python3 -c "print(round($t1 - $t0, 2))")
echo "== end to end: python-mpi ${staged} s (includes staging), plain venv ${plain} s"
echo "   (on a local disk the plain venv is fast; on a shared filesystem at scale it is not:"
echo "    see benchmarks/)"
