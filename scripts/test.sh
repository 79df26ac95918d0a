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
need etcd etcd-server # the cluster tests start a real etcd on loopback
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

as_root=()
if [ "$(id -u)" -ne 0 ] && ((${#missing[@]})); then
  command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
apt_updated=
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  apt_updated=1
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# promtool and prometheus for the observability tests, from Debian's prometheus package: downloaded
# and unpacked into target/, not installed. Installing it would run its maintainer scripts, which
# add a system user and, on a machine without systemd, start a Prometheus on :9090 through the init
# script; the tests need only the two binaries (linked against libc alone).
prom=target/prometheus
if [ ! -x "$prom/usr/bin/promtool" ] || [ ! -x "$prom/usr/bin/prometheus" ]; then
  mkdir -p "$prom/deb"
  rm -f "$prom"/deb/prometheus_*.deb
  if ! (cd "$prom/deb" && apt-get download prometheus 2>/dev/null); then
    if [ -z "$apt_updated" ]; then
      if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi
      "${as_root[@]}" apt-get update -qq
    fi
    (cd "$prom/deb" && apt-get download prometheus)
  fi
  dpkg-deb -x "$prom"/deb/prometheus_*.deb "$prom"
fi
export SWITCHBOARD_PROMTOOL="$PWD/$prom/usr/bin/promtool"
export SWITCHBOARD_PROMETHEUS="$PWD/$prom/usr/bin/prometheus"
"$SWITCHBOARD_PROMTOOL" --version | head -1

# The interoperability test's Python client: grpcio-tools from PyPI, in a virtualenv of our own.
venv=target/python
if ! "$venv/bin/python" -c 'import grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
export SWITCHBOARD_PYTHON="$PWD/$venv/bin/python"

export SWITCHBOARD_ETCD="$(command -v etcd)"

cargo test --workspace --locked
