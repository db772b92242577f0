#!/usr/bin/env bash
# Runs docs/orchestrator-guide.md: every "# orchestrator:" block verbatim, in order, in one
# shell, against two real agents in their own network namespaces. The "# firecracker:" blocks
# become the test VM (no guest can run here); each one needs a stand-in below, so a new
# Firecracker step in the guide fails this test until it has one.
#
# With MODE precopy it runs the "# precopy:" blocks instead (the steps with the pause), the
# "# vmm:" blocks becoming a live source test VM whose vCPUs write throughout.
#
# usage: orchestrator_guide_test.sh BINDIR GUIDE [postcopy|precopy]
set -euo pipefail
BIN=$(cd "$1" && pwd)
GUIDE=$2
MODE=${3:-postcopy}
for tool in curl jq openssl ip python3; do
  command -v "$tool" >/dev/null || { echo "guide test: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/lazymig-guide.XXXXXX)
NS_A=lzg-a-$$ NS_B=lzg-b-$$
AGENTS=()
cleanup() {
  local rc=$?
  for pid in "${AGENTS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $W/src-vm.pid ]] && kill "$(cat "$W/src-vm.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  if [[ $rc -ne 0 ]]; then
    for f in "$W"/a.log "$W"/b.log "$W"/vm.log "$W"/src-vm.log; do
      [[ -f $f ]] && { echo "---- $f (tail)"; tail -n 30 "$f"; }
    done
  fi
  rm -rf "$W"
}
trap cleanup EXIT

# Host A at 10.77.0.1, host B at 10.77.0.2, joined by a veth pair.
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "lzga$$" type veth peer name "lzgb$$"
ip link set "lzga$$" netns "$NS_A"
ip link set "lzgb$$" netns "$NS_B"
ip -n "$NS_A" addr add 10.77.0.1/24 dev "lzga$$"
ip -n "$NS_B" addr add 10.77.0.2/24 dev "lzgb$$"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "lzga$$" up
ip -n "$NS_B" link set "lzgb$$" up

start_agent() {  # name ns address
  local name=$1 ns=$2 addr=$3
  "$BIN/lazymig" certs --dir "$W/pki" --node "$name" --san "spiffe://lazymig/node/$name" >/dev/null
  cat >"$W/$name.yaml" <<YAML
node_name: $name
listen:
  agent: "$addr:7443"
  control: "unix:$W/$name-control.sock"
  metrics: "127.0.0.1:9464"
tls:
  ca_file: $W/pki/lazymig-ca.crt
  cert_file: $W/pki/$name.crt
  key_file: $W/pki/$name.key
state_dir: $W/$name-state
handshake_dir: $W/$name-vmm
YAML
  ip netns exec "$ns" "$BIN/lazymig-agent" --config "$W/$name.yaml" >"$W/$name.log" 2>&1 &
  AGENTS+=($!)
  for _ in $(seq 1 150); do
    curl -sf --unix-socket "$W/$name-control.sock" http://lazymig/readyz >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "guide test: agent $name did not become ready" >&2
  return 1
}
start_agent a "$NS_A" 10.77.0.1
start_agent b "$NS_B" 10.77.0.2

# The guide's variables, and the test VM standing in for each Firecracker call.
cat >"$W/guide.sh" <<PRELUDE
set -euo pipefail
MIG=vm-42-to-b
SRC_API=$W/a-control.sock
DST_API=$W/b-control.sock
SRC_ID=spiffe://lazymig/node/a
DST_ID=spiffe://lazymig/node/b
MEM_FILE=$W/vm-42.mem
VMSTATE_FILE=$W/vm-42.vmstate
VM=(--memory memfd --size 64MiB --seed 42 --zero-ratio 0.25 --regions 2)
firecracker_pause-and-snapshot() {
  "$BIN/lazymig-testvm" source "\${VM[@]}" --snapshot-file "\$MEM_FILE" >/dev/null
  echo "device state" >"\$VMSTATE_FILE"
}
firecracker_restore() {
  "$BIN/lazymig-testvm" dest "\${VM[@]}" --handshake-socket "\$HS" --vcpus 2 --pattern random \\
    --accesses 20000 --control "unix:\$DST_API" --migration "\$MIG" --timeout-s 120 \\
    >"$W/vm.json" 2>"$W/vm.log" &
  echo \$! >"$W/vm.pid"
}
firecracker_clean-up-source() { rm -f "\$MEM_FILE" "\$VMSTATE_FILE"; }
# Pre-copy: VMM A is a live source test VM, paused by SIGUSR1; VMM B checks the stamps.
HANDOVER=$W/vm-42-handover.sock
vmm_live-handover() {
  "$BIN/lazymig-testvm" source "\${VM[@]}" --handover-socket "\$HANDOVER" --live \
    --live-vcpus 2 --live-writes-per-s 2000 --stamps-file "$W/stamps.json" >"$W/src-vm.log" 2>&1 &
  echo \$! >"$W/src-vm.pid"
}
vmm_pause() {
  kill -USR1 "\$(cat "$W/src-vm.pid")"
  for _ in \$(seq 1 300); do grep -q '"paused":true' "$W/src-vm.log" && return 0; sleep 0.1; done
  echo "guide test: the source VM did not pause" >&2; return 1
}
vmm_restore() {
  "$BIN/lazymig-testvm" dest "\${VM[@]}" --handshake-socket "\$HS" --vcpus 2 --pattern random \
    --accesses 20000 --source-stamps "$W/stamps.json" --control "unix:\$DST_API" \
    --migration "\$MIG" --timeout-s 120 >"$W/vm.json" 2>"$W/vm.log" &
  echo \$! >"$W/vm.pid"
}
vmm_stop-source() { kill "\$(cat "$W/src-vm.pid")"; }
PRELUDE

python3 - "$GUIDE" "$MODE" >>"$W/guide.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
# Post-copy: "# orchestrator:" blocks run, "# firecracker:" blocks are stand-ins. Pre-copy:
# "# precopy:" blocks run, "# vmm:" blocks are stand-ins.
run_kind, vmm_kind = ("precopy", "vmm") if sys.argv[2] == "precopy" else ("orchestrator", "firecracker")
required = ["watch", "restore"] + (["live-handover", "wait-ready-to-pause", "pause", "paused"] if sys.argv[2] == "precopy" else [])
steps = []
for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
    first, _, body = block.partition("\n")
    m = re.match(rf"# ({run_kind}|{vmm_kind}): (\S+)$", first)
    if not m:
        continue
    kind, name = m.groups()
    steps.append(name)
    print(f'echo "guide: {kind}: {name}" >&2')
    print(body if kind == run_kind else f"{vmm_kind}_{name}")
missing = [s for s in required if s not in steps]
if missing:
    sys.exit(f"guide test: expected the steps {missing}, found {steps}")
PY

echo "guide test: running $(grep -c '^echo "guide:' "$W/guide.sh") steps of $GUIDE" >&2
bash "$W/guide.sh"

# The VM on B must have found every byte of its memory as it was on A.
vm_pid=$(cat "$W/vm.pid")
for _ in $(seq 1 600); do kill -0 "$vm_pid" 2>/dev/null || break; sleep 0.1; done
wait "$vm_pid" 2>/dev/null || true
cat "$W/vm.json"
jq -e '.verified == true and .mismatches == 0' "$W/vm.json" >/dev/null \
  || { echo "guide test: the test VM did not verify its memory" >&2; exit 1; }
if [[ $MODE == precopy ]]; then
  # The source's writes were live (the stamps were checked), the rounds ran and switched.
  grep -q '"paused":true' "$W/src-vm.log" || { echo "guide test: no paused source VM" >&2; exit 1; }
  curl -sf --unix-socket "$W/a-control.sock" "http://lazymig/v1/migrations/vm-42-to-b" \
    | jq -e '.precopy.state == "switched" and .precopy.round >= 1' >/dev/null \
    || { echo "guide test: agent A did not run pre-copy rounds and switch" >&2; exit 1; }
fi
echo "guide test: passed"
