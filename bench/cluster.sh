#!/usr/bin/env bash
# Cluster figures, each beside a baseline from the same run: a native ext4
# directory on the same disk, and a single-host chaserfs (RocksDB). The cluster is
# scripts/cluster.sh's (3 etcd members, 3 Garage nodes with replication 3, all on loopback)
# with two chaserfs hosts, A and B, and beside JuiceFS on the same stores (etcd metadata, a
# second Garage bucket; bench/cluster-jfs.sh has its configuration) with hosts A and B of its
# own: one JuiceFS mount writes, then a fresh one with another, empty cache dir reads.
#
#   bash bench/cluster.sh [--size-mib N] [--files N] [--git-files N] [--jfs-git 1]
#       [--upload-rounds N] [--cold-rounds N] [--warm-rounds N]
#       (defaults: 1024 MiB, 10000 files, 20000 files in the git repository, 3 rounds each)
#   STORE_BENCH=PATH skips building store-bench (as CHASERFS_BIN skips building chaserfs).
#
# Prints: sequential write with fsync (on A: the upload; for chaserfs and JuiceFS the median
# of --upload-rounds rounds that alternate the two on the same stores), cold session start on B (a host
# that never saw the workspace), cold (the median of --cold-rounds rounds, each on an empty
# cache) and warm sequential read and tree read on B, the time
# for another host to take a workspace over after SIGKILL, B's cache figures, and the reads on
# B after a restart (its cache empty) and a warm-ahead call (POST .../warm), then again from
# that cache (page cache dropped), the medians of --warm-rounds such restarts; each also
# for JuiceFS, with a chaserfs / JuiceFS ratio. Then `git status` in a repository of
# --git-files files: on the single host after a session restart with the page cache dropped,
# and on B, which never saw that workspace (restarted, its cache empty), each cold (the median
# of --cold-rounds rounds) and then warm (for JuiceFS too with
# --jfs-git 1: off by default, as JuiceFS uploads each file as it is closed and copying the
# repository in takes minutes). And the peak RSS (VmHWM) of A's and B's daemons and of
# JuiceFS's mounts. Before any chaserfs host starts, store-bench (bench/src/store.rs)
# measures the stores alone on the same bucket and etcd (S3 PUT/GET of 8 MiB and 64 KiB
# objects, ranged 64 KiB GETs out of 8 MiB objects, etcd compare-and-put txns); its table is
# printed, and the upload and sequential read rows (chaserfs's and JuiceFS's) again as
# fractions of the matching store ceiling. Clone,
# snapshot and restore throughput on a cluster host: `bash bench/api.sh --cluster DIR`
# (`chaserfs bench` against a daemon on the stores `scripts/cluster.sh start DIR` started).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
source bench/cluster-jfs.sh
SIZE_MIB=1024
FILES=10000
GIT_FILES=20000
JFS_GIT=0
UPLOAD_ROUNDS=3
COLD_ROUNDS=3
WARM_ROUNDS=3
bench_args "[--size-mib N] [--files N] [--git-files N] [--jfs-git 1] [--upload-rounds N] [--cold-rounds N] [--warm-rounds N]" \
    --size-mib=SIZE_MIB --files=FILES --git-files=GIT_FILES --jfs-git=JFS_GIT \
    --upload-rounds=UPLOAD_ROUNDS --cold-rounds=COLD_ROUNDS --warm-rounds=WARM_ROUNDS -- "$@"
# Each row is a median of its rounds: at least one (no round would leave host B stopped).
for n in "$UPLOAD_ROUNDS" "$COLD_ROUNDS" "$WARM_ROUNDS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || bench_usage
done
bash scripts/install-cluster-stores.sh
jfs_install
bench_work cluster-bench
if [ -z "${STORE_BENCH:-}" ]; then
    cargo build --release -p chaserfs-bench --bin store-bench -q
    STORE_BENCH="$CARGO_TARGET_DIR/release/store-bench"
fi
# The Garage to measure on: GARAGE_BIN, else one on PATH, else the optimised build of
# `scripts/install-cluster-stores.sh --optimised` if it is there, else the tests' build.
GARAGE_OPT=/var/cache/chaserfs/garage-opt/bin/garage
GARAGE_CHEAP=/var/cache/chaserfs/garage/bin/garage
if [ -n "${GARAGE_BIN:-}" ]; then
    :
elif command -v garage >/dev/null; then
    GARAGE_BIN=$(command -v garage)
