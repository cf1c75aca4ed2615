#!/usr/bin/env bash
# Set up, build and run the daemon on its embedded defaults: data in /var/lib/chaserfs, the API
# on 127.0.0.1:7878, sessions mounting under /run/chaserfs or /workspace, and on first start a
# printed API key for the account `default` (kept in /var/lib/chaserfs/api-key).
# Extra arguments go to `chaserfs serve` (see `chaserfs serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin chaserfs
# The same binary is the CLI client: put it on PATH.
ln -sf "$CARGO_TARGET_DIR/release/chaserfs" /usr/local/bin/chaserfs
exec "$CARGO_TARGET_DIR/release/chaserfs" serve "$@"
