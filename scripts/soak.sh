#!/usr/bin/env bash
# Soak test (not CI): `serve` in release on PostgreSQL, following a git
# repository, against the Asterisk stand-in, under API reads and writes,
# operator edits pushed with a signed webhook, and replayed calls, for a
# fixed time; samples the daemon's RSS and fds and every request's latency,
# then checks that memory and fds stayed flat, p99 latency stayed stable and
# every write and call is accounted for (examples/soak.rs says how).
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test scripts/soak.sh [--minutes N] [--flat-pct P]
#
# Default 30 minutes. Output (report.txt, resources.csv, daemon.log) in
# $CARGO_TARGET_DIR/soak (default target/soak). Exit status 1 if a check fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
: "${DATABASE_URL:?DATABASE_URL must point at a PostgreSQL server}"
cd "$root"
cargo build --release --locked --bin asterisk-gitops --example soak
exec "$target/release/examples/soak" --daemon "$target/release/asterisk-gitops" --out "$target/soak" "$@"
