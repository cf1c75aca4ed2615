#!/usr/bin/env bash
# Snapshot diff: a workspace of N files (default 100,000, in directories of 1,000) where 10
# change (5 modified, 3 added, 2 removed, in different directories) after a snapshot. Times
# `GET /v1/workspaces/W/diff?from=before` beside a native `diff -rq` of two ext4 copies of the
# same trees, in the same run, and the same diff on a workspace of N/100 files, to show that
# the diff's cost follows the change, not the workspace.
#
#   bash bench/diff.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
N=100000
bench_args "[N]" N -- "$@"
RUNS=5

bench_work diff
bench_daemon "$WORK"
now_ms() { echo "$(date +%s%N) / 1000000" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'; }

# N small files under DIR, 1,000 per directory.
populate() {
    python3 - "$1" "$2" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d.txt" % i), "w") as f:
        f.write("file %d\n" % i)
EOF
}
# The 10 changes, in directories spread over the tree.
change() {
    local root=$1 dirs=$(( ($2 + 999) / 1000 ))
    for k in 0 1 2 3 4; do
        local d=$(( k * dirs / 5 ))
        echo "changed" >>"$root/$(printf d%03d $d)/$(printf f%06d.txt $(( d * 1000 + 1 )))"
    done
    for k in 0 1 2; do echo "new" >"$root/$(printf d%03d $(( k * dirs / 3 )))/new$k.txt"; done
    rm "$root/d000/f000002.txt" "$root/$(printf d%03d $(( dirs - 1 )))/$(printf f%06d.txt $(( (dirs - 1) * 1000 + 3 )))"
}
# A workspace NAME of COUNT files, snapshot `before`, then the 10 changes committed.
workspace() {
    local name=$1 count=$2 sid
    api POST /v1/workspaces "{\"session_type\":\"sandbox\",\"name\":\"$name\"}" >/dev/null
    sid=$(api POST /v1/sessions "{\"workspace\":\"$name\",\"mountpoint\":\"$WORK/mnt/$name\"}" | jq -r .id)
    populate "$WORK/mnt/$name" "$count"
    api DELETE "/v1/sessions/$sid" >/dev/null
    api POST "/v1/workspaces/$name/snapshots" '{"name":"before"}' >/dev/null
    sid=$(api POST /v1/sessions "{\"workspace\":\"$name\",\"mountpoint\":\"$WORK/mnt/$name\"}" | jq -r .id)
    change "$WORK/mnt/$name" "$count"
    api DELETE "/v1/sessions/$sid" >/dev/null
}
time_diff() {
    local name=$1 t0
    for _ in $(seq 1 $RUNS); do
        t0=$(now_ms)
        api GET "/v1/workspaces/$name/diff?from=before" >"$WORK/diff.json"
        echo "$(now_ms) - $t0" | bc -l
    done | median
}

workspace big "$N"
workspace small $(( N / 100 ))
BIG_MS=$(time_diff big)
BIG_CHANGES=$(jq '.changes | length' "$WORK/diff.json")
SMALL_MS=$(time_diff small)
SMALL_CHANGES=$(jq '.changes | length' "$WORK/diff.json")
api GET "/v1/workspaces/big/diff?from=before" | jq -r '.changes[] | "  \(.change) \(.path) (\(.kind), \(.size) bytes)"' >"$WORK/changes"

# Native: the same trees on the data dir's filesystem, compared by diff -rq (page cache warm).
mkdir -p "$WORK/native"
populate "$WORK/native/a" "$N"
cp -a "$WORK/native/a" "$WORK/native/b"
change "$WORK/native/b" "$N"
NATIVE_MS=$(for _ in $(seq 1 $RUNS); do
    t0=$(now_ms)
    diff -rq "$WORK/native/a" "$WORK/native/b" >/dev/null || true
    echo "$(now_ms) - $t0" | bc -l
done | median)
NATIVE_CHANGES=$(diff -rq "$WORK/native/a" "$WORK/native/b" | wc -l || true)

echo "chaserfs diff: $N files, 10 changed after snapshot 'before' (median of $RUNS)"
printf '%-44s %9s ms  %s\n' "chaserfs API diff, $N files" "$BIG_MS" "($BIG_CHANGES entries, directories included)"
printf '%-44s %9s ms  %s\n' "chaserfs API diff, $(( N / 100 )) files" "$SMALL_MS" "($SMALL_CHANGES entries)"
printf '%-44s %9s ms  %s\n' "native diff -rq of two ext4 copies, $N files" "$NATIVE_MS" "($NATIVE_CHANGES lines)"
printf 'ratio native / chaserfs at %s files: %.0fx\n' "$N" "$(echo "$NATIVE_MS / $BIG_MS" | bc -l)"
echo "the changes listed:"
cat "$WORK/changes"
