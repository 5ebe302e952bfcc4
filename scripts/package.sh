#!/usr/bin/env bash
# make package: the deployable `handler` in the app root, ready for `func start` or
# `func azure functionapp publish`. It links against glibc 2.17 with cargo-zigbuild (Zig as the
# linker, from the `ziglang` wheel), so the binary runs on Functions images whose glibc is older
# than this machine's.
#
# Both tools are pinned and installed, when missing, into the project's own tool directory
# TOOLS_DIR (default ~/.cache/outbox-relay/tools): `ziglang` into a Python virtual environment
# there, cargo-zigbuild with `cargo install --root` there. Nothing is installed globally.
# `scripts/package.sh --tools-only` installs them and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.13.0
TOOLS_DIR="${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/tools}"
venv="$TOOLS_DIR/venv"
zigbuild="$TOOLS_DIR/bin/cargo-zigbuild"

has_ziglang='import importlib.metadata as m, sys; sys.exit(m.version("ziglang") != sys.argv[1])'
if ! "$venv/bin/python" -c "$has_ziglang" "$ZIGLANG_VERSION" 2>/dev/null; then
  echo "==> installing ziglang==$ZIGLANG_VERSION (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
fi
if [[ "$("$zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $ZIGBUILD_VERSION" ]]; then
  echo "==> installing cargo-zigbuild $ZIGBUILD_VERSION (crates.io) into $TOOLS_DIR"
  cargo install --locked --quiet --root "$TOOLS_DIR" cargo-zigbuild --version "$ZIGBUILD_VERSION"
fi
# cargo-zigbuild takes zig from this variable before it looks at the PATH: the pinned one.
CARGO_ZIGBUILD_ZIG_PATH="$("$venv/bin/python" -c 'import pathlib, ziglang; print(pathlib.Path(ziglang.__file__).with_name("zig"))')"
export CARGO_ZIGBUILD_ZIG_PATH
echo "    zig $("$CARGO_ZIGBUILD_ZIG_PATH" version), $("$zigbuild" --version) in $TOOLS_DIR"
[[ "${1:-}" == --tools-only ]] && exit 0

echo "==> building handler (x86_64-unknown-linux-gnu, glibc 2.17)"
"$zigbuild" zigbuild --locked --profile dist -p outbox-relay --bin handler --target x86_64-unknown-linux-gnu.2.17
cp target/x86_64-unknown-linux-gnu/dist/handler ./handler
chmod +x ./handler
floor="$(objdump -T ./handler | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)"
echo "./handler built ($(du -h handler | cut -f1)); highest glibc symbol version it needs: ${floor:-unknown}"
echo "deploy: func azure functionapp publish <app-name>   (or zip: host.json, */function.json, handler)"
