#!/usr/bin/env bash
# Strips the shipped binaries, keeping their debug symbols apart: for each NAME,
#   OUT/bin/NAME          stripped (no .debug_*, no symbol table), with a .gnu_debuglink to
#   OUT/debug/NAME.debug  the debug symbols only (objcopy --only-keep-debug)
# so a debugger given OUT/debug finds the symbols of a core from the image by build-id or
# debuglink. The Dockerfile's build stage runs this; so does deploy/build-image.sh.
#
#   deploy/image/strip-binaries.sh BIN_DIR OUT NAME...
#
# Prints one line per binary: its size before and after.
set -euo pipefail
bin_dir=$(cd "${1:?usage: strip-binaries.sh BIN_DIR OUT NAME...}" && pwd)
out=${2:?usage: strip-binaries.sh BIN_DIR OUT NAME...}
mkdir -p "$out" && out=$(cd "$out" && pwd)
shift 2
(($#)) || { echo "strip-binaries: name at least one binary" >&2; exit 2; }
mkdir -p "$out/bin" "$out/debug"
for name in "$@"; do
  src=$bin_dir/$name
  [[ -x $src ]] || { echo "strip-binaries: $src is missing or not executable" >&2; exit 1; }
  objcopy --only-keep-debug "$src" "$out/debug/$name.debug"
  chmod 0644 "$out/debug/$name.debug"
  # The debuglink's path is resolved next to the binary or under /usr/lib/debug; its CRC
  # ties the stripped binary to this very debug file.
  (cd "$out/debug" && objcopy --strip-all --add-gnu-debuglink="$name.debug" "$src" "$out/bin/$name")
  chmod 0755 "$out/bin/$name"
  echo "strip-binaries: $name $(stat -c %s "$src") -> $(stat -c %s "$out/bin/$name") bytes" \
    "(debug symbols: $(stat -c %s "$out/debug/$name.debug") bytes)"
done
