#!/usr/bin/env bash
# Set up, then run the whole test suite (about 5 minutes on 2 cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system_deps.sh  # nginx, for the gateway tests
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
