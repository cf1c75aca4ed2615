#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test chaserfs. Idempotent.
set -euo pipefail

need=()
# protobuf-compiler: etcd's client API is generated from its .proto files at build time.
# systemd: systemd-analyze, which checks the unit scripts/package.sh ships.
for pkg in build-essential clang libclang-dev pkg-config protobuf-compiler fuse3 git sqlite3 jq curl bc e2fsprogs util-linux zstd systemd; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: cargo (Rust >= 1.88) is required; install it with rustup" >&2
        exit 1
    fi
fi

# RocksDB's C++ takes ~20 minutes on 2 cores: keep build output outside the checkout so
# every clone on this machine reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/chaserfs/target}"
mkdir -p "$CARGO_TARGET_DIR"
