#!/usr/bin/env bash
# Data-path benchmark: each figure on a mounted chaserfs workspace beside the same run on a
# native directory of the same disk, with the ratio. Also the time a session takes to mount
# and to unmount over the API.
#
#   bash bench/datapath.sh [--size-mib N]     (default 2048 MiB for the sequential figures)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
for p in fio bc; do command -v $p >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $p >/dev/null; }; done
SIZE_MIB=2048
[ "${1:-}" = "--size-mib" ] && SIZE_MIB="$2"

source bench/daemon.sh datapath
NATIVE="$WORK/native"
mkdir -p "$NATIVE"
api POST /v1/workspaces '{"session_type":"sandbox","name":"bench"}' >/dev/null

# Mount and unmount latency, median of 10.
mounts=(); unmounts=()
for i in $(seq 1 10); do
    t0=$(date +%s.%N); sid=$(api POST /v1/sessions "{\"workspace\":\"bench\",\"mountpoint\":\"$WORK/mnt/m$i\"}" | jq -r .id); t1=$(date +%s.%N)
    api DELETE "/v1/sessions/$sid" >/dev/null; t2=$(date +%s.%N)
    mounts+=("$(echo "($t1 - $t0) * 1000" | bc -l)"); unmounts+=("$(echo "($t2 - $t1) * 1000" | bc -l)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'; }
MOUNT_MS=$(median "${mounts[@]}"); UNMOUNT_MS=$(median "${unmounts[@]}")

SID=$(api POST /v1/sessions "{\"workspace\":\"bench\",\"mountpoint\":\"$WORK/mnt/w\"}" | jq -r .id)
MNT="$WORK/mnt/w"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fio_bw() { # dir, fio args... -> MB/s
    local dir="$1"; shift
    fio --name=b --directory="$dir" --output-format=json "$@" 2>/dev/null | jq '[.jobs[0].read.bw_bytes, .jobs[0].write.bw_bytes] | add / 1e6'
}
fio_iops() {
    local dir="$1"; shift
    fio --name=b --directory="$dir" --output-format=json "$@" 2>/dev/null | jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add'
}
fio_sync_ms() { # mean fdatasync latency in ms
    local dir="$1"; shift
    fio --name=b --directory="$dir" --output-format=json "$@" 2>/dev/null | jq '.jobs[0].sync.lat_ns.mean / 1e6'
}
rows=()
row() { rows+=("$(printf '| %s | %.6g | %.6g | %.2f |' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)")"); }
row_inv() { rows+=("$(printf '| %s | %.6g | %.6g | %.2f |' "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)")"); }

for target in native chaserfs; do
    dir="$NATIVE"; [ "$target" = chaserfs ] && dir="$MNT"
    declare -A R_$target
    eval "R_$target[seqw]=$(fio_bw "$dir" --rw=write --bs=1M --size=${SIZE_MIB}M --end_fsync=1 --filename=seq)"
    drop_caches
    eval "R_$target[seqr_cold]=$(fio_bw "$dir" --rw=read --bs=1M --size=${SIZE_MIB}M --filename=seq)"
    eval "R_$target[seqr_warm]=$(fio_bw "$dir" --rw=read --bs=1M --size=${SIZE_MIB}M --filename=seq --invalidate=0)"
    rm -f "$dir/seq"
    fio --name=prep --directory="$dir" --rw=write --bs=1M --size=512M --filename=rand >/dev/null 2>&1
    eval "R_$target[randr]=$(fio_iops "$dir" --rw=randread --bs=4k --size=512M --filename=rand --runtime=10 --time_based)"
    eval "R_$target[randw]=$(fio_iops "$dir" --rw=randwrite --bs=4k --size=512M --filename=rand --runtime=10 --time_based)"
    eval "R_$target[fsync]=$(fio_sync_ms "$dir" --rw=write --bs=4k --size=64M --filename=sync --fdatasync=1 --runtime=10 --time_based)"
    rm -f "$dir/rand" "$dir/sync"
    # create + stat + unlink of 50,000 small files (files per second)
    eval "R_$target[small]=$(python3 - "$dir" <<'PY'
import os, sys, time
d = os.path.join(sys.argv[1], "small"); os.mkdir(d)
t = time.time()
for i in range(50000):
    with open(os.path.join(d, f"f{i}"), "w") as f: f.write("x")
for i in range(50000): os.stat(os.path.join(d, f"f{i}"))
for i in range(50000): os.unlink(os.path.join(d, f"f{i}"))
print(round(50000 / (time.time() - t)))
os.rmdir(d)
PY
)"
done

# tar -x of a 20,000-file tree, and git status on a 3,000-file repository (seconds).
TREE="$WORK/tree"; mkdir -p "$TREE"
(cd "$TREE" && for d in $(seq 1 100); do mkdir d$d; for f in $(seq 1 200); do echo "$d $f" > d$d/f$f; done; done)
tar -cf "$WORK/tree.tar" -C "$TREE" .
REPO="$WORK/repo"; mkdir -p "$REPO"
(cd "$REPO" && git init -q . && for d in $(seq 1 30); do mkdir dir$d; for f in $(seq 1 100); do echo "$d/$f" > dir$d/file$f; done; done && git add . && git -c user.name=b -c user.email=b@b commit -qm c)
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
for target in native chaserfs; do
    dir="$NATIVE"; [ "$target" = chaserfs ] && dir="$MNT"
    mkdir -p "$dir/x"
    eval "R_$target[tar]=$(secs tar -xf "$WORK/tree.tar" -C "$dir/x")"
    git clone -q "$REPO" "$dir/repo"
    (cd "$dir/repo" && git status >/dev/null)
    eval "R_$target[git]=$(cd "$dir/repo" && secs git status)"
done
api DELETE "/v1/sessions/$SID" >/dev/null

printf '\n### Data path: chaserfs mount vs native ext4 directory, same disk (%s)\n\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "| figure | native | chaserfs | ratio (higher is better for chaserfs) |"
echo "|---|---|---|---|"
row "sequential write ${SIZE_MIB} MiB, 1 MiB blocks, fsync at end (MB/s)" "${R_native[seqw]}" "${R_chaserfs[seqw]}"
row "sequential read, cold (MB/s)" "${R_native[seqr_cold]}" "${R_chaserfs[seqr_cold]}"
row "sequential read, warm (MB/s)" "${R_native[seqr_warm]}" "${R_chaserfs[seqr_warm]}"
row "random 4 KiB read (IOPS)" "${R_native[randr]}" "${R_chaserfs[randr]}"
row "random 4 KiB write (IOPS)" "${R_native[randw]}" "${R_chaserfs[randw]}"
row_inv "4 KiB write + fdatasync, mean sync latency (ms)" "${R_native[fsync]}" "${R_chaserfs[fsync]}"
row "create + stat + unlink, 50,000 files (files/s)" "${R_native[small]}" "${R_chaserfs[small]}"
row_inv "tar -x of 20,000 files (s)" "${R_native[tar]}" "${R_chaserfs[tar]}"
row_inv "git status, 3,000-file repository (s)" "${R_native[git]}" "${R_chaserfs[git]}"
printf '%s\n' "${rows[@]}"
printf '\nSession mount: %s ms, unmount: %s ms (median of 10, over HTTP)\n' "$MOUNT_MS" "$UNMOUNT_MS"
