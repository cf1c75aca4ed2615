#!/usr/bin/env bash
# Clone and fsync latency while the collector runs after N workspaces are deleted, beside the
# same figures with the collector idle, in one run: what a busy daemon feels of its own GC.
# The N workspaces are clones of one holding N distinct 256 KiB files that it then deletes, so
# deleting the clones leaves N x 256 KiB of chunks (and their nodes) to collect.
#
#   bash bench/gc-latency.sh [N]     (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
N=1000
bench_args "[N]" N -- "$@"
SAMPLES=100

bench_work gclatency
bench_daemon "$WORK"
now_ms() { echo "$(date +%s%N) / 1000000" | bc -l; }

# N distinct files in `src`, N clones of it, then the files deleted from `src`.
for w in src probe writer; do api POST /v1/workspaces "{\"session_type\":\"sandbox\",\"name\":\"$w\"}" >/dev/null; done
SID=$(api POST /v1/sessions "{\"workspace\":\"src\",\"mountpoint\":\"$WORK/mnt/src\"}" | jq -r .id)
for i in $(seq 1 "$N"); do head -c 262144 /dev/urandom >"$WORK/mnt/src/f$i"; done
api DELETE "/v1/sessions/$SID" >/dev/null
for i in $(seq 1 "$N"); do api POST /v1/workspaces "{\"clone_from\":\"src\",\"name\":\"c$i\"}" >/dev/null; done
SID=$(api POST /v1/sessions "{\"workspace\":\"src\",\"mountpoint\":\"$WORK/mnt/src2\"}" | jq -r .id)
rm -f "$WORK/mnt/src2"/f*
api DELETE "/v1/sessions/$SID" >/dev/null
W=$(api POST /v1/sessions "{\"workspace\":\"writer\",\"mountpoint\":\"$WORK/mnt/w\"}" | jq -r .id)
head -c 4096 /dev/urandom >"$WORK/mnt/w/f"

# One sample: a clone over HTTP, and a 4 KiB overwrite + fdatasync in the mounted session.
sample() {
    local t0 t1 t2
    t0=$(now_ms); api POST /v1/workspaces '{"clone_from":"probe"}' >/dev/null
    t1=$(now_ms); dd if=/dev/urandom of="$WORK/mnt/w/f" bs=4k count=1 conv=notrunc,fdatasync status=none
    t2=$(now_ms)
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l)"
}
stats() { sort -g | awk '{a[NR]=$1} END {printf "p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms", a[int(NR*0.5)+1], a[int(NR*0.99)+1], a[NR]}'; }

: >"$WORK/idle"; for _ in $(seq 1 $SAMPLES); do sample >>"$WORK/idle"; done
t0=$(now_ms)
api POST /v1/workspaces/bulk-delete "{\"workspace_ids\":[$(seq -f '"c%g"' -s, 1 "$N")]}" >/dev/null
DELETE_MS=$(echo "$(now_ms) - $t0" | bc -l)
: >"$WORK/gc"
# Sample from the bulk delete until the collector has logged the end of its run.
until grep -q "gc (deletes" "$WORK/daemon.log"; do sample >>"$WORK/gc"; done
api DELETE "/v1/sessions/$W" >/dev/null

echo "chaserfs gc-latency: $N workspaces deleted in one bulk delete ($(printf %.0f "$DELETE_MS") ms)"
grep -o "gc (deletes.*" "$WORK/daemon.log" | head -1
printf '%-34s %s\n' "clone, collector idle" "$(cut -d' ' -f1 "$WORK/idle" | stats)"
printf '%-34s %s\n' "clone, collector running" "$(cut -d' ' -f1 "$WORK/gc" | stats)"
printf '%-34s %s\n' "4 KiB write+fdatasync, idle" "$(cut -d' ' -f2 "$WORK/idle" | stats)"
printf '%-34s %s\n' "4 KiB write+fdatasync, running" "$(cut -d' ' -f2 "$WORK/gc" | stats)"
echo "(samples: $(wc -l <"$WORK/idle") idle; $(wc -l <"$WORK/gc") from the bulk delete until the collector's run had ended, its 0.5 s settling wait included)"
