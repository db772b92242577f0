#!/usr/bin/env bash
# clang-tidy (repo .clang-tidy) over the sources, or over the files given, two at a time.
#   scripts/tidy.sh                 every .cc outside tests/ and the fuzz targets
#   scripts/tidy.sh agent/source/foo.cc    just these
# Needs clang-tidy-16 (apt-get install clang-tidy-16) and a release build's
# compile_commands.json (cmake --preset release). Exits non-zero when it warns.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-tidy-16 >/dev/null || { echo "tidy: apt-get install clang-tidy-16" >&2; exit 2; }
[[ -f build/compile_commands.json ]] || { echo "tidy: run cmake --preset release first" >&2; exit 2; }
if (($#)); then
  files=("$@")
else
  mapfile -t files < <(git ls-files '*.cc' | grep -v -e '^tests/')
fi
# GCC 12's flags say -std=c++23, which clang 16 spells c++2b; libstdc++ 12 shows
# std::expected only when __cpp_concepts says concepts are complete.
out=$(printf '%s\n' "${files[@]}" | xargs -P2 -n4 clang-tidy-16 -p build --quiet \
  --extra-arg=-std=c++2b --extra-arg=-D__cpp_concepts=202002L \
  --extra-arg=-Wno-macro-redefined --extra-arg=-Wno-unknown-warning-option 2>/dev/null || true)
warnings=$(grep -E '(warning|error): ' <<<"$out" | sort -u || true)
if [[ -n $warnings ]]; then
  echo "$warnings"
  echo "tidy: $(wc -l <<<"$warnings") finding(s)" >&2
  exit 1
fi
echo "tidy: clean (${#files[@]} files)"
