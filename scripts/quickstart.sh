#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root):
#   scripts/quickstart.sh demo [lazymig demo flags]   install, build, run the demo migration
#   scripts/quickstart.sh test [ctest flags]          install, build, run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  demo|test) shift ;;
  *) echo "usage: $0 demo|test [args...]" >&2; exit 2 ;;
esac

scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"

if [[ $mode == demo ]]; then
  exec build/bin/lazymig demo "$@"
fi
exec ctest --preset release -j2 "$@"
