#!/usr/bin/env bash
# Issue 18, failure 7, through the binary operators run: `lazymig-agent --check-config` refuses
# a config with a repeated key, naming the key and both lines (it used to say "ok").
set -euo pipefail
agent="$1/lazymig-agent"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/ca.pem" "$work/cert.pem" "$work/key.pem"
cat >"$work/agent.yaml" <<YAML
node_name: node-a
tls: {ca_file: $work/ca.pem, cert_file: $work/cert.pem, key_file: $work/key.pem}
migration:
  stall_timeout_ms: 1000
node_name: node-b
YAML
rc=0
out=$("$agent" --check-config "$work/agent.yaml" 2>&1) || rc=$?
if ((rc == 0)); then
  echo "FAIL: --check-config accepted a duplicate node_name: $out"
  exit 1
fi
for want in "key 'node_name'" "lines 1 and 5"; do
  if [[ "$out" != *"$want"* ]]; then
    echo "FAIL: --check-config's error does not say \"$want\": $out"
    exit 1
  fi
done
echo "ok: $out"
