#!/usr/bin/env bash
# System packages the tests need besides Python's: nginx (the gateway in front of TorchServe), wrk
# (the load generator of scripts/bench_load.py) and chromium (headless screenshots of the MLflow UI and
# the release report) and the PostgreSQL server (the registry and audit-log tests start a throwaway
# cluster of their own: tests/postgres_kit.py). Installs Debian's nginx-light, wrk, chromium and
# postgresql with apt-get when one is missing and this runs as root; otherwise says what to install.
# Safe to run again.
set -euo pipefail

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v chromium >/dev/null || missing+=(chromium)
command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]}); the gateway, load, screenshot and PostgreSQL tests need them" >&2
    exit 0
fi

# The packages would start a system nginx on port 80 and PostgreSQL's `main` cluster on 5432 (which the
# tests never use); a policy-rc.d that refuses (as Docker images ship) keeps them from starting. Only
# added when none exists, and removed again.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