elif [ -x "$GARAGE_OPT" ]; then
    GARAGE_BIN=$GARAGE_OPT
else
    GARAGE_BIN=$GARAGE_CHEAP
fi
export GARAGE_BIN
GARAGE=$GARAGE_BIN
case "$GARAGE" in
    "$GARAGE_OPT") GARAGE_BUILD="scripts/install-cluster-stores.sh --optimised: opt-level 3, SQLite metadata" ;;
    "$GARAGE_CHEAP") GARAGE_BUILD="built by scripts/install-cluster-stores.sh: opt-level 1, SQLite metadata" ;;
    *) GARAGE_BUILD="not built by scripts/install-cluster-stores.sh; its build flags unknown" ;;
esac
GARAGE_ABOUT="$("$GARAGE" --version | sed -n 1p) at $GARAGE ($GARAGE_BUILD)"
stop_stores() { bash scripts/cluster.sh stop "$WORK/stores"; }
# JuiceFS unmounts while its stores still answer.
BENCH_AT_EXIT+=(jfs_stop stop_stores)
failed() {
    echo "bench/cluster.sh: failed at line $1; daemon logs:" >&2
    tail -n 20 "$WORK"/*/daemon.log "$WORK"/jfs/*/mount.log >&2 2>/dev/null
}
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
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
jfs_format
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
PA=$((30000 + RANDOM % 2000)); PB=$((PA + 1)); PL=$((PA + 2))
start a "$PA" cluster
start b "$PB" cluster
start local "$PL"
# Before each measured read: the page cache dropped, then up to 10 s for the disks to settle
# (under 2 MiB moved in 0.5 s), so a read does not share the disk with write-back or store
# housekeeping (Garage's, RocksDB's) left by the step before. SETTLED_MAX: the longest wait.
# A cold read's session starts after it, and its reads at once: a cluster host starts
# hydrating a workspace as its session starts, and the wait would let it finish first.
SETTLED_MAX=0
disk_sectors() { awk '$3 ~ /^(sd|vd|xvd|nvme)[a-z0-9]*$/ && $3 !~ /p?[0-9]+$/ || $3 ~ /^nvme[0-9]+n[0-9]+$/ { s += $6 + $10 } END { printf "%.0f\n", s }' /proc/diskstats; }
drop_caches() {
    local t0 before after
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$(now)
    after=$(disk_sectors)
    for _ in $(seq 20); do
        before=$after
        sleep 0.5
        after=$(disk_sectors)
        [ $((after - before)) -lt 4096 ] && break
    done
    SETTLED_MAX=$(echo "$(secs "$t0" "$(now)") - 0.5" | bc -l | awk -v m="$SETTLED_MAX" '{ print ($1 > m ? $1 : m) }')
}

# The data: one file of random bytes, a tree of FILES small files (100 per directory, 1 to
# 8 KiB each), and a git repository of GIT_FILES files (100 per directory, 256 B to 4 KiB,
# the size of source files) with one commit, made once on ext4 and copied into each target.
make_files() { # make_files DIR N MIN_BYTES MAX_BYTES
    python3 - "$@" <<'PY'
import os, random, sys
root, n, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i // 100}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(lo, hi)))
PY
}
mkdir -p "$WORK/src"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src/big"
make_files "$WORK/src/tree" "$FILES" 1024 8192
TREE_MIB=$(du -sm "$WORK/src/tree" | cut -f1)
make_files "$WORK/src/git" "$GIT_FILES" 256 4096
git -C "$WORK/src/git" init -q
git -C "$WORK/src/git" add -A
# Packed now, not by the commit's `gc --auto` in the background while the copies read it.
git -C "$WORK/src/git" -c gc.auto=0 -c user.name=bench -c user.email=bench@localhost commit -q -m files
git -C "$WORK/src/git" gc -q
GIT_MIB=$(du -sm "$WORK/src/git" | cut -f1)

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
# git_copy DIR: the repository copied into DIR/repo, its index refreshed there (git status
# rewrites it with this filesystem's inode numbers and times, as after a checkout), synced.
git_copy() {
    cp -a "$WORK/src/git" "$1/repo"
    git -C "$1/repo" status --porcelain >/dev/null
    sync -f "$1" && sync "$1/repo"
}
# git_status DIR: `git status --porcelain` in DIR/repo, which must find nothing changed; sets
# GIT_SECS, and GIT_REWROTE to yes if git rewrote the index (some file's stat data differed
# from the index's, so git read the file to compare it), looked at after the run so as not to
# warm anything.
git_status() {
    local t0 out
    t0=$(now)
    out=$(git -C "$1/repo" status --porcelain)
    GIT_SECS=$(secs "$t0" "$(now)")
    [ -z "$out" ] || { echo "git status in $1/repo found changes: ${out:0:200}" >&2; return 1; }
    GIT_REWROTE=no
    if [ "$(echo "$(stat -c %.9Y "$1/repo/.git/index") >= $t0" | bc)" = 1 ]; then GIT_REWROTE=yes; fi
}

