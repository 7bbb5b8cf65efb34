#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need (Debian's
# chromium and chromedriver for the balancer-manager browser test, cargo-nextest, the
# Python packages that render and validate the Helm chart and kustomize output), builds
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
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed for deploy/tests" >&2; exit 1; }
python3 -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check -r deploy/tests/requirements.txt

cargo build --workspace --locked
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked "$@"
# The Helm chart and kustomize manifests (uses target/debug/routemap built above).
python3 -m unittest discover -s deploy/tests
