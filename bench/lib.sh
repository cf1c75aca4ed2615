# Sourced by every bench script (after scripts/setup.sh, from the checkout's root): the one
# argument parser and the one daemon start of the shell benches.
#
#   bench_args USAGE SPEC... -- "$@"
#       Parses the script's arguments. Each SPEC is `--flag=VAR` (`--flag VALUE` sets VAR) or a
#       bare `VAR` (the one positional argument sets VAR); defaults are the script's, set
#       before. Common to every script: `--chaserfs PATH` (the same as CHASERFS_BIN) and
#       `-h`/`--help`. Anything else prints `usage: SCRIPT USAGE` and exits 2.
#   bench_work NAME
#       Builds chaserfs unless CHASERFS_BIN names another build (a before/after comparison),
#       and makes WORK (/var/tmp/chaserfs-NAME.XXXXXX), removed at exit by `cleanup` (the
#       EXIT trap) after every daemon has stopped and each command in BENCH_AT_EXIT has run.
#   bench_daemon DIR [PORT [SERVE_FLAG...]]
#       Starts `$CHASERFS_BIN serve` with its data in DIR/data, mounts under DIR/mnt and its
#       log in DIR/daemon.log, on 127.0.0.1:PORT (a random port if empty or missing), and
#       waits for /healthz. Sets DAEMON (its pid), PORT, URL, and KEY (from DIR/data/api-key
#       when the daemon wrote one; set KEY first with --api-keys-file). Defines
#       `api METHOD PATH [BODY]` against it.

bench_usage() { echo "usage: $0 $BENCH_USAGE" >&2; exit 2; }

bench_args() {
    BENCH_USAGE=$1
    shift
    local -A flags=()
    local positional="" spec
    while [ "$1" != -- ]; do
        spec=$1
        shift
        case "$spec" in
            --*=*) flags[${spec%%=*}]=${spec#*=} ;;
            *) positional=$spec ;;
        esac
    done
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            -h | --help) echo "usage: $0 $BENCH_USAGE [--chaserfs PATH]"; exit 0 ;;
            --chaserfs) [ $# -ge 2 ] || bench_usage; CHASERFS_BIN=$2; shift 2 ;;
            --*)
                [ -n "${flags[$1]:-}" ] && [ $# -ge 2 ] || bench_usage
                printf -v "${flags[$1]}" '%s' "$2"
                shift 2
                ;;
            *)
                [ -n "$positional" ] || bench_usage
                printf -v "$positional" '%s' "$1"
                positional=""
                shift
                ;;
        esac
    done
}

BENCH_DAEMONS=()
BENCH_AT_EXIT=()

cleanup() {
    local p c
    for p in "${BENCH_DAEMONS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${BENCH_DAEMONS[@]}"; do wait "$p" 2>/dev/null || true; done
    for c in "${BENCH_AT_EXIT[@]}"; do "$c" || true; done
    rm -rf "$WORK"
}

bench_work() {
    if [ -z "${CHASERFS_BIN:-}" ]; then
        cargo build --release --bin chaserfs -q
        CHASERFS_BIN="$CARGO_TARGET_DIR/release/chaserfs"
    fi
    WORK="$(mktemp -d "/var/tmp/chaserfs-$1.XXXXXX")"
    trap cleanup EXIT
}

bench_daemon() {
    local dir=$1
    PORT=${2:-$((20000 + RANDOM % 20000))}
    shift $(($# < 2 ? $# : 2))
    URL="http://127.0.0.1:$PORT"
    mkdir -p "$dir"
    "$CHASERFS_BIN" serve --data-dir "$dir/data" --listen "127.0.0.1:$PORT" \
        --mount-root "$dir/mnt" "$@" >"$dir/daemon.log" 2>&1 &
    DAEMON=$!
    BENCH_DAEMONS+=("$DAEMON")
    until curl -sf "$URL/healthz" >/dev/null; do
        if ! kill -0 "$DAEMON" 2>/dev/null; then
            echo "$0: the daemon in $dir exited; its log:" >&2
            tail -n 20 "$dir/daemon.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [ -s "$dir/data/api-key" ]; then KEY="$(cat "$dir/data/api-key")"; fi
}

api() { curl -sf -X "$1" "$URL$2" -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" ${3:+-d "$3"}; }
