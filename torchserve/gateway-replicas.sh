#!/bin/sh
# The replica gateway of docker-compose (service gateway-replicas, image nginx:1.27-alpine: no Python).
# Renders torchserve/nginx.replicas.conf exactly as restar.serving.replicas.render_replica_gateway does (a test
# compares the two) from each replica's key_file.json, runs nginx, and keeps the config current:
#   every RESTAR_CHECK_S seconds (2) it renders again and reloads nginx when something changed (a
#   replica restarted: new keys); every RESTAR_RENEW_S seconds (2700) it asks each replica for a new
#   inference key (TorchServe's expire after token_expiration_min=60), one replica at a time, drained
#   meanwhile (TorchServe drops the old key at once and refuses it with a 400, which nginx cannot tell
#   from the handler's 400s, so it cannot retry those).
#
#   gateway-replicas.sh              run nginx in the foreground and keep its config current
#   gateway-replicas.sh render       print the config
#   gateway-replicas.sh drain NAME   take a replica out of rotation; returns once its requests are done
#   gateway-replicas.sh undrain NAME put it back (with the key it has now)
#
# Environment: RESTAR_REPLICAS (service names, "torchserve-1 torchserve-2"; each serves on NAME:8080,
# management NAME:8081 (RESTAR_INFERENCE_PORT, RESTAR_MANAGEMENT_PORT), and writes
# RESTAR_KEYS_DIR/NAME/key_file.json), RESTAR_GATEWAY_KEY (the one
# client key; made at random into RUN_DIR/gateway.key when unset), RESTAR_KEYS_DIR (/srv/restar-keys),
# RESTAR_TEMPLATE (/etc/restar/nginx.replicas.conf), RESTAR_RUN_DIR (/var/cache/nginx), RESTAR_LISTEN
# (0.0.0.0:8000), RESTAR_INTERNAL_BASE (8101: replica i's internal server on 127.0.0.1:8101+i).
set -eu
umask 077

replicas=${RESTAR_REPLICAS:?set RESTAR_REPLICAS to the replica service names}
keys_dir=${RESTAR_KEYS_DIR:-/srv/restar-keys}
template=${RESTAR_TEMPLATE:-/etc/restar/nginx.replicas.conf}
run_dir=${RESTAR_RUN_DIR:-/var/cache/nginx}
listen=${RESTAR_LISTEN:-0.0.0.0:8000}
internal_base=${RESTAR_INTERNAL_BASE:-8101}
inference_port=${RESTAR_INFERENCE_PORT:-8080}
management_port=${RESTAR_MANAGEMENT_PORT:-8081}
check_s=${RESTAR_CHECK_S:-2}
renew_s=${RESTAR_RENEW_S:-2700}
config="$run_dir/nginx.conf"
nginx_args="-p $run_dir/ -c $config -e stderr"

fail() {
    echo "gateway-replicas: $*" >&2
    exit 1
}

# $1 names a key $2 of URL-safe base64 characters, at least $3 long (TorchServe's: 8; ours: 16).
check_key() {
    case $2 in *[!A-Za-z0-9_=-]* | "") fail "$1 is not a key" ;; esac
    [ ${#2} -ge "$3" ] && [ ${#2} -le 256 ] || fail "$1 is not a key"
}

# $1: section ("inference", "API"), $2: a key_file.json as TorchServe writes it (Gson, pretty-printed).
file_key() {
    awk -F'"' -v section="$1" '$2 == section {inside = 1} inside && $2 == "key" {print $4; exit}' "$2"
}

gateway_key() {
    if [ -n "${RESTAR_GATEWAY_KEY:-}" ]; then
        key=$RESTAR_GATEWAY_KEY
    else
        [ -s "$run_dir/gateway.key" ] ||
            head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$run_dir/gateway.key"
        key=$(cat "$run_dir/gateway.key")
    fi
    case $key in *=*) fail "the gateway key is not a key" ;; esac
    check_key "the gateway key" "$key" 16
    echo "$key"
}

# One line per replica: NAME ADDRESS KEY DRAINED(0/1).
replica_table() {
    for name in $replicas; do
        key=$(file_key inference "$keys_dir/$name/key_file.json" 2>/dev/null) || key=""
        check_key "the inference key in $keys_dir/$name/key_file.json" "$key" 8
        drained=0
        is_drained "$name" && drained=1
        echo "$name $name:$inference_port $key $drained"
    done
}

