#!/usr/bin/env bash
# Installs what a cluster on loopback needs (scripts/cluster.sh), if missing: etcd from Debian,
# and Garage built from crates.io into /var/cache/chaserfs/garage (outside the checkout, like
# the build; ~30 minutes on 2 cores, once per machine). Garage is built with SQLite metadata
# only and opt-level 1: it is a test store here, and that halves its build.
#
#   bash scripts/install-cluster-stores.sh [--optimised]
#
# --optimised also builds Garage with full optimisation (opt-level 3) into
# /var/cache/chaserfs/garage-opt, for bench/cluster.sh, which uses it when it is there (16
# minutes here, once; the tests keep the cheap build).
set -euo pipefail
optimised=0
case "${1:-}" in
    --optimised) optimised=1 ;;
    "") ;;
    *) echo "usage: install-cluster-stores.sh [--optimised]" >&2; exit 2 ;;
esac
# openssl makes the certificates of the etcd-over-TLS test.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing etcd and openssl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client openssl >/dev/null
fi
garage_version=2.1.0
# build_garage NAME OPT_LEVEL: Garage into /var/cache/chaserfs/NAME, unless it is there.
build_garage() {
    if ! "/var/cache/chaserfs/$1/bin/garage" --version 2>/dev/null | grep -q "$garage_version"; then
        echo "setup: building Garage $garage_version (opt-level $2)"
        CARGO_PROFILE_RELEASE_OPT_LEVEL=$2 CARGO_TARGET_DIR="/var/cache/chaserfs/$1-target" \
            cargo install --quiet --locked "garage@$garage_version" --no-default-features \
            --features bundled-libs,sqlite --root "/var/cache/chaserfs/$1"
    fi
}
build_garage garage 1
if [ "$optimised" = 1 ]; then
    build_garage garage-opt 3
fi
