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

# The cluster tests' stores: etcd from Debian, Garage (S3) built from crates.io once per
# machine (~15 minutes on 2 cores), kept outside the checkout like the build. Only with
# CHASERFS_CLUSTER_TESTS=1: the cluster tests are ignored until every scenario passes.
cluster_tests="${CHASERFS_CLUSTER_TESTS:-0}"
if [ "$cluster_tests" = 1 ] && { ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; }; then
    echo "setup: installing etcd"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
garage_version=2.1.0
export GARAGE_BIN=/var/cache/chaserfs/garage/bin/garage
if [ "$cluster_tests" = 1 ] && ! "$GARAGE_BIN" --version 2>/dev/null | grep -q "$garage_version"; then
    echo "setup: building Garage $garage_version"
    CARGO_TARGET_DIR=/var/cache/chaserfs/garage-target \
        cargo install --quiet --locked "garage@$garage_version" --root /var/cache/chaserfs/garage
fi

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
echo "== cargo test"
log="$(mktemp)"
cargo test --release --workspace 2>&1 | tee "$log"
# The engine's model and crash tests once more with overflow checks and debug assertions on
# (release builds have them off: a `nlink -= 1` underflow would wrap silently). Only the
# engine is rebuilt for this; RocksDB's C++ stays as built.
echo "== engine tests with overflow checks and debug assertions"
cargo test --release -p chaserfs-fs --test model --test crash \
    --config 'profile.release.package.chaserfs-fs.overflow-checks=true' \
    --config 'profile.release.package.chaserfs-fs.debug-assertions=true' 2>&1 | tee -a "$log"
if [ "$cluster_tests" = 1 ]; then
    echo "== cluster tests"
    cargo test --release -p chaserfs --test cluster -- --ignored 2>&1 | tee -a "$log"
fi
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
