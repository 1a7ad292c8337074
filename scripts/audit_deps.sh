#!/usr/bin/env bash
# Dependency audit (CI runs it after the tests): pip-audit, in a venv of its own, over every package
# installed in .venv. Fails on findings that configs/pip_audit_triage.yaml does not triage; passes with a
# WARNING when no vulnerability service (or no package index for pip-audit itself) can be reached.
set -uo pipefail
cd "$(dirname "$0")/.."

PIP_AUDIT_VERSION=2.10.1
TOOL="${RESTAR_PIP_AUDIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/restar/pip-audit-$PIP_AUDIT_VERSION}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$TOOL/bin/pip-audit" ]; then
    if ! { "$PYTHON" -m venv "$TOOL" && "$TOOL/bin/python" -m pip install --quiet "pip-audit==$PIP_AUDIT_VERSION"; }; then
        echo "WARNING: dependency audit not done: pip-audit $PIP_AUDIT_VERSION could not be installed" >&2
        exit 0
    fi
fi
SITE_PACKAGES=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
exec .venv/bin/python scripts/audit_deps.py --pip-audit "$TOOL/bin/pip-audit" --site-packages "$SITE_PACKAGES" "$@"
