#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need (Debian's
# chromium and chromedriver for the balancer-manager browser test, curl and openssl for the
# TLS tests (real clients as operators use them), python3-venv for the
# Python test tools, cargo-nextest), puts the Python packages that render and validate the
# Helm chart and kustomize output in a virtual environment under target/ (Debian's own
# Python refuses `pip install` outside one, PEP 668), builds the binaries the end-to-end
# tests start, and runs every test. Arguments are passed on to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python test tools live here, not in the system's Python: target/ is already the
# place for everything a build makes, and `cargo clean` removes it with the rest.
venv=target/venv

# Debian packages, installed in one apt-get call so that a machine without root or sudo
# gets one message naming all of them.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# `python3 -m venv` needs ensurepip, which Debian ships in python3-venv; a venv that
# already works needs neither.
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1 &&
  ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  need+=(python3-venv)
fi
# kubectl (for `kubectl kustomize`) is asked for, not installed: Debian 12's own
# (kubernetes-client) is 1.20, far older than the Kubernetes 1.32 the manifests are checked
# against. Asked before anything is installed, so that one run names everything missing.
if ! command -v kubectl >/dev/null; then
  {
    echo "scripts/test.sh needs kubectl (with kustomize) on the PATH: https://kubernetes.io/docs/tasks/tools/"
    ((${#need[@]} == 0)) || echo "It also needs these Debian packages, which it installs when run as root or with sudo: ${need[*]}"
  } >&2
  exit 1
fi
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null; then
    sudo="sudo"
  else
    {
      echo "scripts/test.sh needs these Debian packages, and cannot install them without root or sudo:"
      echo "  ${need[*]}"
      echo "Install them as root (apt-get install ${need[*]}) and run it again."
    } >&2
    exit 1
  fi
  echo "== installing ${need[*]} from Debian's packages"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# A venv without a working pip (left by a `python3 -m venv` that ran before python3-venv
# was installed, or whose Python was upgraded away) is made again from scratch.
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "== creating the Python virtual environment $venv"
  python3 -m venv --clear "$venv"
fi
# Installed again whenever requirements.txt changes, not only when a module is missing,
# so a version bump reaches every machine; the copy records what is installed.
if ! cmp -s deploy/tests/requirements.txt "$venv/requirements.txt"; then
  echo "== installing deploy/tests/requirements.txt into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r deploy/tests/requirements.txt
  cp deploy/tests/requirements.txt "$venv/requirements.txt"
fi

cargo build --workspace --locked
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked "$@"
# The Helm chart and kustomize manifests (uses target/debug/routemap built above).
"$venv/bin/python" -m unittest discover -s deploy/tests
