#!/usr/bin/env bash
# The command lines as a person meets them, against a real agent on a UNIX control socket
# with a bearer token: --help on every command, --version from the build, unknown flags
# refused wherever they are, global options after the command, -o json|table, the exit codes
# (0 done, 1 the agent said no, 2 usage, 3 unreachable) and errors that say what to do, and
# `lazymig health` (the container's probe, issue 16) with each of its answers.
#
# usage: cli_test.sh BINDIR
set -uo pipefail
BIN=$(cd "$1" && pwd)
W=$(mktemp -d /tmp/lazymig-cli.XXXXXX)
AGENT= FAKE=
cleanup() {
  [[ -n $AGENT ]] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
  [[ -n $FAKE ]] && kill "$FAKE" 2>/dev/null && wait "$FAKE" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
fails=0
# expect CODE DESCRIPTION COMMAND...: the command exits CODE; its output is kept in $W/out.
expect() {
  local code=$1 what=$2; shift 2
  "$@" >"$W/out" 2>&1
  local rc=$?
  if [[ $rc -eq $code ]]; then echo "ok    $what (exit $rc)"; else echo "FAIL  $what: exit $rc, expected $code"; sed 's/^/      /' "$W/out"; fails=$((fails + 1)); fi
}
# says TEXT DESCRIPTION: the last command's output contains TEXT.
says() {
  if grep -qF -- "$1" "$W/out"; then echo "ok    $2"; else echo "FAIL  $2: no '$1' in"; sed 's/^/      /' "$W/out"; fails=$((fails + 1)); fi
}

"$BIN/lazymig" certs --dir "$W/pki" --node a --san spiffe://lazymig/node/a >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
cat >"$W/agent.yaml" <<YAML
node_name: a
listen:
  agent: "127.0.0.1:0"
  control: "unix:$W/control.sock"
  metrics: "off"
tls:
  ca_file: $W/pki/lazymig-ca.crt
  cert_file: $W/pki/a.crt
  key_file: $W/pki/a.key
control_token_file: $W/token
state_dir: $W/state
handshake_dir: $W/vmm
log_format: json
YAML
"$BIN/lazymig-agent" --config "$W/agent.yaml" >"$W/agent.log" 2>&1 &
AGENT=$!
export LAZYMIG_CONTROL=unix:$W/control.sock
for _ in $(seq 1 200); do
  "$BIN/lazymig" health --timeout-ms 100 >/dev/null 2>&1 && break
  sleep 0.05
done
T=(--token-file "$W/token")

# --help and --version
expect 0 "lazymig --help" "$BIN/lazymig" --help
for cmd in migrate status list cancel agent health token certs demo; do
  expect 0 "lazymig $cmd --help" "$BIN/lazymig" "$cmd" --help
  says "Usage: lazymig $cmd" "lazymig $cmd --help shows its own usage"
done
expect 0 "lazymig-agent --help" "$BIN/lazymig-agent" --help
version=$("$BIN/lazymig" --version)
[[ $version =~ ^lazymig\ [0-9]+\.[0-9]+\.[0-9]+\ \(git\ [^\)]+\)$ ]] && echo "ok    lazymig --version: $version" || { echo "FAIL  lazymig --version: '$version'"; fails=$((fails + 1)); }
expect 0 "lazymig-agent --version" "$BIN/lazymig-agent" --version
says "${version#lazymig }" "lazymig-agent reports the same build"
expect 0 "lazymig agent -o json" "$BIN/lazymig" "${T[@]}" agent -o json
agent_version=$(jq -r '.version + " (git " + .revision + ")"' "$W/out")
[[ "lazymig $agent_version" == "$version" ]] && echo "ok    /v1/agent reports the build: $agent_version" || { echo "FAIL  /v1/agent version '$agent_version' vs '$version'"; fails=$((fails + 1)); }

# unknown flags and arguments, wherever they are
expect 2 "lazymig list --bogus" "$BIN/lazymig" "${T[@]}" list --bogus
says "--bogus" "the error names the flag"
expect 2 "lazymig --bogus list" "$BIN/lazymig" --bogus list
expect 2 "lazymig list extra-argument" "$BIN/lazymig" "${T[@]}" list extra-argument
expect 2 "lazymig status (no id)" "$BIN/lazymig" "${T[@]}" status
expect 2 "lazymig no-such-command" "$BIN/lazymig" no-such-command
expect 2 "lazymig (no command)" "$BIN/lazymig"
expect 2 "lazymig demo --vcpus 0" "$BIN/lazymig" demo --vcpus 0
expect 2 "lazymig demo --memory floppy" "$BIN/lazymig" demo --memory floppy
expect 2 "lazymig demo --size 12parsecs" "$BIN/lazymig" demo --size 12parsecs
says "--size" "the demo's size error names the flag"
expect 2 "lazymig demo --precopy sometimes" "$BIN/lazymig" demo --precopy sometimes
says "--precopy" "the demo's pre-copy error names the flag"
expect 2 "lazymig demo --precopy 'rounds 0'" "$BIN/lazymig" demo --precopy "rounds 0"
says "--precopy" "a pre-copy round count out of range names the flag"
expect 2 "lazymig demo --precopy auto --memory guest_memfd" "$BIN/lazymig" demo --precopy auto --memory guest_memfd
says "--memory anon, memfd, memfd-minor" "the demo says which memory kinds run pre-copy"
expect 2 "lazymig -o yaml list" "$BIN/lazymig" "${T[@]}" -o yaml list
expect 2 "lazymig-agent --bogus" "$BIN/lazymig-agent" --bogus
expect 2 "lazymig-agent (no --config)" "$BIN/lazymig-agent"

