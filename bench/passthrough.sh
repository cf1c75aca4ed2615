#!/usr/bin/env bash
# The FUSE passthrough trade on this machine (bench/passthrough.py says what runs where):
# what the read rows would gain if a mount handed committed files to the kernel's
# passthrough, and what the write rows would lose with it, since the kernel refuses
# passthrough on a mount with the writeback cache.
#
#   bash bench/passthrough.sh [--size-mib N] [--rounds N]   (default 1024 MiB, 3 rounds)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
SIZE_MIB=1024
ROUNDS=3
bench_args "[--size-mib N] [--rounds N]" --size-mib=SIZE_MIB --rounds=ROUNDS -- "$@"
for p in fio jq; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
bench_work passthrough
if [ -z "${FUSE_FLOOR:-}" ]; then
    cargo build --release -p chaserfs-bench --bin fuse-floor -q
    FUSE_FLOOR="$CARGO_TARGET_DIR/release/fuse-floor"
fi

# serve NAME ARGS...: a fuse-floor mount at $WORK/NAME, unmounted at exit.
MOUNTS=()
serve() {
    local name=$1; shift
    mkdir -p "$WORK/$name"
    "$FUSE_FLOOR" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    MOUNTS+=("$WORK/$name:$pid")
    until grep -q serving "$WORK/$name.log"; do
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
        sleep 0.1
    done
}
stop_mounts() {
    for m in "${MOUNTS[@]}"; do
        umount "${m%:*}" 2>/dev/null || umount -l "${m%:*}" 2>/dev/null || true
        kill "${m##*:}" 2>/dev/null || true
    done
}
BENCH_AT_EXIT+=(stop_mounts)

bench_daemon "$WORK"
api POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null
SID=$(api POST /v1/sessions "{\"workspace\":\"bench\",\"mountpoint\":\"$WORK/mnt/w\"}" | jq -r .id)
mkdir -p "$WORK/native" "$WORK/writes"
for d in "$WORK/native" "$WORK/mnt/w"; do
    fio --name=b --directory="$d" --rw=write --bs=1M --size="${SIZE_MIB}M" --filename=seq --end_fsync=1 >/dev/null
    fio --name=b --directory="$d" --rw=write --bs=1M --size=512M --filename=rand --end_fsync=1 >/dev/null
done
# What the writes left to do (write-back, the daemon's flushes and compactions) done first.
sync; sleep 15
# Both FUSE mounts serve the native directory's files.
serve passthrough --passthrough "$WORK/passthrough" "$WORK/native"
serve plain --passthrough "$WORK/plain" "$WORK/native" --plain
grep -q "passthrough: on" "$WORK/passthrough.log" || { echo "$0: the kernel refused FUSE passthrough" >&2; exit 1; }
serve floor --serve "$WORK/floor"
serve floor-nowb --serve "$WORK/floor-nowb" --no-writeback

python3 bench/passthrough.py --size-mib "$SIZE_MIB" --rounds "$ROUNDS" \
    --reads native="$WORK/native" chaserfs="$WORK/mnt/w" fuse-passthrough="$WORK/passthrough" fuse-plain="$WORK/plain" \
    --writes native="$WORK/writes" chaserfs="$WORK/mnt/w" floor="$WORK/floor" floor-no-writeback="$WORK/floor-nowb"
api DELETE "/v1/sessions/$SID" >/dev/null