# The upload, alone: rounds that alternate chaserfs host A and a JuiceFS mount on the same
# stores, each writing SIZE_MIB fresh random bytes (chaserfs would not upload a chunk it has
# stored already) with fsync, after a sync so that no round pays for write-back left by what
# ran before it. The table's upload row is each client's median round: one round decides
# nothing on a machine where Garage's CPU, which both clients share, is the bound.
upload_round() { # upload_round DIR: sets UP_SECS
    local t0
    head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src/up"
    sync
    t0=$(now)
    dd if="$WORK/src/up" of="$1/up" bs=1M conv=fsync status=none
    UP_SECS=$(secs "$t0" "$(now)")
    rm "$1/up" "$WORK/src/up"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
api "$PA" POST /v1/workspaces '{"session_type":"sandbox","name":"upload"}' >/dev/null
SA=$(session "$PA" upload "$WORK/a/mnt/u")
jfs_mount up
CUP=() JUP=()
for _ in $(seq "$UPLOAD_ROUNDS"); do
    upload_round "$WORK/a/mnt/u"; CUP+=("$UP_SECS")
    upload_round "$WORK/jfs/up/mnt"; JUP+=("$UP_SECS")
done
jfs_umount up
api "$PA" DELETE "/v1/sessions/$SA" >/dev/null

# Native ext4, on the same disk.
mkdir -p "$WORK/native"
write "$WORK/native"; NW_BIG=$W_BIG; NW_TREE=$W_TREE
drop_caches; read_all "$WORK/native"; NR_BIG=$R_BIG; NR_TREE=$R_TREE

# Single host.
api "$PL" POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null
SL=$(session "$PL" bench "$WORK/local/mnt/w")
write "$WORK/local/mnt/w"; LW_BIG=$W_BIG; LW_TREE=$W_TREE
api "$PL" DELETE "/v1/sessions/$SL" >/dev/null
drop_caches
t0=$(now); SL=$(session "$PL" bench "$WORK/local/mnt/w"); LMOUNT=$(secs "$t0" "$(now)")
read_all "$WORK/local/mnt/w"; LR_BIG=$R_BIG; LR_TREE=$R_TREE
api "$PL" DELETE "/v1/sessions/$SL" >/dev/null
# git status after the session is restarted and the page cache dropped (the median of
# --cold-rounds rounds), then again in the last round.
api "$PL" POST /v1/workspaces '{"session_type":"sandbox","name":"git"}' >/dev/null
SL=$(session "$PL" git "$WORK/local/mnt/g")
git_copy "$WORK/local/mnt/g"
api "$PL" DELETE "/v1/sessions/$SL" >/dev/null
LGC=()
for round in $(seq "$COLD_ROUNDS"); do
    drop_caches; SL=$(session "$PL" git "$WORK/local/mnt/g")
    git_status "$WORK/local/mnt/g"; LGC+=("$GIT_SECS"); LG_REWROTE=$GIT_REWROTE
    [ "$round" -lt "$COLD_ROUNDS" ] || { git_status "$WORK/local/mnt/g"; LG_WARM=$GIT_SECS; }
    api "$PL" DELETE "/v1/sessions/$SL" >/dev/null
done
LG_COLD=$(median "${LGC[@]}")

# Cluster: written on A (every fsync uploads to Garage and commits in etcd), read on B.
api "$PA" POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null
SA=$(session "$PA" bench "$WORK/a/mnt/w")
write "$WORK/a/mnt/w"; CW_BIG=$W_BIG; CW_TREE=$W_TREE
t0=$(now); api "$PA" DELETE "/v1/sessions/$SA" >/dev/null; CEND=$(secs "$t0" "$(now)")
# Cold reads on B, the median of --cold-rounds rounds (one read decides nothing where B and
# Garage share two vCPUs): B is restarted before each round but the first, which empties its
# cache (a cluster host empties its data dir at start). The last round's cache stays for the
# reads from it.
CRB=() CRT=() CMT=()
for round in $(seq "$COLD_ROUNDS"); do
    if [ "$round" -gt 1 ]; then
        api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
        kill -TERM "$PID_b"; wait "$PID_b" || true
        start b "$PB" cluster
    fi
    drop_caches
    t0=$(now); SB=$(session "$PB" bench "$WORK/b/mnt/w"); CMT+=("$(secs "$t0" "$(now)")")
    read_all "$WORK/b/mnt/w"; CRB+=("$R_BIG"); CRT+=("$R_TREE")
done
CR_BIG=$(median "${CRB[@]}"); CR_TREE=$(median "${CRT[@]}"); CMOUNT=$(median "${CMT[@]}")
drop_caches; read_all "$WORK/b/mnt/w"; WR_BIG=$R_BIG; WR_TREE=$R_TREE
api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
# git status on B in a second workspace, written on A, that B has never seen (its cache holds
# none of it), the median of --cold-rounds rounds, each after a restart of B but the first
# (which empties its cache); warm again in the last round.
api "$PA" POST /v1/workspaces '{"session_type":"sandbox","name":"git"}' >/dev/null
SA=$(session "$PA" git "$WORK/a/mnt/g")
git_copy "$WORK/a/mnt/g"
api "$PA" DELETE "/v1/sessions/$SA" >/dev/null
hwm() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; } # peak RSS, MiB
# stop_b: stops B; the first time, keeps its peak RSS and its objects line, those of the
# process that made the cold and cached reads above.
stop_b() {
    HWM_B=${HWM_B:-$(hwm "$PID_b")}
    kill -TERM "$PID_b"; wait "$PID_b" || true
    STATS=${STATS:-$(grep -o 'cluster objects: .*' "$WORK/b/daemon.log" | tail -1)}
}
CGC=() GMT=()
for round in $(seq "$COLD_ROUNDS"); do
    if [ "$round" -gt 1 ]; then stop_b; start b "$PB" cluster; fi
    drop_caches
    t0=$(now); SB=$(session "$PB" git "$WORK/b/mnt/g"); GMT+=("$(secs "$t0" "$(now)")")
    git_status "$WORK/b/mnt/g"; CGC+=("$GIT_SECS"); CG_REWROTE=$GIT_REWROTE
    [ "$round" -lt "$COLD_ROUNDS" ] || { git_status "$WORK/b/mnt/g"; CG_WARM=$GIT_SECS; }
    api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
