#!/usr/bin/env bash
# make bench: measures, never asserts. Builds the release binaries, then target/release/outbox-bench
# starts its own mongod replica set (under target/bench/), the release eventgrid-receiver and the
# release `handler serve`, runs the scenarios, stops everything (also on failure or Ctrl-C), and
# writes the JSON figures to target/bench/results.json (and prints them).
# Extra arguments go to the benchmark (`outbox-bench --help`), e.g.
#   scripts/bench.sh --scenario drain --drain-events 5000
#   make bench ARGS="--writes 500 --drain-events 5000"      # quick smoke run
# Exit code 1 only when something broke (a failed write, a lost event); a missed target is not.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --workspace --bins
exec target/release/outbox-bench --out target/bench/results.json "$@"
