#!/usr/bin/env bash
# Set up (system packages, .venv, and Docker for the container tests), then run the whole test suite (45-50
# minutes on 2 cores, setup included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system_deps.sh  # nginx, wrk and chromium, for the gateway, load and screenshot tests
bash scripts/setup.sh
bash scripts/docker_setup.sh  # a Docker engine and `docker compose`, for the container tests (they skip without one)
export PATH="$PWD/.venv/bin:$PATH"
# The suite runs on RESTAR_TEST_WORKERS pytest-xdist workers, 2 by default (tests/conftest.py keeps each
# module, and the Docker modules together, on one worker; longest first); 0 runs it in this process.
workers=${RESTAR_TEST_WORKERS:-2}
# One compute thread per worker: OpenMP's threads spin while they wait, so two workers of two threads each
# on two cores slowed the smoke model's batch-1 forward from 6 ms to 209 ms (and its latency gate failed).
if [ "$workers" -gt 1 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
exec python -m pytest -n "$workers" --no-loadscope-reorder "$@"
