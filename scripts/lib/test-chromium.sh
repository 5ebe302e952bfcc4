# Sourced by scripts/test.sh: the status page's browser test needs headless Chromium and its
# WebDriver (Debian packages `chromium` and `chromium-driver`). Installed only when missing.

ensure_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return
  fi
  echo "==> installing chromium and chromium-driver (the status page's browser test)"
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
}
