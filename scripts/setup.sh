#!/usr/bin/env bash
# Create .venv (Python 3.11) and install Re*Star with its dev tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first and exactly: 2.13.0 is a CPU build on local disk; anything looser may pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet 'torch==2.13.0'
.venv/bin/python -m pip install --quiet -e '.[dev]'
