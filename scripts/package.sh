#!/usr/bin/env bash
# make package: the release `handler` in the app root, ready for `func start` or
# `func azure functionapp publish`. With cargo-zigbuild installed (and the `ziglang` wheel) it
# links against glibc 2.17, so the binary runs on older Functions images than this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo zigbuild --help >/dev/null 2>&1 && python3 -c 'import ziglang' 2>/dev/null; then
  cargo zigbuild --locked --release -p outbox-relay --bin handler --target x86_64-unknown-linux-gnu.2.17
  bin=target/x86_64-unknown-linux-gnu/release/handler
else
  echo "note: cargo-zigbuild not found; building against this machine's glibc" >&2
  echo "      (cargo install cargo-zigbuild && pip install ziglang for a glibc 2.17 floor)" >&2
  cargo build --locked --release -p outbox-relay --bin handler
  bin=target/release/handler
fi
cp "$bin" ./handler
chmod +x ./handler
if command -v objdump >/dev/null; then
  floor="$(objdump -T ./handler | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
  echo "./handler built; highest glibc symbol version it needs: ${floor:-unknown}"
else
  echo "./handler built"
fi