done
CG_COLD=$(median "${CGC[@]}"); GMOUNT=$(median "${GMT[@]}")

# JuiceFS on the same stores, the same workloads: written by its host A's mount, which then
# unmounts; read by host B's, a fresh mount with another, empty cache dir.
jfs_mount a
write "$WORK/jfs/a/mnt"; JW_BIG=$W_BIG; JW_TREE=$W_TREE
if [ "$JFS_GIT" = 1 ]; then
    # In parallel: each close waits for its PUT, and how the files got there is not measured.
    mkdir "$WORK/jfs/a/mnt/repo"
    (cd "$WORK/src/git" && find . -type d -print0 | (cd "$WORK/jfs/a/mnt/repo" && xargs -0 mkdir -p) \
        && find . ! -type d -print0 | xargs -0 -P 32 -n 64 cp -a --parents -t "$WORK/jfs/a/mnt/repo")
    git -C "$WORK/jfs/a/mnt/repo" status --porcelain >/dev/null
    sync -f "$WORK/jfs/a/mnt" && sync "$WORK/jfs/a/mnt/repo"
fi
jfs_umount a; JHWM_A=$JFS_HWM
# As many cold rounds, each on a fresh mount with its cache dir emptied.
JRB=() JRT=() JMT=()
for round in $(seq "$COLD_ROUNDS"); do
    if [ "$round" -gt 1 ]; then jfs_umount b; rm -rf "$WORK/jfs/b/cache"; fi
    drop_caches; jfs_mount b; JMT+=("$JFS_MOUNT")
    read_all "$WORK/jfs/b/mnt"; JRB+=("$R_BIG"); JRT+=("$R_TREE")
