#!/usr/bin/env bash
# Cluster figures, each beside a baseline from the same run: a native ext4
# directory on the same disk, and a single-host chaserfs (RocksDB). The cluster is
# scripts/cluster.sh's (3 etcd members, 3 Garage nodes with replication 3, all on loopback)
# with two chaserfs hosts, A and B.
#
#   bash bench/cluster.sh [--size-mib N] [--files N]   (defaults: 1024 MiB, 10000 files)
#
# Prints: sequential write with fsync (on A: the upload), cold session start on B (a host
# that never saw the workspace), cold and warm sequential read and tree read on B, the time
# for another host to take a workspace over after SIGKILL, and B's cache figures. Before any
# chaserfs host starts, store-bench (bench/src/store.rs) measures the stores alone on the
# same bucket and etcd (S3 PUT/GET of 8 MiB and 64 KiB objects, ranged 64 KiB GETs out of
# 8 MiB objects, etcd compare-and-put txns); its table is printed, and the upload and
# sequential read rows again as fractions of the matching store ceiling. Clone,
# snapshot and restore throughput on a cluster host: `bash bench/api.sh --cluster DIR`
# (`chaserfs bench` against a daemon on the stores `scripts/cluster.sh start DIR` started).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
SIZE_MIB=1024
FILES=10000
bench_args "[--size-mib N] [--files N]" --size-mib=SIZE_MIB --files=FILES -- "$@"
bash scripts/install-cluster-stores.sh
bench_work cluster-bench
cargo build --release -p chaserfs-bench --bin store-bench -q
STORE_BENCH="$CARGO_TARGET_DIR/release/store-bench"
# The Garage scripts/cluster.sh runs (its own lookup), and how it was built.
GARAGE="${GARAGE_BIN:-$(command -v garage || echo /var/cache/chaserfs/garage/bin/garage)}"
if [ "$GARAGE" = /var/cache/chaserfs/garage/bin/garage ]; then
    GARAGE_BUILD="built by scripts/install-cluster-stores.sh: opt-level 1, SQLite metadata"
else
    GARAGE_BUILD="not built by scripts/install-cluster-stores.sh; its build flags unknown"
