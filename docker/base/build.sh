#!/usr/bin/env bash
# Local base images from Debian packages, for machines that cannot pull from Docker Hub
# (docs/containers.md). Each image is a debootstrap root (minbase) of one pinned Debian suite plus the
# packages below, imported with `docker import`:
#
#   restar-base/python:3.11-bookworm     Debian's python3 (3.11) + venv, for both Dockerfiles
#   restar-base/postgres:15-bookworm     Debian's postgresql-15, with docker/base/postgres-entrypoint.sh
#   restar-base/nginx:1.22-bookworm      Debian's nginx (+ wget, for torchserve/gateway-replicas.sh)
#
#   bash docker/base/build.sh [--rebuild] [python|postgres|nginx ...]   (all three by default; root)
#
# An image that exists already is kept unless --rebuild is given.
# Every package version that went into an image is recorded in docker/base/<name>.versions; a rebuild
# that installs other versions says which changed. DEBIAN_SUITE and DEBIAN_MIRROR override the suite
# (bookworm) and the mirror (the first deb.debian.org-style URI apt already uses, else deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")"

suite=${DEBIAN_SUITE:-bookworm}
apt_mirror() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '^(deb|URIs:) +https?://[^ ]+/debian/?$|^deb +https?://[^ ]+/debian/? ' | awk '{print $2}' | head -n 1
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror || true)}
mirror=${mirror:-http://deb.debian.org/debian}
# Where Dockerfiles, pip, apt, the entrypoints and the docs expect things; the same in every image.
common_env=(-c "ENV LANG=C.UTF-8" -c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

packages_of() {
    case $1 in
        python) echo "python3,python3-venv,ca-certificates" ;;
        postgres) echo "postgresql-15,ca-certificates" ;;
        nginx) echo "nginx,wget,ca-certificates" ;;
        *) echo "unknown image '$1' (python, postgres or nginx)" >&2; exit 2 ;;
    esac
}

tag_of() {
    case $1 in
        python) echo "restar-base/python:3.11-$suite" ;;
        postgres) echo "restar-base/postgres:15-$suite" ;;
        nginx) echo "restar-base/nginx:1.22-$suite" ;;
    esac
}

# What `docker import` sets besides the common environment, as the upstream images do (it takes no
# STOPSIGNAL: docker-compose.yml gives postgres its SIGINT, the fast shutdown).
config_of() {
    case $1 in
        python) printf '%s\n' 'CMD ["python3"]' ;;
        postgres)
            printf '%s\n' 'ENV PGDATA=/var/lib/postgresql/data' 'USER postgres' 'EXPOSE 5432' \
                'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]'
            ;;
        nginx) printf '%s\n' 'EXPOSE 80' 'CMD ["nginx", "-g", "daemon off;"]' ;;
    esac
}

# Image-specific touches inside the root before it is packed.
finish_root() {
    local name=$1 root=$2
    case $name in
        postgres)
            install -m 0755 postgres-entrypoint.sh "$root/usr/local/bin/docker-entrypoint.sh"
            ln -sf /usr/lib/postgresql/15/bin/postgres "$root/usr/local/bin/postgres"
            install -d -o "$(chroot "$root" id -u postgres)" -g "$(chroot "$root" id -g postgres)" -m 0700 \
                "$root/var/lib/postgresql/data"
            install -d -o "$(chroot "$root" id -u postgres)" -g "$(chroot "$root" id -g postgres)" -m 2775 \
                "$root/var/run/postgresql"
            ;;
        nginx)
            install -d "$root/var/cache/nginx"
            ln -sf /dev/stdout "$root/var/log/nginx/access.log"
            ln -sf /dev/stderr "$root/var/log/nginx/error.log"
            ;;
    esac
    # Neither apt's lists nor downloaded packages nor docs are needed at run time.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
}

build_one() {
    local name=$1 root started versions previous
    root=$(mktemp -d "${TMPDIR:-/tmp}/restar-base-$name.XXXXXX")
    trap 'rm -rf "$root"' RETURN
    started=$SECONDS
    debootstrap --variant=minbase --include="$(packages_of "$name")" "$suite" "$root" "$mirror" \
        >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    versions=$(chroot "$root" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort)
    finish_root "$name" "$root"

    local import_args=("${common_env[@]}") line
    while IFS= read -r line; do import_args+=(-c "$line"); done < <(config_of "$name")
    tar --numeric-owner --sort=name --mtime=@0 -C "$root" -c . \
        | docker import "${import_args[@]}" -m "debootstrap $suite ($mirror) + $(packages_of "$name")" - "$(tag_of "$name")" \
        >/dev/null

    previous=$(cat "$name.versions" 2>/dev/null || true)
    if [ -n "$previous" ] && [ "$previous" != "$versions" ]; then
        echo "$(tag_of "$name"): package versions differ from docker/base/$name.versions:"
        diff <(echo "$previous") <(echo "$versions") | grep '^[<>]' || true
    fi
    echo "$versions" >"$name.versions"
    local size
    size=$(docker image inspect -f '{{.Size}}' "$(tag_of "$name")")
    printf '%s  %s MB  %s packages  %ss  (%s %s)\n' "$(tag_of "$name")" "$((size / 1000000))" \
        "$(echo "$versions" | wc -l)" "$((SECONDS - started))" "$suite" "$(packages_of "$name")"
}

if [ "$(id -u)" -ne 0 ]; then
    echo "debootstrap needs root: sudo bash docker/base/build.sh" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (start dockerd)" >&2; exit 1; }

rebuild=false
names=()
for arg in "$@"; do
    case $arg in
        --rebuild) rebuild=true ;;
        *) names+=("$arg") ;;
    esac
done
[ "${#names[@]}" -gt 0 ] || names=(python postgres nginx)
for name in "${names[@]}"; do
    packages_of "$name" >/dev/null
done
# The images are built side by side: each is mostly waiting on the mirror and the disk.
pids=()
for name in "${names[@]}"; do
    if ! $rebuild && docker image inspect "$(tag_of "$name")" >/dev/null 2>&1; then
        echo "$(tag_of "$name")  exists, kept (--rebuild builds it again)"
        continue
    fi
    build_one "$name" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
exit "$failed"