done
JR_BIG=$(median "${JRB[@]}"); JR_TREE=$(median "${JRT[@]}"); JMOUNT=$(median "${JMT[@]}")
drop_caches; read_all "$WORK/jfs/b/mnt"; JWR_BIG=$R_BIG; JWR_TREE=$R_TREE
if [ "$JFS_GIT" = 1 ]; then
    drop_caches; git_status "$WORK/jfs/b/mnt"; JG_COLD=$GIT_SECS; JG_REWROTE=$GIT_REWROTE
    git_status "$WORK/jfs/b/mnt"; JG_WARM=$GIT_SECS
fi
jfs_umount b; JHWM_B=$JFS_HWM; JSTATS_B=$JFS_STATS

# Warm-ahead: B restarted (a cluster host empties its cache at start), asked to warm the
# workspace (POST .../warm returns once the tree and the newest chunks are here), then a
# session and the reads with the page cache dropped: what a scheduler that knows where the
# next session lands gets.
stop_b
# --warm-rounds rounds, each on a restarted B; the table has the medians. Again from the same
# cache, the page cache dropped: that host's warm-cache speed, to hold the warmed-ahead read
# against (the "B's cache" rows are of B before its restart).
ARB=() ART=() AR2B=() AR2T=() AWS=()
for round in $(seq "$WARM_ROUNDS"); do
    if [ "$round" -gt 1 ]; then kill -TERM "$PID_b"; wait "$PID_b" || true; fi
    start b "$PB" cluster
    t0=$(now); WARMED=$(api "$PB" POST /v1/workspaces/bench/warm); AWS+=("$(secs "$t0" "$(now)")")
    SB=$(session "$PB" bench "$WORK/b/mnt/w")
    drop_caches; read_all "$WORK/b/mnt/w"; ARB+=("$R_BIG"); ART+=("$R_TREE")
    drop_caches; read_all "$WORK/b/mnt/w"; AR2B+=("$R_BIG"); AR2T+=("$R_TREE")
    api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
done
AR_BIG=$(median "${ARB[@]}"); AR_TREE=$(median "${ART[@]}")
AR2_BIG=$(median "${AR2B[@]}"); AR2_TREE=$(median "${AR2T[@]}"); WARM_SECS=$(median "${AWS[@]}")

# Failover: SIGKILL A with a session open; B retries its session start until A's hold expires.
SA=$(session "$PA" bench "$WORK/a/mnt/w")
echo synced >"$WORK/a/mnt/w/last" && sync "$WORK/a/mnt/w/last"
HWM_A=$(hwm "$PID_a")
kill -KILL "$PID_a"; t0=$(now)
wait "$PID_a" 2>/dev/null || true # reaped here, or bash reports "Killed" amid the output
until SB=$(session "$PB" bench "$WORK/b/mnt/w2" 2>/dev/null) && [ -n "$SB" ] && [ "$SB" != null ]; do
    sleep 0.1
done
FAILOVER=$(secs "$t0" "$(now)")
[ "$(cat "$WORK/b/mnt/w2/last")" = synced ] || { echo "failover lost the fsynced file" >&2; exit 1; }
api "$PB" DELETE "/v1/sessions/$SB" >/dev/null
umount -l "$WORK/a/mnt/w" 2>/dev/null || true
kill -TERM "$PID_b"; wait "$PID_b" || true
STATS_AFTER=$(grep -o 'cluster objects: .*' "$WORK/b/daemon.log" | tail -1)