fi
GARAGE_ABOUT="$("$GARAGE" --version | sed -n 1p) at $GARAGE ($GARAGE_BUILD)"
stop_stores() { bash scripts/cluster.sh stop "$WORK/stores"; }
BENCH_AT_EXIT+=(stop_stores)
failed() { echo "bench/cluster.sh: failed at line $1; daemon logs:" >&2; tail -n 20 "$WORK"/*/daemon.log >&2; }
trap 'failed $LINENO' ERR
PORT_BASE=$((10000 + RANDOM % 5000)) bash scripts/cluster.sh start "$WORK/stores" >/dev/null
source "$WORK/stores/env"
# The stores' ceiling, measured before any chaserfs host loads the machine; the page cache is
# dropped before each GET run as before the cold reads below.
echo "stores alone (store-bench, before any chaserfs host started); Garage: $GARAGE_ABOUT;" \
    "data and metadata fsync ${GARAGE_FSYNC:-true}; $("${ETCD_BIN:-etcd}" --version | sed -n 1p)"
echo
"$STORE_BENCH" "$WORK/stores/env" --drop-caches --json-file "$WORK/store.json" \
    2>"$WORK/store-bench.log" || { tail -n 20 "$WORK/store-bench.log" >&2; exit 1; }
# The single host must not see the cluster's variables (the flags read them too); the
# cluster hosts get them as flags.
export -n CHASER_S3_ENDPOINT CHASER_S3_BUCKET CHASER_ETCD_ENDPOINTS
KEY=chs_cluster_bench_key
echo "default $KEY" >"$WORK/keys"
LEASE_TTL=10

# start NAME PORT [cluster]: a daemon in $WORK/NAME (mounts in $WORK/NAME/mnt, log in
# $WORK/NAME/daemon.log), single-host unless the third argument is given.
start() {
    local name=$1 port=$2 args=()
    if [ "${3:-}" = cluster ]; then
        args=(--s3-endpoint "$CHASER_S3_ENDPOINT" --s3-bucket "$CHASER_S3_BUCKET"
            --etcd-endpoints "$CHASER_ETCD_ENDPOINTS" --host-name "$name"
            --lease-ttl "$LEASE_TTL" --commit-interval 3600)
    fi
    bench_daemon "$WORK/$name" "$port" --api-keys-file "$WORK/keys" "${args[@]}"
    eval "PID_$name=$DAEMON"
}
api() { # api PORT METHOD PATH [BODY]
    curl -sSf -X "$2" "http://127.0.0.1:$1$3" -H "Authorization: Bearer $KEY" \
        -H "Content-Type: application/json" ${4:+-d "$4"}
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
PA=$((30000 + RANDOM % 2000)); PB=$((PA + 1)); PL=$((PA + 2))
start a "$PA" cluster
start b "$PB" cluster
start local "$PL"
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# The data: one file of random bytes, and a tree of FILES small files (100 per directory,
# 1 to 8 KiB each), made once on ext4 and copied into each target.
mkdir -p "$WORK/src/tree"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src/big"
python3 - "$WORK/src/tree" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i // 100}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
PY
TREE_MIB=$(du -sm "$WORK/src/tree" | cut -f1)

session() { # session PORT WORKSPACE MOUNTPOINT: prints the session id
    api "$1" POST /v1/sessions "{\"workspace\":\"$2\",\"mountpoint\":\"$3\"}" | jq -r .id
}
# write DIR: sequential write of the big file with fsync, and the tree copied in and synced;
# sets W_BIG and W_TREE (seconds).
write() {
    local t0 t1 t2
    t0=$(now)
    dd if="$WORK/src/big" of="$1/big" bs=1M conv=fsync status=none
    t1=$(now)
    # syncfs for ext4; a directory's fsync for chaserfs (it commits the whole workspace).
    cp -r "$WORK/src/tree" "$1/tree" && sync -f "$1" && sync "$1/tree"
    t2=$(now)
    W_BIG=$(secs "$t0" "$t1"); W_TREE=$(secs "$t1" "$t2")
}
# read DIR: sequential read of the big file and a read of every tree file; sets R_BIG, R_TREE.
read_all() {
    local t0 t1 t2
    t0=$(now)
    dd if="$1/big" of=/dev/null bs=1M status=none
    t1=$(now)
    find "$1/tree" -type f -print0 | xargs -0 cat >/dev/null
    t2=$(now)
    R_BIG=$(secs "$t0" "$t1"); R_TREE=$(secs "$t1" "$t2")
}

# Native ext4, on the same disk.
mkdir -p "$WORK/native"
write "$WORK/native"; NW_BIG=$W_BIG; NW_TREE=$W_TREE
drop_caches; read_all "$WORK/native"; NR_BIG=$R_BIG; NR_TREE=$R_TREE

# Single host.
api "$PL" POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null
SL=$(session "$PL" bench "$WORK/local/mnt/w")
write "$WORK/local/mnt/w"; LW_BIG=$W_BIG; LW_TREE=$W_TREE
api "$PL" DELETE "/v1/sessions/$SL" >/dev/null
t0=$(now); SL=$(session "$PL" bench "$WORK/local/mnt/w"); LMOUNT=$(secs "$t0" "$(now)")
drop_caches; read_all "$WORK/local/mnt/w"; LR_BIG=$R_BIG; LR_TREE=$R_TREE
api "$PL" DELETE "/v1/sessions/$SL" >/dev/null

# Cluster: written on A (every fsync uploads to Garage and commits in etcd), read on B.
api "$PA" POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null
SA=$(session "$PA" bench "$WORK/a/mnt/w")
write "$WORK/a/mnt/w"; CW_BIG=$W_BIG; CW_TREE=$W_TREE
t0=$(now); api "$PA" DELETE "/v1/sessions/$SA" >/dev/null; CEND=$(secs "$t0" "$(now)")
t0=$(now); SB=$(session "$PB" bench "$WORK/b/mnt/w"); CMOUNT=$(secs "$t0" "$(now)")
drop_caches; read_all "$WORK/b/mnt/w"; CR_BIG=$R_BIG; CR_TREE=$R_TREE
drop_caches; read_all "$WORK/b/mnt/w"; WR_BIG=$R_BIG; WR_TREE=$R_TREE
api "$PB" DELETE "/v1/sessions/$SB" >/dev/null

# Failover: SIGKILL A with a session open; B retries its session start until A's hold expires.
SA=$(session "$PA" bench "$WORK/a/mnt/w")
echo synced >"$WORK/a/mnt/w/last" && sync "$WORK/a/mnt/w/last"
kill -KILL "$PID_a"; t0=$(now)
until SB=$(session "$PB" bench "$WORK/b/mnt/w2" 2>/dev/null) && [ -n "$SB" ] && [ "$SB" != null ]; do
    sleep 0.1
done
FAILOVER=$(secs "$t0" "$(now)")
[ "$(cat "$WORK/b/mnt/w2/last")" = synced ] || { echo "failover lost the fsynced file" >&2; exit 1; }
api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
umount -l "$WORK/a/mnt/w" 2>/dev/null || true
kill -TERM "$PID_b"; wait "$PID_b" || true
STATS=$(grep -o 'cluster objects: .*' "$WORK/b/daemon.log" | tail -1)

mibs() { echo "$1 / $2" | bc -l | xargs printf '%.0f MiB/s'; }
fps() { echo "$FILES / $1" | bc -l | xargs printf '%.0f files/s'; }
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2fx'; }
echo
echo "cluster: 3 etcd + 3 Garage (replication 3) on loopback; ${SIZE_MIB} MiB file, $FILES files ($TREE_MIB MiB)"
echo "Garage: $GARAGE_ABOUT"
echo
echo "| workload | native ext4 | single host | cluster | cluster / native |"
echo "|---|---|---|---|---|"
echo "| sequential write + fsync (A) | $(mibs "$SIZE_MIB" "$NW_BIG") | $(mibs "$SIZE_MIB" "$LW_BIG") | $(mibs "$SIZE_MIB" "$CW_BIG") | $(ratio "$CW_BIG" "$NW_BIG") |"
echo "| tree copy + sync (A) | $(fps "$NW_TREE") | $(fps "$LW_TREE") | $(fps "$CW_TREE") | $(ratio "$CW_TREE" "$NW_TREE") |"
echo "| sequential read, cold (B) | $(mibs "$SIZE_MIB" "$NR_BIG") | $(mibs "$SIZE_MIB" "$LR_BIG") | $(mibs "$SIZE_MIB" "$CR_BIG") | $(ratio "$CR_BIG" "$NR_BIG") |"
echo "| tree read, cold (B) | $(fps "$NR_TREE") | $(fps "$LR_TREE") | $(fps "$CR_TREE") | $(ratio "$CR_TREE" "$NR_TREE") |"
echo "| sequential read, B's cache | | | $(mibs "$SIZE_MIB" "$WR_BIG") | $(ratio "$WR_BIG" "$NR_BIG") |"
echo "| tree read, B's cache | | | $(fps "$WR_TREE") | $(ratio "$WR_TREE" "$NR_TREE") |"
echo
printf 'session end on A (final commit): %.2f s\n' "$CEND"
printf 'session start: single host %.3f s, cold on B %.3f s\n' "$LMOUNT" "$CMOUNT"
printf 'failover after SIGKILL of A: %.1f s (lease TTL %s s)\n' "$FAILOVER" "$LEASE_TTL"
echo "B's $STATS"

# The cluster's rows again, each as a fraction of what the stores alone gave (store-bench
# above): the upload against whole 8 MiB PUTs (a pack is up to 8 MiB), the sequential reads
# against ranged 64 KiB GETs (how chunks are read out of packs) and whole 8 MiB GETs. The
# best of 8 and 64 in flight is the ceiling where both were measured.
ceiling() { # ceiling ROW...: "MIB_PER_S IN_FLIGHT OPERATION" of the fastest of those rows
    local rows
    rows=$(printf '.rows.%s,' "$@")
    jq -r "[${rows%,}] | max_by(.mib_per_s) | \"\(.mib_per_s) \(.in_flight) \(.operation)\"" \
        "$WORK/store.json"
}
vs() { # vs LABEL SECONDS ROW...: a row of the cluster figure against that ceiling
    local mib in_flight op
    read -r mib in_flight op <<<"$(ceiling "${@:3}")"
    printf '| %s | %s | %s, %s in flight: %.0f MiB/s | %.2fx |\n' "$1" "$(mibs "$SIZE_MIB" "$2")" \
        "$op" "$in_flight" "$mib" "$(echo "$SIZE_MIB / $2 / $mib" | bc -l)"
}
echo
echo "| cluster row | cluster | store ceiling (store-bench) | cluster / ceiling |"
echo "|---|---|---|---|"
vs "sequential write + fsync (A): the upload" "$CW_BIG" put_8mib_x8 put_8mib_x64
vs "sequential read, cold (B)" "$CR_BIG" range_64kib_x64
vs "sequential read, cold (B)" "$CR_BIG" get_8mib_x8 get_8mib_x64
vs "sequential read, B's cache" "$WR_BIG" range_64kib_x64
vs "sequential read, B's cache" "$WR_BIG" get_8mib_x8 get_8mib_x64
