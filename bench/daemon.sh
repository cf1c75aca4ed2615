# Sourced by the bench scripts (after scripts/setup.sh): builds chaserfs and starts a daemon on
# a fresh data dir in WORK (/var/tmp/chaserfs-NAME.XXXXXX, NAME the first argument) on a random
# loopback port, stopped and removed on exit. Sets WORK, URL, KEY and DAEMON, and defines
# `api METHOD PATH [BODY]`. CHASERFS_BIN runs another build instead (a before/after comparison).
if [ -z "${CHASERFS_BIN:-}" ]; then
    cargo build --release --bin chaserfs -q
    CHASERFS_BIN="$CARGO_TARGET_DIR/release/chaserfs"
fi
WORK="$(mktemp -d "/var/tmp/chaserfs-$1.XXXXXX")"
PORT=$((20000 + RANDOM % 20000))
URL="http://127.0.0.1:$PORT"
"$CHASERFS_BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    --mount-root "$WORK/mnt" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
cleanup() { kill -TERM "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
until curl -sf "$URL/healthz" >/dev/null; do sleep 0.1; done
KEY="$(cat "$WORK/data/api-key")"
api() { curl -sf -X "$1" "$URL$2" -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" ${3:+-d "$3"}; }
