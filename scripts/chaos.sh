#!/usr/bin/env bash
# make chaos: the chaos suite at full scale (tests/chaos): SIGKILLed relays, mongod restarts,
# Event Grid outages, throttling, lost answers, poison events, many relays, replayed timers,
# slow publishes against the lease. Like scripts/test.sh: build, start one real mongod replica
# set (its own for the mongod-restart scenario), run, stop mongod. The counts of every scenario
# are printed at the end and kept in target/chaos/ (report.json, report.txt, <scenario>.json).
# CHAOS_SCALE=short runs the quick form that `make test` also runs.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/test-mongod.sh
require_tools "make chaos"
export CHAOS_SCALE="${CHAOS_SCALE:-full}"

echo "==> building"
cargo build --locked --workspace --bins --test chaos

start_test_mongod chaos

rm -rf target/chaos
echo "==> running the chaos suite (CHAOS_SCALE=$CHAOS_SCALE)"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --test chaos --no-fail-fast || status=$?
else
  cargo test --locked --test chaos --no-fail-fast || status=$?
fi
if [[ -f target/chaos/report.txt ]]; then
  echo "==> ledger (target/chaos/report.json)"
  cat target/chaos/report.txt
fi
exit "$status"
