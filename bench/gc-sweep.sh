#!/usr/bin/env bash
# What a collection with nothing to delete costs on a large store: `chaserfs gc` on a data dir
# holding SIZE GiB of chunks (distinct random bytes, so none deduplicated), with the page
# cache dropped first: its time and the bytes it read from disk (the kernel's count for the
# process, as /proc/PID/io read_bytes), beside reading the store's files whole (what a sweep
# that loaded every value would cost) in the same run.
#
#   bash bench/gc-sweep.sh [--size-gib N]     (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
SIZE_GIB=8
bench_args "[--size-gib N]" --size-gib=SIZE_GIB -- "$@"
bench_work gcsweep
bench_daemon "$WORK"
api POST /v1/workspaces '{"session_type":"sandbox","name":"big"}' >/dev/null
SID=$(api POST /v1/sessions "{\"workspace\":\"big\",\"mountpoint\":\"$WORK/mnt/big\"}" | jq -r .id)
for i in $(seq 1 "$SIZE_GIB"); do
    head -c 1G /dev/urandom >"$WORK/mnt/big/f$i"
done
sync -f "$WORK/mnt/big"
api DELETE "/v1/sessions/$SID" >/dev/null
# `chaserfs gc` opens the data dir itself: the daemon must be gone.
kill -TERM "$DAEMON"
wait "$DAEMON" || true
# A first collection takes what the session's commits left (old tree nodes); the one measured
# then has nothing to delete.
"$CHASERFS_BIN" gc --data-dir "$WORK/data" >/dev/null
STORE=$(du -sb "$WORK/data" | cut -f1)

# measure CMD...: "SECONDS READ_BYTES" of CMD and its children, the page cache dropped first.
measure() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(sys.argv[1:], check=True, stdout=open("/dev/stderr", "w"))
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{time.monotonic() - t:.2f} {r.ru_inblock * 512}")
PY
}
read -r GC_S GC_B < <(measure "$CHASERFS_BIN" gc --data-dir "$WORK/data" 2>"$WORK/gc.out")
grep -q "deleted 0 nodes and 0 chunks" "$WORK/gc.out" || {
    echo "bench/gc-sweep.sh: the collection deleted something: $(cat "$WORK/gc.out")" >&2
    exit 1
}
read -r CAT_S CAT_B < <(measure sh -c "find '$WORK/data' -type f -print0 | xargs -0 cat >/dev/null")

mib() { echo "$1 / 1048576" | bc -l | xargs printf %.1f; }
echo "chaserfs gc-sweep: a store of $(mib "$STORE") MiB ($SIZE_GIB GiB written), page cache dropped before each line"
echo "$(cat "$WORK/gc.out")"
printf '%-38s %8s s %12s MiB read %8s%% of the store\n' \
    "chaserfs gc (nothing to delete)" "$GC_S" "$(mib "$GC_B")" "$(echo "100 * $GC_B / $STORE" | bc -l | xargs printf %.3f)" \
    "reading the store's files whole" "$CAT_S" "$(mib "$CAT_B")" "$(echo "100 * $CAT_B / $STORE" | bc -l | xargs printf %.3f)"
