#!/usr/bin/env bash
# make package: the deployable `handler` in the app root, ready for `func start` or
# `func azure functionapp publish`. It links against glibc 2.17 with cargo-zigbuild (Zig as the
# linker, from the `ziglang` wheel), so the binary runs on Functions images whose glibc is older
# than this machine's; both tools are installed (pinned) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.13.0
if ! python3 -c 'import ziglang' 2>/dev/null; then
  echo "==> installing ziglang==$ZIGLANG_VERSION (PyPI)"
  python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
fi
if ! cargo zigbuild --help >/dev/null 2>&1; then
  echo "==> installing cargo-zigbuild $ZIGBUILD_VERSION (crates.io)"
  cargo install --locked --quiet cargo-zigbuild --version "$ZIGBUILD_VERSION"
fi

echo "==> building handler (x86_64-unknown-linux-gnu, glibc 2.17)"
cargo zigbuild --locked --profile dist -p outbox-relay --bin handler --target x86_64-unknown-linux-gnu.2.17
cp target/x86_64-unknown-linux-gnu/dist/handler ./handler
chmod +x ./handler
floor="$(objdump -T ./handler | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)"
echo "./handler built ($(du -h handler | cut -f1)); highest glibc symbol version it needs: ${floor:-unknown}"
echo "deploy: func azure functionapp publish <app-name>   (or zip: host.json, */function.json, handler)"
