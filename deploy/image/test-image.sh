#!/usr/bin/env bash
# Checks the agent image without a container engine (none runs here, and base images
# cannot be pulled):
#  1. the HEALTHCHECK runs `lazymig health`; where this build's CLI has the subcommand, it
#     exits 0/1/3 against a healthy, unhealthy and absent stand-in control API;
#  2. deploy/build-image.sh stages the runtime tree, every `COPY` destination of the
#     Dockerfile's runtime stage holds the file it names, and (as root) the staged agent
#     runs inside the tree by chroot: its libraries resolve there;
#     the staged binaries are stripped, their debug symbols kept apart with a debuglink;
#     the build stage builds only the shipped binaries (LAZYMIG_BUILD_TESTS=OFF configures
#     without GoogleTest), and the runtime stage carries the OCI labels;
#  3. every Debian package the binaries' libraries come from is installed by the
#     Dockerfile's runtime stage (listed, or a dependency of a listed package).
#
#   deploy/image/test-image.sh BIN_DIR     (BIN_DIR holds lazymig-agent and lazymig)
#
# Needs (Debian 12): python3, binutils, cmake, ninja, apt (apt-cache), dpkg. Installs nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
bin_dir=${1:?usage: test-image.sh BIN_DIR}
passed=0
failed=0

for tool in python3 objcopy readelf cmake ninja apt-cache dpkg-query ldd; do
  command -v "$tool" >/dev/null || { echo "test-image: required tool '$tool' is missing" >&2; exit 1; }
done

echo "tools: $(objcopy --version | head -1); no container engine: the image's stages are checked by their commands"
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

# ---- 1. the health probe: `lazymig health` (issue 17's subcommand) ----
cat >"$work/api.py" <<'EOF_PY'
# Answers like the agent's control API: /healthz 200 (or 503 with UNHEALTHY set).
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and not os.environ.get("UNHEALTHY"):
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
Unix(sys.argv[1], Handler).serve_forever()
EOF_PY
wait_for() {  # wait_for SOCKET: up to 10 s for a stand-in server to be listening
  local deadline=$((SECONDS + 10))
  until [[ -S $1 ]]; do
    ((SECONDS < deadline)) || { echo "test-image: stand-in server did not start ($1)" >&2; exit 1; }
    sleep 0.05
  done
}
exits() {  # exits CODE COMMAND...: COMMAND exits with CODE
  local want=$1; shift
  local rc=0; "$@" || rc=$?
  [[ $rc -eq $want ]] || { echo "exit $rc, want $want"; return 1; }
}
cli=$bin_dir/lazymig
if "$cli" health --help >/dev/null 2>&1; then
  python3 "$work/api.py" "$work/healthy.sock" & server_pids+=($!)
  UNHEALTHY=1 python3 "$work/api.py" "$work/unhealthy.sock" & server_pids+=($!)
  wait_for "$work/healthy.sock"; wait_for "$work/unhealthy.sock"
  check "lazymig health: healthy agent exits 0" exits 0 "$cli" health --control "unix:$work/healthy.sock" --timeout-ms 4000
  check "lazymig health: unhealthy agent exits 1" exits 1 "$cli" health --control "unix:$work/unhealthy.sock" --timeout-ms 4000
  check "lazymig health: no agent exits 3" exits 3 "$cli" health --control "unix:$work/absent.sock" --timeout-ms 4000
  check "lazymig health: bad usage exits 2" exits 2 "$cli" health --timeout-ms not-a-number
else
  # Written by a colleague (issue 17) at the same time: the probe's wiring is checked below
  # and in the chart test; its behaviour here once the subcommand is in the build.
  echo "skip lazymig health behaviour: this build's lazymig has no 'health' subcommand yet"
fi
health_cmd='CMD ["lazymig", "health", "--control", "unix:/run/lazymig/control.sock", "--timeout-ms", "4000"]'
check "HEALTHCHECK runs lazymig health on the control socket" grep -qF "$health_cmd" "$deploy/Dockerfile"
check "no Perl probe left in the image" bash -c '! grep -q "lazymig-probe\|perl" "$0"' "$deploy/Dockerfile"

