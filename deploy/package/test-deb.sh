#!/usr/bin/env bash
# Builds the Debian package from a configured and built tree (cpack -G DEB), checks its
# control data and contents (dpkg-deb -I / -c), runs the installed binaries from an unpacked
# copy (dpkg-deb -x), and installs it for real into a throwaway dpkg root (dpkg --root),
# where `lazymig demo` starts the installed agents and migrates a test VM between them.
#
#   deploy/package/test-deb.sh BUILD_DIR
#
# Needs dpkg-dev (dpkg-shlibdeps), binutils (scripts/install-deps.sh).
set -euo pipefail
build=$(cd "${1:?usage: test-deb.sh BUILD_DIR}" && pwd)
passed=0
failed=0
for tool in cmake cpack dpkg-deb dpkg-shlibdeps dpkg readelf; do
  command -v "$tool" >/dev/null || { echo "test-deb: required tool '$tool' is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
echo "tools: $(cpack --version | head -1), $(dpkg-deb --version | head -1 | sed 's/ package management program//'), dpkg-shlibdeps $(dpkg-query -W -f='${Version}' dpkg-dev)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
check() {  # check NAME COMMAND...
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then passed=$((passed + 1)); echo "ok   $name"
  else failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out"; fi
}

echo "== cmake --install --prefix (no package)"
prefix=$work/prefix
check "cmake --install --prefix installs" cmake --install "$build" --prefix "$prefix"
for path in bin/lazymig-agent bin/lazymig bin/lazymig-testvm etc/lazymig/lazymig.yaml \
  lib/systemd/system/lazymig-agent.service share/doc/lazymig/operations.md; do
  check "cmake --install: <prefix>/$path" test -e "$prefix/$path"
done
check "cmake --install: the unit starts <prefix>/bin/lazymig-agent with <prefix>/etc/lazymig/lazymig.yaml" \
  grep -qF "ExecStart=$prefix/bin/lazymig-agent --config $prefix/etc/lazymig/lazymig.yaml" \
  "$prefix/lib/systemd/system/lazymig-agent.service"

echo "== cpack -G DEB"
(cd "$build" && cpack -G DEB -B "$work/pkg" >"$work/cpack.log" 2>&1) || { cat "$work/cpack.log"; exit 1; }
deb=$(ls "$work"/pkg/lazymig_*.deb)
echo "built $(basename "$deb"): $(du -h "$deb" | cut -f1)"
dpkg-deb -I "$deb" >"$work/info"
dpkg-deb -c "$deb" >"$work/contents"
sed 's/^/  /' "$work/info"

echo "== control"
# Package names only, one a line ("a (>= 1) | b" -> a, b).
depends=$(dpkg-deb -f "$deb" Depends | tr ',|' '\n\n' | sed 's/([^)]*)//; s/ //g' | sort -u)
for pkg in libc6 libstdc++6 libssl3 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
  libyaml-cpp0.7 libevent-core-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 systemd; do
  check "Depends names $pkg (Debian 12)" grep -qxF "$pkg" <<<"$depends"
done
# And the package of every library a shipped binary links directly (DT_NEEDED; RocksDB is
# linked statically: its compression libraries show up instead).
for b in lazymig-agent lazymig lazymig-testvm; do
  needed=$(readelf -d "$build/bin/$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  for lib in $(ldd "$build/bin/$b" | awk -v needed="$needed" 'BEGIN {split(needed, n, "\n"); for (i in n) want[n[i]] = 1}
                                                        /=>/ && ($1 in want) {print $3}'); do
    owner=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$(readlink -f "$lib")" 2>/dev/null || true)
    owner=${owner%%:*}
    [[ -n $owner ]] || continue
    check "Depends covers $b's $(basename "$lib") ($owner)" grep -qxF "$owner" <<<"$depends"
  done
done
check "Package: lazymig, Architecture: $(dpkg --print-architecture)" bash -c \
  '[[ $(dpkg-deb -f "$0" Package) == lazymig && $(dpkg-deb -f "$0" Architecture) == $(dpkg --print-architecture) ]]' "$deb"
check "/etc/lazymig/lazymig.yaml is a conffile" bash -c 'dpkg-deb --ctrl-tarfile "$0" | tar -xO ./conffiles | grep -qx /etc/lazymig/lazymig.yaml' "$deb"

echo "== contents"
for path in ./usr/bin/lazymig-agent ./usr/bin/lazymig ./usr/bin/lazymig-testvm \
  ./usr/lib/systemd/system/lazymig-agent.service ./etc/lazymig/lazymig.yaml \
  ./usr/share/doc/lazymig/operations.md ./usr/share/doc/lazymig/examples/lazymig.yaml \
  ./usr/share/doc/lazymig/prometheus/lazymig-rules.yaml ./usr/share/doc/lazymig/grafana/lazymig-dashboard.json; do
  check "contains $path" grep -q " $path\$" "$work/contents"
done
check "nothing under /usr/local or the build tree" bash -c '! grep -E " \./(usr/local|.*build)/" "$0"' "$work/contents"

echo "== unpacked copy"
root=$work/root
dpkg-deb -x "$deb" "$root"
for b in lazymig-agent lazymig lazymig-testvm; do
  check "$b is stripped" bash -c '! readelf -S "$0" | grep -q "\.debug_info"' "$root/usr/bin/$b"
  echo "  $b: $(stat -c %s "$root/usr/bin/$b") bytes in the package, $(stat -c %s "$build/bin/$b") built"
done
check "lazymig-agent --version" "$root/usr/bin/lazymig-agent" --version
check "lazymig --help" bash -c '"$0" --help 2>&1 | grep -qi usage' "$root/usr/bin/lazymig"
# The installed example config passes the agent's own parser once its TLS files exist.
mkdir -p "$work/tls" && touch "$work/tls/"{ca.crt,tls.crt,tls.key}
sed "s#/etc/lazymig/tls/#$work/tls/#" "$root/etc/lazymig/lazymig.yaml" >"$work/lazymig.yaml"
check "lazymig-agent --check-config on the installed example config" \
  "$root/usr/bin/lazymig-agent" --check-config "$work/lazymig.yaml"
check "the unit starts /usr/bin/lazymig-agent" grep -q "^ExecStart=/usr/bin/lazymig-agent --config /etc/lazymig/lazymig.yaml" \
  "$root/usr/lib/systemd/system/lazymig-agent.service"
if command -v systemd-analyze >/dev/null; then
  # verify needs ExecStart's binary at its path: check the unit as installed, binary swapped.
  sed "s#/usr/bin/lazymig-agent#$root/usr/bin/lazymig-agent#g" \
    "$root/usr/lib/systemd/system/lazymig-agent.service" >"$work/lazymig-agent.service"
  check "systemd-analyze verify on the installed unit" bash -c \
    'out=$(systemd-analyze verify --man=no "$0" 2>&1) && [[ -z $out ]] || { echo "$out"; false; }' "$work/lazymig-agent.service"
fi

echo "== dpkg --root: a real install into a throwaway root"
# An empty dpkg database; dependencies are the host's (--force-depends), maintainer scripts
# run outside the root (there is no shell in it).
droot=$work/dpkg-root
mkdir -p "$droot/var/lib/dpkg/info" "$droot/var/lib/dpkg/updates"
touch "$droot/var/lib/dpkg/status"
check "dpkg --root -i installs the package" dpkg --root="$droot" --force-depends --force-script-chrootless \
  --log=/dev/null -i "$deb"
check "dpkg -s: lazymig is installed" bash -c 'dpkg --root="$0" -s lazymig | grep -q "^Status: install ok installed"' "$droot"
check "installed lazymig-agent runs" "$droot/usr/bin/lazymig-agent" --version
# The installed binaries at work: `lazymig demo` starts two installed agents (mutual TLS,
# RocksDB state) and migrates an installed lazymig-testvm between them, byte-verified.
check "installed lazymig demo: two installed agents migrate a test VM, every byte verified" bash -c \
  'timeout 120 "$0/usr/bin/lazymig" demo --size 16MiB >"$1" 2>&1 && grep -q "verified *yes (0 mismatches)" "$1"' \
  "$droot" "$work/demo.txt"
check "dpkg --root -r removes it and keeps the conffile" bash -c \
  'dpkg --root="$0" --force-script-chrootless --log=/dev/null -r lazymig && [[ ! -e $0/usr/bin/lazymig-agent && -f $0/etc/lazymig/lazymig.yaml ]]' "$droot"

echo "$passed passed, $failed failed"
((failed == 0))
