#!/usr/bin/env bash
# Clone, snapshot and restore over HTTP with 1 and 8 clients, on a 1-file and an N-file
# workspace, beside two baselines from the same run: the HTTP floor (`GET /healthz` with the
# same clients) and a native `cp -a` of the same tree on the same disk (a clone without
# copy-on-write). It is `chaserfs bench --files 1,N --clients 1,8 --baseline` against a daemon
# of its own; with `--cluster DIR` (stores started by `scripts/cluster.sh start DIR`) that
# daemon is a cluster host: clones and snapshots are etcd transactions, objects go to Garage.
#
#   bash bench/api.sh [--files N] [--count N] [--cluster DIR]   (defaults: 100000 files,
#                                                                2000 calls per row)
set -euo pipefail
HERE=$PWD
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/lib.sh
FILES=100000
COUNT=2000
CLUSTER=
bench_args "[--files N] [--count N] [--cluster DIR]" --files=FILES --count=COUNT --cluster=CLUSTER -- "$@"

bench_work api
serve=()
if [ -n "$CLUSTER" ]; then
    # The daemon reads the stores from the environment; its records under a prefix of its own.
    source "$(cd "$HERE" && realpath "$CLUSTER")/env"
    KEY=chs_api_bench_cluster_key
    echo "default $KEY" >"$WORK/keys"
    serve=(--api-keys-file "$WORK/keys" --etcd-prefix "/api-bench-$(basename "$WORK")/")
fi
bench_daemon "$WORK" "" "${serve[@]}"
CHASER_API_URL="$URL" CHASER_API_KEY="$KEY" "$CHASERFS_BIN" bench --mount-root "$WORK/mnt" \
    --ops clone,snapshot,restore --clients 1,8 --files "1,$FILES" --count "$COUNT" \
    --baseline --baseline-dir "$WORK"
