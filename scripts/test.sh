#!/usr/bin/env bash
# The whole pre-merge check: set up, then fmt, clippy (warnings denied) and every test.
# Everything builds with --release so RocksDB is compiled once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Third-party conformance suites the tests run on a mounted workspace.
for tool in pjdfstest@0.2.2 fsx@0.3.2; do
    name="${tool%@*}"
    if [ ! -x "${HOME:-/root}/.cargo/bin/$name" ]; then
        echo "setup: installing $tool"
        cargo install --quiet --locked "$tool"
    fi
done

# The cluster tests' stores (etcd, and Garage built once per machine): installed in the
# background while the rest builds and tests; the cluster step waits for them.
stores_log="$(mktemp)"
nice -n 10 bash scripts/install-cluster-stores.sh >"$stores_log" 2>&1 &
stores_pid=$!
export GARAGE_BIN=/var/cache/chaserfs/garage/bin/garage

# Schemathesis, from PyPI, in its own virtualenv (tests/schemathesis.rs runs it).
venv=/var/cache/chaserfs/venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "setup: installing schemathesis"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
export CHASER_SCHEMATHESIS="$venv/bin/schemathesis"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets --workspace -- -D warnings
# The cluster suite (tests/cluster.rs) runs with the rest once the stores are in; here a
# missing store fails it instead of skipping it.
if ! wait "$stores_pid"; then
    cat "$stores_log"
    echo "installing the cluster stores failed" >&2
    exit 1
fi
cat "$stores_log"
export CHASERFS_REQUIRE_CLUSTER=1
echo "== cargo test (the cluster suite too: 3 etcd members, 3 Garage nodes, two or three hosts per test)"
log="$(mktemp)"
cargo test --release --workspace 2>&1 | tee "$log"
# The engine's model and crash tests once more with overflow checks and debug assertions on
# (release builds have them off: a `nlink -= 1` underflow would wrap silently). Only the
# engine is rebuilt for this; RocksDB's C++ stays as built.
echo "== engine tests with overflow checks and debug assertions"
cargo test --release -p chaserfs-engine --test model --test crash \
    --config 'profile.release.package.chaserfs-engine.overflow-checks=true' \
    --config 'profile.release.package.chaserfs-engine.debug-assertions=true' \
    -- --skip cluster_store_matches_the_model --skip a_collector_that_lost_its_lease 2>&1 |
    tee -a "$log"
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log" "$stores_log"
