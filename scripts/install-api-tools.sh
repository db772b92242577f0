#!/usr/bin/env bash
# Installs the OpenAPI linter the test suite runs (`redocly lint`, recommended ruleset) into
# .tools/api/ inside this checkout: a pinned version from npm, nothing global, git-ignored.
# Needs node and npm (Debian 12: apt-get install nodejs npm). Does nothing if that version is
# already there.
set -euo pipefail
REDOCLY_VERSION=1.34.20
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/.tools/api
if [[ -x $dir/node_modules/.bin/redocly ]] &&
   [[ $("$dir/node_modules/.bin/redocly" --version 2>/dev/null) == "$REDOCLY_VERSION" ]]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "install-api-tools: npm is missing; install nodejs and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
mkdir -p "$dir"
echo "install-api-tools: @redocly/cli@$REDOCLY_VERSION into $dir"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --save-exact \
  "@redocly/cli@$REDOCLY_VERSION" >/dev/null
"$dir/node_modules/.bin/redocly" --version
