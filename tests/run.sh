#!/bin/bash
# The whole test suite, from a fresh machine: set up (.ci/setup), then pytest.
#   bash tests/run.sh [--all] [PYTEST ARGS...]
# --all also runs the tests marked 'slow' (the Debian MPI matrix), 'repeat' (the
# further cases of long matrices: tests/conftest.py REPRESENTATIVE) and
# 'extended' (real installs of the sdist against every MPI provider).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
exec .venv/bin/python -m pytest "$@"  # no paths given: testpaths (tests/)
