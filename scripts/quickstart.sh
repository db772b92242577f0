#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root):
#   scripts/quickstart.sh demo [lazymig demo flags]   install, build, run the demo migration
#   scripts/quickstart.sh test [ctest flags]          install, build, run the whole test suite
#   scripts/quickstart.sh observe [observe.py flags]  install, build, migrate with a Prometheus
#                                                     server attached; print every dashboard panel
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
  demo|test|observe) shift ;;
  *) echo "usage: $0 demo|test|observe [args...]" >&2; exit 2 ;;
esac

scripts/install-deps.sh
# The suite lints docs/openapi.yaml with a pinned @redocly/cli (npm, into .tools/).
[[ $mode == test ]] && scripts/install-api-tools.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"

if [[ $mode == demo ]]; then
  exec build/bin/lazymig demo "$@"
fi
if [[ $mode == observe ]]; then
  exec scripts/observe.py --bindir build/bin "$@"
fi
exec ctest --preset release -j2 "$@"
