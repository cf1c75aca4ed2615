#!/usr/bin/env bash
# Builds the Debian package: the release binary without its debug info as /usr/bin/chaserfs,
# the systemd unit (packaging/chaserfs.service) as /lib/systemd/system/chaserfs.service, and
# the config file (packaging/config.toml) as /etc/chaserfs/config.toml, a conffile: an upgrade
# keeps the operator's edits.
#
#   bash scripts/package.sh [--bin PATH] [--out DIR]
#       --bin: package this build instead of building one (CHASERFS_BIN does the same)
#       --out: where the .deb goes (default: the cargo target dir); its path is printed
#
# Then, on any Debian 12 machine: `dpkg -i chaserfs_VERSION_ARCH.deb`, and
# `systemctl enable --now chaserfs` where systemd runs. The package has no maintainer scripts:
# enabling the service is the operator's choice.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CHASERFS_BIN:-}"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--bin PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [ -z "$BIN" ]; then
    source scripts/setup.sh
    cargo build --release --bin chaserfs -q
    BIN="$CARGO_TARGET_DIR/release/chaserfs"
fi
OUT="${OUT:-${CARGO_TARGET_DIR:-/var/cache/chaserfs/target}}"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/DEBIAN" \
    "$STAGE/usr/share/doc/chaserfs" "$STAGE/etc/chaserfs"
# The release build keeps line tables for backtraces (hundreds of MB); the package does not.
objcopy --strip-debug "$BIN" "$STAGE/usr/bin/chaserfs"
chmod 0755 "$STAGE/usr/bin/chaserfs"
install -m 0644 packaging/chaserfs.service "$STAGE/lib/systemd/system/chaserfs.service"
install -m 0644 packaging/config.toml "$STAGE/etc/chaserfs/config.toml"
echo /etc/chaserfs/config.toml >"$STAGE/DEBIAN/conffiles"
install -m 0644 README.md "$STAGE/usr/share/doc/chaserfs/README.md"
install -m 0644 packaging/grafana-dashboard.json "$STAGE/usr/share/doc/chaserfs/grafana-dashboard.json"
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: chaserfs
Version: $VERSION
Architecture: $ARCH
Maintainer: chaserfs developers <chaserfs@localhost>
Section: admin
Priority: optional
Depends: libc6, libgcc-s1, libstdc++6
Recommends: git
Installed-Size: $(du -sk "$STAGE" | cut -f1)
Description: copy-on-write workspace storage for agent sandboxes
 A daemon that gives every sandbox or browser session a persistent disk, mounted with
 FUSE, that can be cloned and snapshotted in constant time, with a REST API.
CONTROL
mkdir -p "$OUT"
DEB="$OUT/chaserfs_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