# global options after the command, -o json|table
expect 0 "lazymig list --json (after the command)" "$BIN/lazymig" list --json "${T[@]}"
jq -e '.migrations | type == "array"' "$W/out" >/dev/null && echo "ok    list --json prints JSON" || { echo "FAIL  list --json is not JSON"; fails=$((fails + 1)); }
expect 0 "lazymig list -o json" "$BIN/lazymig" list -o json "${T[@]}"
jq -e '.migrations' "$W/out" >/dev/null && echo "ok    list -o json prints JSON" || { echo "FAIL  list -o json"; fails=$((fails + 1)); }
expect 0 "lazymig -o table list" "$BIN/lazymig" -o table "${T[@]}" list
says "ID" "list -o table prints the table"
expect 0 "lazymig list --control ENDPOINT (after the command)" "$BIN/lazymig" list --control "unix:$W/control.sock" "${T[@]}"

# errors: the agent said no (1), unreachable (3) with what to do
expect 1 "lazymig list without the token" "$BIN/lazymig" list
says "unauthorized" "the 401 is shown"
expect 1 "lazymig status of an unknown migration" "$BIN/lazymig" "${T[@]}" status no-such-migration -o json
says "not_found" "the 404 is shown"
expect 3 "lazymig list with no agent there" "$BIN/lazymig" --control "unix:$W/nobody.sock" list
says "is the agent running?" "the error asks whether the agent runs"
says "looked at unix:$W/nobody.sock (from --control)" "the error says where it looked"
says "set --control or LAZYMIG_CONTROL" "the error says how to point elsewhere"
expect 3 "lazymig list with no agent at LAZYMIG_CONTROL" env LAZYMIG_CONTROL="unix:$W/nobody.sock" "$BIN/lazymig" list
says "(from LAZYMIG_CONTROL)" "the error says the endpoint came from LAZYMIG_CONTROL"
expect 3 "lazymig agent with nothing on a TCP port" "$BIN/lazymig" --control 127.0.0.1:1 agent

# migrate --wait follows the migration to its end: here a destination whose VMM never comes,
# cancelled from another shell; off a terminal the progress comes as plain lines on stderr.
"$BIN/lazymig" "${T[@]}" migrate --wait --interval-ms 50 --id wait-1 --role destination \
  --token "$(cat "$W/token")" --peer-identity spiffe://lazymig/node/b --source-address 127.0.0.1:1 \
  >"$W/wait.out" 2>"$W/wait.err" &
WAITER=$!
for _ in $(seq 1 200); do grep -q "wait-1 waiting_for_vmm" "$W/wait.err" 2>/dev/null && break; sleep 0.05; done
expect 0 "lazymig cancel wait-1" "$BIN/lazymig" "${T[@]}" cancel wait-1
wait $WAITER
rc=$?
[[ $rc -eq 1 ]] && echo "ok    migrate --wait exits 1 when the migration is cancelled" || { echo "FAIL  migrate --wait exit $rc"; fails=$((fails + 1)); }
grep -q "wait-1 waiting_for_vmm: 0/0 pages" "$W/wait.err" && grep -q "wait-1 cancelled" "$W/wait.err" &&
  ! grep -q $'\r' "$W/wait.err" && echo "ok    migrate --wait: plain progress lines on stderr, then the end" ||
  { echo "FAIL  migrate --wait progress:"; sed 's/^/      /' "$W/wait.err"; fails=$((fails + 1)); }
grep -q "^state       cancelled" "$W/wait.out" && echo "ok    migrate --wait prints the final migration on stdout" ||
  { echo "FAIL  migrate --wait stdout:"; sed 's/^/      /' "$W/wait.out"; fails=$((fails + 1)); }

# lazymig health: 0 healthy, 1 answered unhealthy, 2 usage, 3 unreachable; one line each
expect 0 "lazymig health against the agent" "$BIN/lazymig" health
says "healthy" "health says healthy"
[[ $(wc -l <"$W/out") -eq 1 ]] && echo "ok    health prints one line" || { echo "FAIL  health printed $(wc -l <"$W/out") lines"; fails=$((fails + 1)); }
expect 3 "lazymig health with no agent" "$BIN/lazymig" health --control "unix:$W/nobody.sock" --timeout-ms 500
says "unreachable" "health says unreachable"
expect 2 "lazymig health --bogus" "$BIN/lazymig" health --bogus
# A stand-in (fake) for an agent whose /healthz answers 503: a real agent never does while
# its control loop runs, so only a fake can show the probe's answer to one.
python3 - "$W/fake.sock" <<'PY' &
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"error":{"code":"unhealthy","message":"stand-in"}}\n'
        self.send_response(503); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.UnixStreamServer):
    def get_request(self):
        conn, _ = super().get_request(); return conn, ("fake", 0)
S(sys.argv[1], H).serve_forever()
PY
FAKE=$!
for _ in $(seq 1 100); do [[ -S $W/fake.sock ]] && break; sleep 0.05; done
expect 1 "lazymig health against an agent answering 503" "$BIN/lazymig" health --control "unix:$W/fake.sock"
says "unhealthy" "health says unhealthy"

[[ $fails -eq 0 ]] || { echo "$fails check(s) failed"; exit 1; }
echo "command line: every check passed"
