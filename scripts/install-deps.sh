#!/usr/bin/env bash
# Installs what lazymig needs to build and test, from Debian 12 packages, and nothing else.
# Only missing packages are installed; a machine that has them all is left untouched.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libevent-dev libssl-dev librocksdb-dev prometheus-cpp-dev libyaml-cpp-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev libcli11-dev libcurl4-openssl-dev
  iproute2 openssl procps
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev
  python3 python3-yaml python3-jsonschema yamllint systemd prometheus curl jq
  clang-16 libclang-rt-16-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo $0)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
