#!/usr/bin/env bash
# Set up (system packages, .venv, and Docker for the container tests), then run the whole test suite (about 60
# minutes on 2 cores, setup included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system_deps.sh  # nginx, wrk and chromium, for the gateway, load and screenshot tests
bash scripts/setup.sh
bash scripts/docker_setup.sh  # a Docker engine and `docker compose`, for the container tests (they skip without one)
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
