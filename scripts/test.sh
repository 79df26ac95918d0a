#!/usr/bin/env bash
# Sets up what Switchboard's tests need on a fresh Debian machine, then runs every test.
# Run it as root (it installs missing Debian packages with apt-get), or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.88 or newer (https://rustup.rs), then run this again" >&2
  exit 1
fi

# Debian packages the tests use, each named with the command that shows it is there.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need kill procps # the CLI tests stop the gateway with SIGTERM
need python3 python3 # the gRPC interoperability test's client
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
    as_root=(sudo)
  fi
  echo "installing: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The interoperability test's Python client: grpcio-tools from PyPI, in a virtualenv of our own.
venv=target/python
if ! "$venv/bin/python" -c 'import grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
export SWITCHBOARD_PYTHON="$PWD/$venv/bin/python"

cargo test --workspace --locked
