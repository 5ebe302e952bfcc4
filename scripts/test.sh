#!/usr/bin/env bash
# make test: fetch what is missing, start one real mongod replica set for the whole run, run
# every test (unit, integration against the real `handler` binary, doc tests), stop mongod.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/test-mongod.sh
source scripts/lib/prometheus.sh
source scripts/lib/test-chromium.sh
require_tools "make test"
require_prometheus
ensure_chromium

echo "==> building"
cargo build --locked --workspace --all-targets

start_test_mongod test

echo "==> running the tests"
rm -rf target/chaos   # the chaos suite (short form, CHAOS_SCALE=short) writes its ledger here
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
[[ -f target/chaos/report.txt ]] && { echo "==> chaos ledger (short)"; cat target/chaos/report.txt; }
cargo test --locked --workspace --doc
