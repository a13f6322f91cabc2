#!/bin/bash
# Run all benchmarks: bash benchmarks/run.sh [--quick] [--out DIR]
# Writes DIR/report.md (tables) and PNG plots; default DIR is
# benchmarks/results/<date> (not committed).  Needs root for the FUSE part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# benchmark-only dependency: plots
.venv/bin/python -m pip install -q matplotlib 2>&1 | grep -v '^WARNING: Location' || true
# the tests' helpers (tests/helpers.py, tests/support/) and the benchmark
# modules, as pyproject.toml's pytest pythonpath gives them to the tests
export PYTHONPATH="$PWD/tests:$PWD/benchmarks"
exec .venv/bin/python benchmarks/run.py "$@"
