#!/bin/bash
# The whole test suite, from a fresh machine: set up (.ci/setup), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
exec .venv/bin/python -m pytest tests "$@"
