#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need (Debian's
# chromium and chromedriver for the balancer-manager browser test, cargo-nextest), builds
# the binaries the end-to-end tests start, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
  echo "== installing ${need[*]} from Debian's packages"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

cargo build --workspace --locked
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked "$@"
