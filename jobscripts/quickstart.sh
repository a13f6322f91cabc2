#!/bin/bash
# Quick start: from a fresh Debian/Ubuntu machine to numpy on 8 MPI ranks
# spread over 4 simulated nodes, with timings.
#   1. set up: system packages, .venv with MPICH + mpi4py from PyPI, the launcher
#   2. make a demo venv with numpy and mpi4py (as a user would on a login node)
#   3. pack its interpreter and the venv into packages
#   4. run the demo with python-mpi (staged to node-local memory) and, for
#      comparison, with the plain venv
#   5. count the calls each run makes on the "shared filesystem" (the demo
#      venv and the package root) with strace (benchmarks/filecalls.py)
#   6. where FUSE is available (root, /dev/fuse, fuse3 and libfuse3-dev), run
#      both again with the demo directory on a simulated slow shared
#      filesystem (benchmarks/slowfs.c: PMB_DEMO_LATENCY_US per metadata
#      operation, default 200, one metadata server)
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
plain_run() {
  LD_LIBRARY_PATH="$PWD/.venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    mpiexec -n "$RANKS" "$WORK/venv/bin/python" jobscripts/demo.py
}
plain_run
t1=$(date +%s.%N)
plain=$(python3 -c "print(round($t1 - $t0, 2))")
echo "== end to end: python-mpi ${staged} s (includes staging), plain venv ${plain} s"

# What the runs cost the shared filesystem: file calls (open, stat, ...)
# on the demo venv and the package root, counted with strace, per job.
count() {
  python3 benchmarks/filecalls.py count --total --root "$WORK/venv" --root "$WORK/pkgs" -- "$@"
}
n_staged=$(PYTHON_MPI_VERBOSE=0 count mpiexec -n "$RANKS" python-mpi jobscripts/demo.py)
n_plain=$(LD_LIBRARY_PATH="$PWD/.venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  count mpiexec -n "$RANKS" "$WORK/venv/bin/python" jobscripts/demo.py)
echo "== shared-filesystem calls per job (strace: open, stat, ... on the venv and the package root):"
python3 -c "import sys; s, p, r = map(int, sys.argv[1:]); \
print(f'   python-mpi {s:,} (rank 0 reads the packages once), plain venv {p:,} ({p // r:,} per rank x {r})')" \
  "$n_staged" "$n_plain" "$RANKS"
echo "   (on a local disk the plain venv is fast; on a shared filesystem every one of"
echo "    those calls queues at the metadata server, for every rank: see benchmarks/)"

# The same two runs with the demo directory on a simulated slow shared filesystem.
LATENCY="${PMB_DEMO_LATENCY_US:-200}"
if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null ||
   ! pkg-config --exists fuse3 2>/dev/null ||
   ! cc -O2 benchmarks/slowfs.c -o "$WORK/slowfs" $(pkg-config --cflags --libs fuse3) 2>/dev/null; then
  echo "== slow shared filesystem demo skipped: needs root, /dev/fuse, fuse3 and libfuse3-dev"
  exit 0
fi
"$WORK/slowfs" "$WORK" "$WORK" "$LATENCY" -f 2>/dev/null &
slowfs=$!
unmount() {  # slowfs ends by itself once unmounted
  fusermount3 -u "$WORK" 2>/dev/null || fusermount3 -u -z "$WORK" 2>/dev/null || true
  kill "$slowfs" 2>/dev/null || true
  wait "$slowfs" 2>/dev/null || true
  rm -rf "/dev/shm/python-mpi-demo.$$"
}
trap unmount EXIT
for _ in $(seq 100); do grep -q " $WORK fuse" /proc/mounts && break; sleep 0.05; done
if ! grep -q " $WORK fuse" /proc/mounts; then
  echo "== slow shared filesystem demo skipped: FUSE could not mount here"
  exit 0
fi
t0=$(date +%s.%N)
PYTHON_MPI_VERBOSE=0 mpiexec -n "$RANKS" python-mpi jobscripts/demo.py >/dev/null
t1=$(date +%s.%N)
plain_run >/dev/null
t2=$(date +%s.%N)
echo "== on a simulated slow shared filesystem ($LATENCY µs per metadata operation, one server):"
echo "   python-mpi $(python3 -c "print(round($t1 - $t0, 2))") s (includes staging)," \
  "plain venv $(python3 -c "print(round($t2 - $t1, 2))") s"
