#!/bin/sh
# PID 1 of the TorchServe image. `torchserve --foreground` as PID 1 ignores SIGTERM, so `docker stop`
# had to SIGKILL it after 10 s; here SIGTERM or SIGINT runs `torchserve --stop` and waits for the
# server to end.
#
# Environment:
#   RESTAR_TS_WORKDIR   where TorchServe writes key_file.json (created when missing; default the
#                       image's WORKDIR), as the compose replicas use it
#   RESTAR_FOLLOW=1     follower mode (docs/follow.md): TorchServe starts with no
#                       model and config.follow.properties, and `restar follow` runs beside it,
#                       receiving the registry's webhooks on 0.0.0.0:8765 (MLFLOW_TRACKING_URI,
#                       RESTAR_WEBHOOK_SECRET, RESTAR_AUDIT_DB_URL; RESTAR_FOLLOW_POLL_S re-reads the
#                       alias every N seconds too). When either process ends, the container ends.
# Arguments go to `torchserve --start` after the image's defaults.
set -eu

home=/home/model-server
if [ -n "${RESTAR_TS_WORKDIR:-}" ]; then
    mkdir -p "$RESTAR_TS_WORKDIR"
    cd "$RESTAR_TS_WORKDIR"
fi
config=$home/config.properties
if [ "${RESTAR_FOLLOW:-}" = 1 ]; then
    config=$home/config.follow.properties
    rm -f key_file.json  # a stale one from an earlier run would hand the follower old keys
fi

torchserve --start --foreground --ncs --model-store "$home/model-store" --ts-config "$config" "$@" &
server=$!
follower=
requested=false
stop() {
    [ -z "$follower" ] || kill -TERM "$follower" 2>/dev/null || true
    torchserve --stop >/dev/null 2>&1 || kill -TERM "$server" 2>/dev/null || true
}
trap 'requested=true; stop' TERM INT

if [ "${RESTAR_FOLLOW:-}" = 1 ]; then
    tries=0
    until [ -s key_file.json ] || [ "$tries" -ge 600 ] || ! kill -0 "$server" 2>/dev/null; do
        tries=$((tries + 1))
        sleep 0.2
    done
    restar follow --host 0.0.0.0 --port 8765 --torchserve-management http://127.0.0.1:8081 \
        --key-file "$PWD/key_file.json" --model-store "$home/model-store" \
        ${RESTAR_FOLLOW_POLL_S:+--poll "$RESTAR_FOLLOW_POLL_S"} &
    follower=$!
    while kill -0 "$server" 2>/dev/null && kill -0 "$follower" 2>/dev/null; do
        sleep 1 &
        wait $! || true
    done
    stop
fi

# `wait` returns early when a trapped signal arrives; wait again for the server to finish stopping.
status=0
wait "$server" || status=$?
while kill -0 "$server" 2>/dev/null; do
    wait "$server" || status=$?
done
[ -z "$follower" ] || wait "$follower" || true
# Stopped on request (docker stop): a clean exit, whatever status TorchServe's launcher gave.
if $requested; then
    exit 0
fi
[ "$status" -ne 0 ] || status=1  # one of the two ended by itself: never a clean exit
exit "$status"