# ---- 2. the staged tree matches the Dockerfile ----
root=$work/rootfs
check "build-image.sh stages the runtime tree" "$deploy/build-image.sh" --out "$root" --bin-dir "$bin_dir"

# The runtime stage's COPY lines: "COPY [--from=build] SRC DEST".
runtime_stage() { awk '/^FROM /{n++} {line[n]=line[n] $0 "\n"} END {printf "%s", line[n]}' "$deploy/Dockerfile"; }
runtime_copies=$(runtime_stage | grep '^COPY ')
"$here/strip-binaries.sh" "$bin_dir" "$work/stripped" lazymig-agent lazymig | tee "$work/sizes"
[[ -n $runtime_copies ]] || { echo "test-image: no COPY lines in the Dockerfile's runtime stage" >&2; exit 1; }
while read -r _ a b c; do
  if [[ $a == --from=build ]]; then src=$work/stripped${b#/out}; dest=$c
  else src=$deploy/../$a; dest=$b; fi
  check "Dockerfile COPY -> $dest holds $(basename "$src")" cmp "$src" "$root$dest"
done <<<"$runtime_copies"

entry_config=$(sed -n 's/^CMD \["--config", "\(.*\)"\]$/\1/p' "$deploy/Dockerfile")
check "CMD's config ($entry_config) is staged" test -f "$root$entry_config"
for b in lazymig-agent lazymig; do
  staged=$root/usr/local/bin/$b
  check "$b in the image is stripped (no .debug_info, no .symtab)" bash -c \
    '! readelf -S "$0" | grep -qE "\.debug_info|\.symtab"' "$staged"
  check "$b links its debug file by .gnu_debuglink" bash -c \
    'readelf -p .gnu_debuglink "$0" | grep -q "$1.debug"' "$staged" "$b"
  check "$b.debug holds the debug symbols" bash -c 'readelf -S "$0" | grep -q "\.debug_info"' "$root/.debug/$b.debug"
  check "$b.debug is left out of the runtime tree" test ! -e "$root/usr/local/bin/$b.debug"
  if command -v gdb >/dev/null; then
    # The debuglink's CRC must match: gdb then finds main's source line in the debug file
    # beside the stripped binary.
    mkdir -p "$work/gdb-$b" && cp "$staged" "$root/.debug/$b.debug" "$work/gdb-$b/"
    check "gdb finds $b's symbols through the debuglink" bash -c \
      'gdb -batch -ex "info line main" "$0" 2>&1 | grep -q "^Line [0-9]* of .*main.cc"' "$work/gdb-$b/$b"
  fi
done
for label in title description version revision created source; do
  check "OCI label org.opencontainers.image.$label" bash -c 'runtime_stage() { awk '"'"'/^FROM /{n++} {line[n]=line[n] $0 "\n"} END {printf "%s", line[n]}'"'"' "$0"; }; runtime_stage | grep -q "org.opencontainers.image.$1="' "$deploy/Dockerfile" "$label"
done
check "build stage: no tests or benchmarks, only the shipped targets" bash -c \
  'grep -q "cmake --preset release -DLAZYMIG_BUILD_TESTS=OFF" "$0" && grep -q -- "--target lazymig-agent lazymig" "$0" && ! grep -q libgtest "$0"' \
  "$deploy/Dockerfile"
# What the build stage configures: GoogleTest absent, no test or benchmark target.
check "LAZYMIG_BUILD_TESTS=OFF configures with no test or benchmark target" bash -c '
  cmake -S "$0" -B "$1" -G Ninja -DLAZYMIG_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
  targets=$(ninja -C "$1" -t targets all | cut -d: -f1) &&
  grep -qx "bin/lazymig-agent" <<<"$targets" && grep -qx "bin/lazymig" <<<"$targets" &&
  ! grep -E "_test$|^bin/lazymig-floors|^bin/lazymig-soak" <<<"$targets"' "$deploy/.." "$work/cfg"
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
listed=$(runtime_stage |
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
