#!/usr/bin/env bash
# Stages the runtime root filesystem of deploy/Dockerfile in a directory, for machines with
# no container engine: the binaries (stripped by deploy/image/strip-binaries.sh, as the
# Dockerfile's build stage does; debug symbols in DIR/.debug/) and the default config at the
# paths the Dockerfile copies them to, plus every shared library `ldd` resolves for the binaries (at
# the same absolute paths), so the tree can be inspected, chroot-ed into or tarred.
#
#   deploy/build-image.sh --out DIR [--bin-dir DIR]
#
# Without --bin-dir it builds first, as the Dockerfile's build stage does
# (cmake --preset release -DLAZYMIG_BUILD_TESTS=OFF, only the two shipped targets).
# Prints the runtime Debian packages the staged libraries come from (one per line) to
# DIR/.runtime-packages, for comparison with the Dockerfile's list.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=""
bin_dir=""
while (($#)); do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n $out ]] || { echo "build-image: --out DIR is required" >&2; exit 2; }

if [[ -z $bin_dir ]]; then
  (cd "$repo" && cmake --preset release -DLAZYMIG_BUILD_TESTS=OFF &&
    cmake --build --preset release --target lazymig-agent lazymig)
  bin_dir=$repo/build/bin
fi
for b in lazymig-agent lazymig; do
  [[ -x $bin_dir/$b ]] || { echo "build-image: $bin_dir/$b is missing or not executable" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/lazymig/tls" "$out/var/lib/lazymig" "$out/run/lazymig/vmm"

# The Dockerfile's build stage strips into /out; its COPY lines, one for one.
"$repo/deploy/image/strip-binaries.sh" "$bin_dir" "$out/.out" lazymig-agent lazymig
install -m 0755 "$out/.out/bin/lazymig-agent" "$out/usr/local/bin/lazymig-agent"
install -m 0755 "$out/.out/bin/lazymig" "$out/usr/local/bin/lazymig"
mv "$out/.out/debug" "$out/.debug"
rm -rf "$out/.out"
install -m 0644 "$repo/deploy/image/lazymig.yaml" "$out/etc/lazymig/lazymig.yaml"

# Shared libraries: copy each resolved library (following symlinks) to the same path
# under the tree, and note the Debian package that ships it.
declare -A packages=()
for b in lazymig-agent lazymig; do
  ldd_out=$(ldd "$out/usr/local/bin/$b")
  if grep -q "not found" <<<"$ldd_out"; then
    echo "build-image: $b has unresolved libraries:" >&2
    grep "not found" <<<"$ldd_out" >&2
    exit 1
  fi
  while read -r lib; do
    [[ -n $lib ]] || continue
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
    if command -v dpkg-query >/dev/null; then
      real=$(readlink -f "$lib")
      pkg=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$real" 2>/dev/null || true)
      pkg=${pkg%%:*}
      [[ -n $pkg ]] && packages[$pkg]=1
    fi
  done < <(awk '/=>/ {print $3} /^\t\/[^ ]+ \(/ {print $1}' <<<"$ldd_out")
done
printf '%s\n' "${!packages[@]}" | sort > "$out/.runtime-packages"
echo "build-image: staged $(find "$out" -type f | wc -l) files in $out"