render() {
    table=$(replica_table) || return 1
    gkey=$(gateway_key) || return 1
    echo "$table" | awk -v template="$template" -v listen="$listen" -v gkey="$gkey" -v base="$internal_base" '
        function fill(s, i) {
            if (s ~ /^[ \t]*#/) return s
            gsub(/@LISTEN@/, listen, s); gsub(/@GATEWAY_KEY@/, gkey, s)
            gsub(/@TRIES@/, n, s)
            if (i) {
                gsub(/@NAME@/, name[i], s); gsub(/@INTERNAL@/, "127.0.0.1:" (base + i - 1), s)
                gsub(/@ADDRESS@/, addr[i], s)
                gsub(/@KEY@/, key[i], s); gsub(/@DOWN@/, down[i], s)
            }
            return s
        }
        { n++; name[n] = $1; addr[n] = $2; key[n] = $3; down[n] = ($4 == 1) ? " down" : "" }
        END {
            served = ""
            for (i = 1; i <= n; i++)
                served = served (i > 1 ? ", " : "") name[i] " " addr[i] (down[i] ? " (drained)" : "")
            file = template; sub(/.*\//, "", file)
            print "# Rendered from torchserve/" file " (listen " listen "; " served "). Holds keys: mode 0600."
            inblock = 0
            while ((getline line < template) > 0) {
                t = line; gsub(/^[ \t]+|[ \t]+$/, "", t)
                if (!inblock && (t == "# @MEMBER_BEGIN@" || t == "# @REPLICA_BEGIN@")) {
                    inblock = 1; nb = 0; end = (t == "# @MEMBER_BEGIN@") ? "# @MEMBER_END@" : "# @REPLICA_END@"
                } else if (inblock && t == end) {
                    for (i = 1; i <= n; i++) for (j = 1; j <= nb; j++) print fill(block[j], i)
                    inblock = 0
                } else if (inblock) {
                    block[++nb] = line
                } else {
                    print fill(line, 0)
                }
            }
        }'
}

# Render into place; status 0 when the config changed. A key file missing or half-written (a replica
# restarting) keeps the current config until the next check.
update() {
    new="$config.new.$$"
    if ! render >"$new"; then
        rm -f "$new"
        echo "gateway-replicas: keeping the current config" >&2
        return 1
    fi
    if cmp -s "$new" "$config"; then
        rm -f "$new"
        return 1
    fi
    mv "$new" "$config"
}

# The pids of nginx's workers now, from /proc (not every nginx image has pgrep).
workers() {
    master=$(cat "$run_dir/nginx.pid")
    for stat in /proc/[0-9]*/stat; do
        fields=$(cat "$stat" 2>/dev/null) || continue # gone meanwhile
        # shellcheck disable=SC2086 # split into fields after "(comm) ", which may hold spaces
        set -- ${fields##*) }
        if [ "$2" = "$master" ]; then
            pid=${stat#/proc/}
            echo "${pid%/stat}"
        fi
    done
}

# Reload and wait until the old workers have finished their requests (a drained replica then gets none).
reload() {
    # shellcheck disable=SC2086
    nginx $nginx_args -t -q || fail "nginx refuses the new config; the old one still serves"
    old=$(workers)
    # shellcheck disable=SC2086
    nginx $nginx_args -s reload
    for pid in $old; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
}

refresh() {
    if update; then reload; fi
}

# One render-and-reload at a time: the loop and a drain (docker compose exec ... drain NAME) take this
# lock, so a drain returns only after the reload that carries it, and a render of the old list of
# drained replicas cannot land after it.
locked() {
    exec 9>"$run_dir/lock"
    flock 9
    "$@"
    exec 9>&-
}

is_drained() { grep -qx "$1" "$run_dir/drained" 2>/dev/null; }

drain() {
    is_drained "$1" || echo "$1" >>"$run_dir/drained"
    refresh
}

undrain() {
    grep -vx "$1" "$run_dir/drained" >"$run_dir/drained.new" || true
    mv "$run_dir/drained.new" "$run_dir/drained"
    refresh
}

renew_keys() {
    for name in $replicas; do
        api=$(file_key API "$keys_dir/$name/key_file.json") || continue
        was_drained=0
        if is_drained "$name"; then was_drained=1; else locked drain "$name"; fi
        wget -q -O /dev/null --header "Authorization: Bearer $api" "http://$name:$management_port/token?type=inference" ||
            echo "gateway-replicas: could not renew the key of $name" >&2
        if [ "$was_drained" = 0 ]; then locked undrain "$name"; else locked refresh; fi
    done
}

run() {
    update || true
    # shellcheck disable=SC2086
    nginx $nginx_args -g 'daemon off;' &
    nginx_pid=$!
    trap 'kill -TERM "$nginx_pid"; wait "$nginx_pid"; exit 0' TERM INT
    since_renew=0
    while kill -0 "$nginx_pid" 2>/dev/null; do
        sleep "$check_s" &
        wait $! || true
        since_renew=$((since_renew + check_s))
        if [ "$since_renew" -ge "$renew_s" ]; then
            renew_keys
            since_renew=0
        else
            locked refresh
        fi
    done
    wait "$nginx_pid"
}

case ${1:-run} in
run) run ;;
render) render ;;
drain)
    [ -n "${2:-}" ] || fail "drain which replica?"
    locked drain "$2"
    ;;
undrain)
    [ -n "${2:-}" ] || fail "undrain which replica?"
    locked undrain "$2"
    ;;
*) fail "unknown command: $1 (run, render, drain NAME, undrain NAME)" ;;
esac
