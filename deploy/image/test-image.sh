#!/usr/bin/env bash
# Checks the agent image without a container engine:
#  1. lazymig-probe (the image's health probe) against a stand-in HTTP server on a UNIX
#     socket and on loopback TCP: 200 passes; 503, 401, no listener fail; the token is sent;
#  2. deploy/build-image.sh stages the runtime tree, every `COPY` destination of the
#     Dockerfile's runtime stage holds the file it names, and (as root) the staged agent
#     runs inside the tree by chroot: its libraries resolve there;
#  3. every Debian package the binaries' libraries come from is installed by the
#     Dockerfile's runtime stage (listed, or a dependency of a listed package).
#
#   deploy/image/test-image.sh BIN_DIR     (BIN_DIR holds lazymig-agent and lazymig)
#
# Needs (Debian 12): python3, perl-base, apt (apt-cache), dpkg, coreutils. Installs nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
bin_dir=${1:?usage: test-image.sh BIN_DIR}
passed=0
failed=0

for tool in python3 perl apt-cache dpkg-query ldd; do
  command -v "$tool" >/dev/null || { echo "test-image: required tool '$tool' is missing" >&2; exit 1; }
done

work=$(mktemp -d)
server_pids=()
cleanup() {
  for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

check() {  # check NAME COMMAND...: runs COMMAND, counts the result
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out"
  fi
}
fails() { ! "$@"; }

# ---- 1. the probe ----
cat >"$work/api.py" <<'EOF'
# Answers like the agent's control API: /healthz 200, /readyz 503, 401 without the token.
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        token = os.environ.get("TOKEN", "")
        if token and self.headers.get("Authorization") != "Bearer " + token:
            code, body = 401, b'{"error":{"code":"unauthorized"}}\n'
        elif self.path == "/healthz":
            code, body = 200, b'{"status":"ok"}\n'
        else:
            code, body = 503, b'{"error":{"code":"not_ready"}}\n'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Unix(socketserver.UnixStreamServer):
    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("unix", 0)
where = sys.argv[1]
if where.startswith("unix:"):
    server = Unix(where[5:], Handler)
else:
    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    # Written whole by rename, after listen(): a reader never sees a partial port.
    with open(where + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(where + ".tmp", where)
server.serve_forever()
EOF
wait_for() {  # wait_for FILE: up to 10 s for a stand-in server to be listening
  local deadline=$((SECONDS + 10))
  until [[ -e $1 ]]; do
    ((SECONDS < deadline)) || { echo "test-image: stand-in server did not start ($1)" >&2; exit 1; }
    sleep 0.05
  done
}
probe=$here/lazymig-probe
python3 "$work/api.py" "unix:$work/control.sock" & server_pids+=($!)
TOKEN=s3cret python3 "$work/api.py" "unix:$work/token.sock" & server_pids+=($!)
python3 "$work/api.py" "$work/tcp.port" & server_pids+=($!)
wait_for "$work/control.sock"; wait_for "$work/token.sock"; wait_for "$work/tcp.port"
port=$(cat "$work/tcp.port")
printf 's3cret\n' >"$work/token"

check "probe: /healthz 200 over a UNIX socket passes" "$probe" "unix:$work/control.sock" /healthz
check "probe: /readyz 503 fails" fails "$probe" "unix:$work/control.sock" /readyz
check "probe: no listener fails" fails "$probe" "unix:$work/absent.sock" /healthz
check "probe: 401 without the token fails" fails "$probe" "unix:$work/token.sock" /healthz
check "probe: token file is sent" "$probe" --token-file="$work/token" "unix:$work/token.sock" /healthz
check "probe: loopback TCP endpoint" "$probe" "127.0.0.1:$port" /healthz
check "probe: http:// endpoint" "$probe" "http://127.0.0.1:$port" /healthz
check "probe: bad usage exits 2" bash -c '"$0" onlyone; [[ $? -eq 2 ]]' "$probe"

# ---- 2. the staged tree matches the Dockerfile ----
root=$work/rootfs
check "build-image.sh stages the runtime tree" "$deploy/build-image.sh" --out "$root" --bin-dir "$bin_dir"

# The runtime stage's COPY lines: "COPY [--from=build] SRC DEST".
runtime_copies=$(awk '/^FROM /{stage++} stage==2 && /^COPY /' "$deploy/Dockerfile")
[[ -n $runtime_copies ]] || { echo "test-image: no COPY lines in the Dockerfile's runtime stage" >&2; exit 1; }
while read -r _ a b c; do
  if [[ $a == --from=build ]]; then src=$bin_dir/$(basename "$b"); dest=$c
  else src=$deploy/../$a; dest=$b; fi
  check "Dockerfile COPY -> $dest holds $(basename "$src")" cmp "$src" "$root$dest"
done <<<"$runtime_copies"

entry_config=$(sed -n 's/^CMD \["--config", "\(.*\)"\]$/\1/p' "$deploy/Dockerfile")
check "CMD's config ($entry_config) is staged" test -f "$root$entry_config"
check "HEALTHCHECK uses the staged probe" bash -c 'grep -A1 "^HEALTHCHECK" "$0" | grep -q "CMD \\[\"lazymig-probe\""' "$deploy/Dockerfile"
if [[ $(id -u) -eq 0 ]]; then
  check "staged agent runs in the tree (libraries resolve)" chroot "$root" /usr/local/bin/lazymig-agent --version
  # The default config must pass the agent's own parser; it only checks the TLS files are
  # readable, so empty stand-ins do.
  touch "$root/etc/lazymig/tls/"{ca.crt,tls.crt,tls.key}
  check "image's default config passes --check-config" \
    chroot "$root" /usr/local/bin/lazymig-agent --check-config "$entry_config"
else
  echo "skip chroot run of the staged agent: needs root"
fi

# ---- 3. runtime packages ----
listed=$(awk '/^FROM /{stage++} stage==2' "$deploy/Dockerfile" |
  sed -n '/apt-get install/,/rm -rf/p' | tr ' \\' '\n\n' | grep -E '^lib[a-z0-9.+-]+$' | sort -u)
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $listed 2>/dev/null | grep -E '^[a-z0-9]' | sort -u)
# In every debian:12-slim already (Essential or required by apt).
base="libc6 libgcc-s1 libstdc++6 zlib1g libzstd1 liblzma5 libbz2-1.0 libgcrypt20 libsystemd0"
while read -r pkg; do
  [[ -n $pkg ]] || continue
  check "runtime package $pkg is installed by the Dockerfile" bash -c \
    'grep -qx "$0" <<<"$1" || grep -qx "$0" <<<"$2" || grep -qw "$0" <<<"$3"' "$pkg" "$listed" "$closure" "$base"
done <"$root/.runtime-packages"

echo "$passed passed, $failed failed"
((failed == 0))