mibs() { echo "$1 / $2" | bc -l | xargs printf '%.0f MiB/s'; }
fps() { echo "$FILES / $1" | bc -l | xargs printf '%.0f files/s'; }
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2fx'; }
commas() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
echo
echo "cluster: 3 etcd + 3 Garage (replication 3) on loopback; ${SIZE_MIB} MiB file, $FILES files ($TREE_MIB MiB)"
echo "Garage: $GARAGE_ABOUT"
echo "JuiceFS: $JFS_ABOUT; etcd metadata (prefix jfs), Garage bucket jfs; defaults but ${JFS_FLAGS[*]}"
echo "  (--writeback off: each file's close waits for its upload, fsync for the rest)"
echo
# Both ratios are of speeds: above 1, the first is faster.
CUP_MED=$(median "${CUP[@]}"); JUP_MED=$(median "${JUP[@]}")
echo "| workload | native ext4 | single host | cluster | JuiceFS | cluster / native | cluster / JuiceFS |"
echo "|---|---|---|---|---|---|---|"
echo "| sequential write + fsync (A) | $(mibs "$SIZE_MIB" "$NW_BIG") | $(mibs "$SIZE_MIB" "$LW_BIG") | $(mibs "$SIZE_MIB" "$CUP_MED") | $(mibs "$SIZE_MIB" "$JUP_MED") | $(ratio "$CUP_MED" "$NW_BIG") | $(ratio "$CUP_MED" "$JUP_MED") |"
echo "| tree copy + sync (A) | $(fps "$NW_TREE") | $(fps "$LW_TREE") | $(fps "$CW_TREE") | $(fps "$JW_TREE") | $(ratio "$CW_TREE" "$NW_TREE") | $(ratio "$CW_TREE" "$JW_TREE") |"
echo "| sequential read, cold (B) | $(mibs "$SIZE_MIB" "$NR_BIG") | $(mibs "$SIZE_MIB" "$LR_BIG") | $(mibs "$SIZE_MIB" "$CR_BIG") | $(mibs "$SIZE_MIB" "$JR_BIG") | $(ratio "$CR_BIG" "$NR_BIG") | $(ratio "$CR_BIG" "$JR_BIG") |"
echo "| tree read, cold (B) | $(fps "$NR_TREE") | $(fps "$LR_TREE") | $(fps "$CR_TREE") | $(fps "$JR_TREE") | $(ratio "$CR_TREE" "$NR_TREE") | $(ratio "$CR_TREE" "$JR_TREE") |"
echo "| sequential read, B's cache | | | $(mibs "$SIZE_MIB" "$WR_BIG") | $(mibs "$SIZE_MIB" "$JWR_BIG") | $(ratio "$WR_BIG" "$NR_BIG") | $(ratio "$WR_BIG" "$JWR_BIG") |"
echo "| tree read, B's cache | | | $(fps "$WR_TREE") | $(fps "$JWR_TREE") | $(ratio "$WR_TREE" "$NR_TREE") | $(ratio "$WR_TREE" "$JWR_TREE") |"
echo "| sequential read, B warmed ahead | | | $(mibs "$SIZE_MIB" "$AR_BIG") | | $(ratio "$AR_BIG" "$NR_BIG") | |"
echo "| tree read, B warmed ahead | | | $(fps "$AR_TREE") | | $(ratio "$AR_TREE" "$NR_TREE") | |"
echo "| sequential read, B warmed ahead, again | | | $(mibs "$SIZE_MIB" "$AR2_BIG") | | $(ratio "$AR2_BIG" "$NR_BIG") | |"
echo "| tree read, B warmed ahead, again | | | $(fps "$AR2_TREE") | | $(ratio "$AR2_TREE" "$NR_TREE") | |"
echo
# Each round to a tenth: the table's ratios are of these medians, and two clients at the same
# store bound can round to one figure.
rounds() { local s; for s in "$@"; do echo "$SIZE_MIB / $s" | bc -l | xargs printf '%.1f\n'; done | paste -sd' '; }
echo "upload rounds on A, alternating, MiB/s (the table has each one's median): chaserfs" \
    "$(rounds "${CUP[@]}"); JuiceFS $(rounds "${JUP[@]}"); the writes of the file read on B:" \
    "chaserfs $(mibs "$SIZE_MIB" "$CW_BIG"), JuiceFS $(mibs "$SIZE_MIB" "$JW_BIG")"
echo "cold read rounds on B, MiB/s (the table has each one's median): chaserfs $(rounds "${CRB[@]}");" \
    "JuiceFS $(rounds "${JRB[@]}")"
echo "warmed-ahead rounds on B, each after a restart, MiB/s: first read $(rounds "${ARB[@]}"), again" \
    "$(rounds "${AR2B[@]}"); files/s: $(for s in "${ART[@]}"; do fps "$s" | cut -d' ' -f1; done | paste -sd' '), again" \
    "$(for s in "${AR2T[@]}"; do fps "$s" | cut -d' ' -f1; done | paste -sd' ')"
printf 'before each read with the page cache dropped, the disks settled within %.1f s\n' "$SETTLED_MAX"
printf 'session end on A (final commit): %.2f s\n' "$CEND"
# JuiceFS's is a new process's (its mount is its session); chaserfs's daemon is already up.
printf 'session start: single host %.3f s, cold on B %.3f s (median); JuiceFS mount on B (process start to root visible) %.3f s (median)\n' \
    "$LMOUNT" "$CMOUNT" "$JMOUNT"
