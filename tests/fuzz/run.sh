#!/usr/bin/env bash
# Builds one libFuzzer target with clang (Debian's clang-16; the suite's compiler is GCC, and
# libFuzzer needs clang) and runs it for a bounded time from the seed corpus.
#
#   tests/fuzz/run.sh frame|handshake|config [seconds=20] [workdir]
#
# Exits non-zero on a build failure or on any crash, leak, sanitizer report or timeout the
# fuzzer finds; the input that did it is left in <workdir>/artifacts/ and its path printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${1:?usage: run.sh frame|handshake|config [seconds] [workdir]}
seconds=${2:-20}
work=${3:-$(mktemp -d /tmp/lazymig-fuzz.XXXXXX)}
cxx=${LAZYMIG_FUZZ_CXX:-clang++-16}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx is missing (scripts/install-deps.sh installs clang-16)" >&2; exit 1; }

case $target in
  frame) sources=(transport/frame.cc transport/bitmap_frames.cc base/error.cc); libs=() ;;
  handshake) sources=(vmm/handshake.cc vmm/source_handover.cc base/strict_json.cc sys/unix_socket.cc sys/unique_fd.cc sys/uffd.cc sys/memory_fd.cc sys/kvm.cc sys/mapping.cc sys/write_tracker.cc base/error.cc); libs=() ;;
  config) sources=(config/config.cc base/error.cc base/log.cc); libs=(-lyaml-cpp) ;;
  *) echo "fuzz: unknown target '$target' (frame, handshake, config)" >&2; exit 2 ;;
esac

mkdir -p "$work/corpus" "$work/artifacts"
bin=$work/$target-fuzz
# libstdc++ 12 hides std::expected unless __cpp_concepts says C++20 concepts are complete;
# clang 16 implements what <expected> uses but still reports the older value.
flags=(-std=c++2b -Wno-macro-redefined -D__cpp_concepts=202002L -O1 -g -I"$root"
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
echo "fuzz: building $target with $cxx"
(cd "$root" && "$cxx" "${flags[@]}" "tests/fuzz/${target}_fuzz.cc" "${sources[@]}" "${libs[@]}" -o "$bin")

echo "fuzz: running $target for ${seconds}s (seeds: tests/fuzz/corpus/$target)"
rc=0
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
  "$work/corpus" "$root/tests/fuzz/corpus/$target" >"$work/$target.log" 2>&1 || rc=$?
grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs" "$work/$target.log" || true
if [[ $rc -ne 0 ]]; then
  tail -n 40 "$work/$target.log"
  echo "fuzz: $target FAILED (rc=$rc); reproducer(s): $(ls "$work/artifacts/")" >&2
  exit 1
fi
echo "fuzz: $target ran clean"
[[ $# -ge 3 ]] || rm -rf "$work"
