# Sourced by scripts/test.sh: Prometheus for the metrics tests, installed when missing into the
# project's own tool directory TOOLS_DIR (default ~/.cache/outbox-relay/tools), never globally.
#
# require_prometheus: Prometheus's `prometheus` and `promtool` from the Debian package
# `prometheus` (the metrics tests check the exposition with promtool and scrape the real handler
# with a real server). The package is downloaded with `apt-get download` and unpacked with
# `dpkg-deb -x` into TOOLS_DIR/prometheus, so nothing is installed system-wide and no service is
# started; TOOLS_DIR/bin gets links to the two binaries, which the tests look for there first.

TOOLS_DIR="${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/tools}"

require_prometheus() {
  local bin="$TOOLS_DIR/bin" root="$TOOLS_DIR/prometheus"
  if [[ -x "$bin/promtool" && -x "$bin/prometheus" ]]; then
    return 0
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
    echo "the metrics tests need Prometheus (Debian package prometheus): apt-get and dpkg-deb are required to fetch it" >&2
    exit 1
  }
  echo "==> fetching the Debian package prometheus into $root"
  local tmp
  tmp="$(mktemp -d)"
  # Without package lists (a fresh container) the download fails: refresh them when we may.
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    if [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq
    fi
    (cd "$tmp" && apt-get download prometheus) || {
      echo "cannot download the Debian package prometheus (run apt-get update as root, then try again)" >&2
      rm -rf "$tmp"
      exit 1
    }
  fi
  rm -rf "$root"
  mkdir -p "$root" "$bin"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$root"
  rm -rf "$tmp"
  ln -sf "$root/usr/bin/prometheus" "$bin/prometheus"
  ln -sf "$root/usr/bin/promtool" "$bin/promtool"
  echo "    $("$bin/promtool" --version 2>&1 | head -1)"
}
