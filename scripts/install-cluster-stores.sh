#!/usr/bin/env bash
# Installs what a cluster on loopback needs (scripts/cluster.sh), if missing: etcd from Debian,
# and Garage built from crates.io into /var/cache/chaserfs/garage (outside the checkout, like
# the build; ~30 minutes on 2 cores, once per machine). Garage is built with SQLite metadata
# only and opt-level 1: it is a test store here, and that halves its build.
set -euo pipefail
# openssl makes the certificates of the etcd-over-TLS test.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing etcd and openssl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client openssl >/dev/null
fi
garage_version=2.1.0
garage_bin=/var/cache/chaserfs/garage/bin/garage
if ! "$garage_bin" --version 2>/dev/null | grep -q "$garage_version"; then
    echo "setup: building Garage $garage_version"
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_TARGET_DIR=/var/cache/chaserfs/garage-target \
        cargo install --quiet --locked "garage@$garage_version" --no-default-features \
        --features bundled-libs,sqlite --root /var/cache/chaserfs/garage
fi
