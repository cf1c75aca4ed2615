#!/usr/bin/env bash
# A cluster's two stores on loopback, for tests and trying it out: 3 etcd members and 3
# Garage nodes (replication factor 3), each a real process with its own data dir under DIR.
#
#   scripts/cluster.sh start DIR   # starts them, creates the bucket and key, writes DIR/env
#   scripts/cluster.sh stop DIR    # stops every process started in DIR
#
# DIR/env holds what `chaserfs serve` needs (source it): CHASER_S3_ENDPOINT, CHASER_S3_BUCKET,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, CHASER_ETCD_ENDPOINTS, and each process's pid
# (ETCD_PID_1.., GARAGE_PID_1..) for fault tests. PORT_BASE (default 24000) moves the ports:
# etcd clients BASE+1..3, etcd peers BASE+11..13, Garage S3 BASE+21..23, RPC BASE+31..33,
# admin BASE+41..43. GARAGE_FSYNC=false turns Garage's data and metadata fsync off (to tell
# its cost apart in benchmarks; default on).
set -euo pipefail

cmd="${1:?usage: cluster.sh start|stop DIR}"
dir="${2:?usage: cluster.sh start|stop DIR}"
base="${PORT_BASE:-24000}"
garage="${GARAGE_BIN:-$(command -v garage || echo /var/cache/chaserfs/garage/bin/garage)}"
etcd="${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"

stop() {
    for f in "$dir"/*.pid; do
        [ -e "$f" ] || continue
        kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
}

wait_port() {
    for _ in $(seq 1 100); do
        if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster.sh: nothing listens on port $1" >&2
    return 1
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: cluster.sh start|stop DIR" >&2; exit 2; }
[ -x "$garage" ] || { echo "cluster.sh: garage not found (scripts/install-cluster-stores.sh installs it)" >&2; exit 1; }
[ -x "$etcd" ] || { echo "cluster.sh: etcd not found (apt-get install etcd-server)" >&2; exit 1; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
stop

# etcd: three members, one raft group.
initial=""
for i in 1 2 3; do
    initial+="${initial:+,}e$i=http://127.0.0.1:$((base + 10 + i))"
done
for i in 1 2 3; do
    "$etcd" --name "e$i" --data-dir "$dir/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$((base + i))" \
        --advertise-client-urls "http://127.0.0.1:$((base + i))" \
        --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-cluster "$initial" --initial-cluster-state new \
        --initial-cluster-token chaserfs-test --log-level error \
        --max-txn-ops 1024 \
        >"$dir/etcd$i.log" 2>&1 &
    echo $! >"$dir/etcd$i.pid"
done

# Garage: three nodes in one zone, every object on all three (writes need two).
secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for i in 1 2 3; do
    mkdir -p "$dir/garage$i"
    cat >"$dir/garage$i.toml" <<EOF
metadata_dir = "$dir/garage$i/meta"
data_dir = "$dir/garage$i/data"
db_engine = "sqlite"
metadata_fsync = ${GARAGE_FSYNC:-true}
data_fsync = ${GARAGE_FSYNC:-true}
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((base + 30 + i))"
rpc_public_addr = "127.0.0.1:$((base + 30 + i))"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((base + 20 + i))"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((base + 40 + i))"
admin_token = "chaserfs-test-admin"
EOF
    RUST_LOG=${GARAGE_LOG:-warn} "$garage" -c "$dir/garage$i.toml" server >"$dir/garage$i.log" 2>&1 &
    echo $! >"$dir/garage$i.pid"
done
for i in 1 2 3; do
    wait_port $((base + i))
    wait_port $((base + 30 + i))
done
g() { "$garage" -c "$dir/garage1.toml" "$@"; }
ids=()
for i in 1 2 3; do
    ids+=("$("$garage" -c "$dir/garage$i.toml" node id -q 2>/dev/null)")
done
for i in 1 2; do
    g node connect "${ids[$i]}" >/dev/null
done
for id in "${ids[@]}"; do
    g layout assign -z dc1 -c 1G "${id%@*}" >/dev/null
done
g layout apply --version 1 >/dev/null
# The layout reaches every node within a moment; the bucket needs it.
for _ in $(seq 1 50); do
    if g bucket create chaserfs >/dev/null 2>&1; then break; fi
    sleep 0.2
done
key_info="$(g key create chaserfs-key)"
key_id="$(echo "$key_info" | awk -F': *' '/Key ID/ {print $2; exit}')"
key_secret="$(echo "$key_info" | awk -F': *' '/Secret key/ {print $2; exit}')"
g bucket allow --read --write --owner chaserfs --key chaserfs-key >/dev/null

{
    echo "export CHASER_S3_ENDPOINT=http://127.0.0.1:$((base + 21))"
    # Every node serves the whole S3 API: a host is best sent to one of its own.
    for i in 1 2 3; do
        echo "export CHASER_S3_ENDPOINT_$i=http://127.0.0.1:$((base + 20 + i))"
    done
    echo "export CHASER_S3_BUCKET=chaserfs"
    echo "export AWS_ACCESS_KEY_ID=$key_id"
    echo "export AWS_SECRET_ACCESS_KEY=$key_secret"
    echo "export CHASER_ETCD_ENDPOINTS=http://127.0.0.1:$((base + 1)),http://127.0.0.1:$((base + 2)),http://127.0.0.1:$((base + 3))"
    for i in 1 2 3; do
        echo "export ETCD_PID_$i=$(cat "$dir/etcd$i.pid")"
        echo "export GARAGE_PID_$i=$(cat "$dir/garage$i.pid")"
    done
} >"$dir/env"
echo "cluster.sh: 3 etcd members and 3 Garage nodes up; source $dir/env"
