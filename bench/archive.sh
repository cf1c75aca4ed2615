#!/usr/bin/env bash
# Tar export and import: a workspace of 20,000 small files plus N MiB in 4 MiB files (default
# 1024), exported over HTTP as tar and tar.zst and imported back, beside GNU tar creating and
# extracting the same tree on the data dir's disk, in the same run. Prints each one's time
# and throughput and the daemon's peak RSS before and after (bounded memory: the peak should
# not follow the archive's size).
#
#   bash bench/archive.sh [MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
MIB=1024
bench_args "[MiB]" MIB -- "$@"

bench_work archive
bench_daemon "$WORK"
now() { date +%s.%N; }
peak_rss() { awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$DAEMON/status"; }
populate() {
    python3 - "$1" "$MIB" <<'EOF'
import os, sys
root, mib = sys.argv[1], int(sys.argv[2])
for i in range(20000):
    d = os.path.join(root, "small", "d%02d" % (i // 1000))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "w") as f:
        f.write("small file %d\n" % i)
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for i in range(mib // 4):
    with open(os.path.join(root, "big", "b%04d" % i), "wb") as f:
        f.write(os.urandom(4 << 20))
EOF
}
row() { printf '%-44s %8.2f s  %8.1f MiB/s\n' "$1" "$2" "$(echo "$3 / 1048576 / $2" | bc -l)"; }

api POST /v1/workspaces '{"session_type":"sandbox","name":"src"}' >/dev/null
SID=$(api POST /v1/sessions "{\"workspace\":\"src\",\"mountpoint\":\"$WORK/mnt/src\"}" | jq -r .id)
populate "$WORK/mnt/src"
api DELETE "/v1/sessions/$SID" >/dev/null
echo "daemon peak RSS after filling the workspace: $(peak_rss)"
auth=(-H "Authorization: Bearer $KEY")

t0=$(now); curl -sSf "${auth[@]}" -o "$WORK/src.tar" "$URL/v1/workspaces/src/archive"; t1=$(now)
EXPORT_S=$(echo "$t1 - $t0" | bc -l); BYTES=$(stat -c %s "$WORK/src.tar")
echo "after export: $(peak_rss)"
t0=$(now); curl -sSf "${auth[@]}" -o "$WORK/src.tar.zst" "$URL/v1/workspaces/src/archive?format=tar.zst"; t1=$(now)
EXPORT_Z=$(echo "$t1 - $t0" | bc -l)
t0=$(now)
curl -sSf "${auth[@]}" -X POST -H "Content-Type: application/x-tar" -T "$WORK/src.tar" "$URL/v1/workspaces/import?name=back" >/dev/null
t1=$(now); IMPORT_S=$(echo "$t1 - $t0" | bc -l)
echo "after import: $(peak_rss)"

# Native: the same tree on the data dir's disk, archived and extracted by GNU tar.
mkdir -p "$WORK/native/src" "$WORK/native/out"
tar -xf "$WORK/src.tar" -C "$WORK/native/src"
sync
t0=$(now); tar -cf "$WORK/native.tar" -C "$WORK/native/src" .; t1=$(now)
NATIVE_C=$(echo "$t1 - $t0" | bc -l)
t0=$(now); tar -xf "$WORK/native.tar" -C "$WORK/native/out"; sync; t1=$(now)
NATIVE_X=$(echo "$t1 - $t0" | bc -l)

echo "chaserfs archive: 20,000 small files + $MIB MiB in 4 MiB files; archive $((BYTES / 1048576)) MiB"
row "chaserfs export, tar over HTTP" "$EXPORT_S" "$BYTES"
row "chaserfs export, tar.zst over HTTP" "$EXPORT_Z" "$BYTES"
row "chaserfs import of the tar over HTTP (ready)" "$IMPORT_S" "$BYTES"
row "native tar -c on the same disk" "$NATIVE_C" "$BYTES"
row "native tar -x + sync on the same disk" "$NATIVE_X" "$BYTES"
echo "tar.zst size: $(( $(stat -c %s "$WORK/src.tar.zst") / 1048576 )) MiB (random data does not compress)"
echo "daemon peak RSS at the end: $(peak_rss)"
