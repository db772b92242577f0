#!/usr/bin/env bash
# The attack behind issue 18's failure 8, as a repeatable soak: MIGRATIONS migrations at once
# between two real agents on loopback, the source agent SIGKILLed as the first of them
# finishes and started again. A round passes when every destination test VM verified every
# byte, every destination migration is `completed`, every source migration is `completed`
# within 30 s of the restart, and still `completed` after one more SIGKILL and restart.
# (Before the ending handshake got its acknowledgement, 3 of 8 rounds left 1-3 sources
# `serving` for good.) Prints one line per round and a JSON summary; exits 1 if a round failed.
#
# usage: bench/ending_soak.sh [--rounds 8] [--migrations 8] [--size 32MiB] [--bindir build/bin]
set -euo pipefail
ROUNDS=8 N=8 SIZE=32MiB BIN=build/bin
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --migrations) N=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --bindir) BIN=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--migrations N] [--size SIZE] [--bindir DIR]" >&2; exit 2 ;;
  esac
done
BIN=$(cd "$BIN" && pwd)
for tool in curl jq python3; do
  command -v "$tool" >/dev/null || { echo "ending soak: $tool is missing" >&2; exit 2; }
done

W=$(mktemp -d /tmp/lazymig-ending-soak.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$W"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
api() {  # name method path [body]
  local sock=$R/$1-control.sock
  if [[ $# -ge 4 ]]; then
    curl -sS --fail-with-body --unix-socket "$sock" -X "$2" "http://lazymig$3" \
      -H 'Content-Type: application/json' -d "$4"
  else
    curl -sS --unix-socket "$sock" -X "$2" "http://lazymig$3"
  fi
}
start_agent() {  # name
  "$BIN/lazymig-agent" --config "$R/$1.yaml" >>"$R/$1.log" 2>&1 &
  AGENT_PID[$1]=$!
  PIDS+=($!)
  for _ in $(seq 1 300); do
    curl -sf --unix-socket "$R/$1-control.sock" http://lazymig/readyz >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "ending soak: agent $1 did not become ready (see $R/$1.log)" >&2
  return 1
}
states() {  # name -> "completed:8" style counts
  api "$1" GET /v1/migrations | jq -r '[.migrations[]?.state] | group_by(.) | map("\(.[0]):\(length)") | join(" ")'
}
count_state() {  # name state
  api "$1" GET /v1/migrations | jq --arg s "$2" '[.migrations[]? | select(.state == $s)] | length'
}

for node in a b; do
  "$BIN/lazymig" certs --dir "$W/pki" --node "$node" --san "spiffe://lazymig/node/$node" >/dev/null
done

declare -A AGENT_PID
failed_rounds=0 stuck_total=0
for round in $(seq 1 "$ROUNDS"); do
  R=$W/round$round
  mkdir -p "$R"
  port=$(free_port)
  for node in a b; do
    addr="127.0.0.1:0"
    [[ $node == a ]] && addr="127.0.0.1:$port"  # fixed: the destinations dial it again after the restart
    cat >"$R/$node.yaml" <<YAML
node_name: $node
listen:
  agent: "$addr"
  control: "unix:$R/$node-control.sock"
  metrics: "off"
tls:
  ca_file: $W/pki/lazymig-ca.crt
  cert_file: $W/pki/$node.crt
  key_file: $W/pki/$node.key
state_dir: $R/$node-state
handshake_dir: $R/$node-vmm
migration:
  bulk_rate_limit_mib_s: 8
  stall_timeout_ms: 600
  reconnect:
    initial_backoff_ms: 20
    max_backoff_ms: 200
    give_up_after_s: 60
YAML
  done
  start_agent a
  start_agent b
  vm_pids=()
  for m in $(seq 1 "$N"); do
    "$BIN/lazymig-testvm" source --memory anon --size "$SIZE" --seed "$m" \
      --snapshot-file "$R/m$m.mem" >/dev/null 2>>"$R/source-vm.log" &
    vm_pids+=($!)
  done
  for pid in "${vm_pids[@]}"; do wait "$pid"; done
  vm_pids=()
  for m in $(seq 1 "$N"); do
    token=$(openssl rand -hex 32)
    api a POST /v1/migrations "{\"id\": \"m$m\", \"role\": \"source\", \"token\": \"$token\",
      \"peer_identity\": \"spiffe://lazymig/node/b\", \"memory\": {\"snapshot_file\": \"$R/m$m.mem\"}}" >/dev/null
    hs=$(api b POST /v1/migrations "{\"id\": \"m$m\", \"role\": \"destination\", \"token\": \"$token\",
      \"peer_identity\": \"spiffe://lazymig/node/a\", \"source_address\": \"127.0.0.1:$port\"}" \
      | jq -r .handshake_socket)
    "$BIN/lazymig-testvm" dest --memory anon --size "$SIZE" --seed "$m" --handshake-socket "$hs" \
      --vcpus 2 --pattern random --accesses 3000 --control "unix:$R/b-control.sock" \
      --migration "m$m" --timeout-s 120 >"$R/vm$m.json" 2>>"$R/vm.log" &
    vm_pids+=($!)
    PIDS+=($!)
  done
  # "As they finish": once the furthest destination has at most THRESHOLD pages to go (0 to
  # 300, varied by round), so that kills land before, inside and after the ending handshake.
  threshold=$(( (round * 137) % 301 ))
  for _ in $(seq 1 6000); do
    list=$(api b GET /v1/migrations)
    left=$(jq '[.migrations[]? | .progress.pages_remaining] | min // 1e9' <<<"$list")
    [[ $left -le $threshold ]] && break
    sleep 0.005
  done
  kill -9 "${AGENT_PID[a]}"
  wait "${AGENT_PID[a]}" 2>/dev/null || true
  at_kill=$(jq -r '[.migrations[]?.state] | group_by(.) | map("\(.[0]):\(length)") | join(" ")' <<<"$list")
  start_agent a
  restarted=$(date +%s)
  for pid in "${vm_pids[@]}"; do wait "$pid" || true; done
  verified=$(cat "$R"/vm*.json | jq -s '[.[] | select(.verified == true and .mismatches == 0)] | length')
  while [[ $(count_state a completed) -lt $N && $(( $(date +%s) - restarted )) -lt 30 ]]; do sleep 0.1; done
  src_after=$(states a) dst_after=$(states b)
  src_done=$(count_state a completed) dst_done=$(count_state b completed)
  # ...and for good: one more SIGKILL and restart of the source.
  kill -9 "${AGENT_PID[a]}"
  wait "${AGENT_PID[a]}" 2>/dev/null || true
  start_agent a
  src_later=$(count_state a completed)
  stuck=$(( N - src_later ))
  stuck_total=$(( stuck_total + stuck ))
  ok=pass
  if [[ $verified -ne $N || $src_done -ne $N || $dst_done -ne $N || $src_later -ne $N ]]; then
    ok=FAIL
    failed_rounds=$(( failed_rounds + 1 ))
    KEEP=1
  fi
  echo "round $round: $ok  killed at <= $threshold pages to go; destinations at the kill: [$at_kill]  after: source [$src_after]" \
       "destination [$dst_after]  verified $verified/$N  sources completed after a later restart $src_later/$N" >&2
  kill "${AGENT_PID[a]}" "${AGENT_PID[b]}" 2>/dev/null || true
  wait "${AGENT_PID[a]}" "${AGENT_PID[b]}" 2>/dev/null || true
  [[ $ok == pass ]] && rm -rf "$R"
done
[[ -n ${KEEP:-} ]] && echo "ending soak: failed rounds kept in $W" >&2
echo "{\"rounds\": $ROUNDS, \"migrations_per_round\": $N, \"failed_rounds\": $failed_rounds, \"sources_left_serving\": $stuck_total}"
[[ $failed_rounds -eq 0 ]]