printf 'failover after SIGKILL of A: %.1f s (lease TTL %s s)\n' "$FAILOVER" "$LEASE_TTL"
echo "B's $STATS (the process that made the cold and cached reads, and the first git status)"
echo "B's $STATS_AFTER (after its last restart: that warm-up, its reads, the failover)"
printf 'warm-ahead on B after its restart: %.2f s (median; the last round: %s)\n' "$WARM_SECS" \
    "$(echo "$WARMED" | jq -r '"\(.nodes) nodes, \(.chunks) chunks, \(.chunk_bytes / 1048576 | floor) MiB"')"
echo "JuiceFS B's $JSTATS_B"
printf 'git status, %s files (%s MiB with .git): single host %.2f s, cold on B %.2f s (B / single host = %.1fx), warm on B %.2f s\n' \
    "$(commas "$GIT_FILES")" "$GIT_MIB" "$LG_COLD" "$CG_COLD" "$(echo "$CG_COLD / $LG_COLD" | bc -l)" "$CG_WARM"
printf '  (medians; rounds, s: single host %s, cold on B %s; warm single host %.2f s; session start on B %.3f s; the last cold run rewrote the index: single host %s, B %s)\n' \
    "$(printf '%.2f\n' "${LGC[@]}" | paste -sd' ')" "$(printf '%.2f\n' "${CGC[@]}" | paste -sd' ')" \
    "$LG_WARM" "$GMOUNT" "$LG_REWROTE" "$CG_REWROTE"
if [ "$JFS_GIT" = 1 ]; then
    printf 'git status, JuiceFS: cold on B %.2f s, warm on B %.2f s (the cold run rewrote the index: %s)\n' \
        "$JG_COLD" "$JG_WARM" "$JG_REWROTE"
else
    echo "git status, JuiceFS: not run (--jfs-git 1)"
fi
echo "B's daemon peak RSS through the cold and cached reads: $HWM_B MiB (A's: $HWM_A MiB; JuiceFS mount on B: $JHWM_B MiB, on A: $JHWM_A MiB)"

# The upload and sequential read rows again, each as a fraction of what the stores alone gave
# (store-bench above): the upload against whole 8 MiB PUTs (a chaserfs pack is up to 8 MiB, a
# JuiceFS block 4 MiB), the sequential reads against ranged 64 KiB GETs (how chaserfs reads
# chunks out of packs) and whole 8 MiB GETs. The best of 8 and 64 in flight is the ceiling
# where both were measured.
ceiling() { # ceiling ROW...: "MIB_PER_S IN_FLIGHT OPERATION" of the fastest of those rows
    local rows
    rows=$(printf '.rows.%s,' "$@")
    jq -r "[${rows%,}] | max_by(.mib_per_s) | \"\(.mib_per_s) \(.in_flight) \(.operation)\"" \
        "$WORK/store.json"
}
vs() { # vs LABEL SECONDS ROW...: a row's figure against that ceiling
    local mib in_flight op
    read -r mib in_flight op <<<"$(ceiling "${@:3}")"
    printf '| %s | %s | %s, %s in flight: %.0f MiB/s | %.2fx |\n' "$1" "$(mibs "$SIZE_MIB" "$2")" \
        "$op" "$in_flight" "$mib" "$(echo "$SIZE_MIB / $2 / $mib" | bc -l)"
}
echo
echo "| row | figure | store ceiling (store-bench) | figure / ceiling |"
echo "|---|---|---|---|"
vs "cluster: sequential write + fsync (A): the upload" "$CUP_MED" put_8mib_x8 put_8mib_x64
vs "cluster: sequential read, cold (B)" "$CR_BIG" range_64kib_x64
vs "cluster: sequential read, cold (B)" "$CR_BIG" get_8mib_x8 get_8mib_x64
vs "cluster: sequential read, B's cache" "$WR_BIG" range_64kib_x64
vs "cluster: sequential read, B's cache" "$WR_BIG" get_8mib_x8 get_8mib_x64
vs "JuiceFS: sequential write + fsync (A): the upload" "$JUP_MED" put_8mib_x8 put_8mib_x64
vs "JuiceFS: sequential read, cold (B)" "$JR_BIG" range_64kib_x64
vs "JuiceFS: sequential read, cold (B)" "$JR_BIG" get_8mib_x8 get_8mib_x64
