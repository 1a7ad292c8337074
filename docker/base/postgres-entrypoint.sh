#!/bin/sh
# Entrypoint of restar-base/postgres (docker/base/build.sh): Debian's PostgreSQL 15 started the way the
# official postgres image starts, for the variables docker-compose.yml sets. On an empty $PGDATA it
# creates the cluster with POSTGRES_USER (default postgres) as superuser, password POSTGRES_PASSWORD
# (scram-sha-256 for every TCP client), and the database POSTGRES_DB (default: the user's name).
# Then it runs the command (default `postgres`) listening on all of the container's interfaces.
set -eu

bin=/usr/lib/postgresql/15/bin
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
shift || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-entrypoint: set POSTGRES_PASSWORD (the superuser's password)" >&2
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    "$bin/initdb" --username="$user" --pwfile="$password_file" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        "$bin/postgres" -c listen_addresses='' -c unix_socket_directories=/var/run/postgresql &
        pid=$!
        tries=0
        until "$bin/pg_isready" -q -h /var/run/postgresql -U "$user" -d postgres; do
            tries=$((tries + 1))
            [ "$tries" -lt 60 ] || { echo "postgres-entrypoint: the new cluster did not start" >&2; exit 1; }
            sleep 0.5
        done
        "$bin/createdb" -h /var/run/postgresql -U "$user" "$database"
        kill -INT "$pid"
        wait "$pid"
    fi
    echo "postgres-entrypoint: created the cluster in $PGDATA (user $user, database $database)"
fi

exec "$bin/postgres" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
