#!/usr/bin/env bash
# QEMU's own live migration on this machine, side by side with lazymig's figures (issues 14
# and 19): Debian's QEMU (7.2 on Debian 12), a source and a destination QEMU on loopback, a
# guest of SIZE that fills its memory and then keeps touching it, migrated over plain TCP by
# QMP in each mode: `precopy`; `postcopy` (pre-copy, then `migrate-start-postcopy` after the
# first pass); `postcopy-preempt` (the same with the postcopy-preempt channel). Per mode, the
# medians and IQRs over RUNS runs of QEMU's own `query-migrate` figures (total, downtime,
# setup time, postcopy requests, the destination's postcopy blocktime), the throughput
# (bytes sent / total time) and the stalls the guest timed itself on the destination. Prints
# one JSON line per run and a table; JSON=FILE writes everything to one file (default
# build/bench/qemu-<UTC time>.json), its path the last line on stderr.
#   bench/qemu_compare.sh [runs=3] [size=256MiB]
# Environment:
#   MODES=precopy,postcopy,postcopy-preempt   the modes, in this order within each run
#   ACCEL=tcg|kvm        (default tcg) QEMU's accelerator; kvm only where QEMU can run on /dev/kvm
#   SWITCH=pass|now|SEC  when the postcopy modes start postcopy (default pass: after the first
#                        pass, as QEMU's users do; now: pure post-copy, like lazymig's)
#   PATTERN=random|hot   how the guest touches (hot: nine touches in ten in a tenth of memory)
#   TOUCH_US=10          the guest's aimed interval between touches (the measured rate is reported)
#   STALL_US=50          a touch slower than this is a stall (as lazymig's test VM counts them)
#   TIMEOUT=180          seconds allowed for each wait (QEMU start, fill, migration)
#   INSTALL=0            fail instead of installing qemu-system-x86 when it is missing
# The guest (bench/qemu_guest.S) and the TSC rate probe (bench/tsc_hz.c) are built here from
# the tree with GNU as and cc; nothing is downloaded but Debian's QEMU package.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
size=${2:-256MiB}
modes=${MODES:-precopy,postcopy,postcopy-preempt}
accel=${ACCEL:-tcg}
pattern=${PATTERN:-random}
touch_us=${TOUCH_US:-10}
stall_us=${STALL_US:-50}
json_out=${JSON:-build/bench/qemu-$(date -u +%Y%m%dT%H%M%SZ).json}
die() { echo "qemu_compare: $*" >&2; exit 2; }

[[ $runs =~ ^[1-9][0-9]*$ ]] || die "runs must be a positive count, got '$runs'"
# QEMU's -m takes M and G suffixes; the guest is 32-bit without paging, so it reaches the
# memory below the PCI hole only (QEMU's pc machine keeps up to 3 GiB there).
case $size in
  *GiB | *G) qemu_mib=$(( ${size%%G*} * 1024 )) ;;
  *MiB | *M) qemu_mib=${size%%M*} ;;
  *) die "size must be like 256MiB or 1GiB, got '$size'" ;;
esac
(( qemu_mib >= 16 && qemu_mib <= 3072 )) || die "size must be 16MiB..3GiB (a 32-bit guest), got '$size'"
case $pattern in random) pattern_id=0 ;; hot) pattern_id=1 ;; *) die "PATTERN must be random or hot" ;; esac

# Debian's QEMU, installed when missing (about 11 s and 30 packages here, apt lists fresh).
qemu=$(command -v qemu-system-x86_64 || true)
if [[ -z $qemu ]]; then
  [[ ${INSTALL:-1} == 1 ]] || die "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
  [[ $(id -u) -eq 0 ]] || die "qemu-system-x86_64 is missing; run as root to install it, or: sudo apt-get install qemu-system-x86"
  echo "qemu_compare: installing Debian's qemu-system-x86 (apt-get, --no-install-recommends)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; } ||
    die "apt-get could not install qemu-system-x86"
  qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86 installed but no qemu-system-x86_64"
fi
for tool in as ld cc python3; do command -v $tool >/dev/null || die "$tool is missing (binutils, gcc, python3)"; done

work=$(mktemp -d)
# The driver stops its own QEMUs on exit and on SIGTERM/SIGINT; this catches what it could not:
# every QEMU it started is in $work/pids, killed if still running with our work directory.
cleanup() {
  local pid
  if [[ -f $work/pids ]]; then
    while read -r pid; do
      grep -qs "$work" "/proc/$pid/cmdline" && kill -9 "$pid" 2>/dev/null
    done < "$work/pids"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cc -O2 -o "$work/tsc_hz" bench/tsc_hz.c
tsc_hz=$("$work/tsc_hz")
period=$(( touch_us * tsc_hz / 1000000 ))
stall=$(( stall_us * tsc_hz / 1000000 ))
as --32 --defsym PATTERN=$pattern_id --defsym PERIOD_TICKS=$period --defsym STALL_TICKS=$stall \
  -o "$work/guest.o" bench/qemu_guest.S
ld -m elf_i386 -N -Ttext=0x100000 --no-warn-rwx-segments -o "$work/guest.elf" "$work/guest.o"

# Whether the accelerator runs this guest at all: a guest that fills 16 MiB and says so.
probe() {
  local out=$work/probe.debugcon
  timeout 60 "$qemu" -accel "$1" -M pc -m 16M -nodefaults -display none -serial none \
    -kernel "$work/guest.elf" -debugcon "file:$out" >"$work/probe.log" 2>&1 &
  local pid=$! i
  for ((i = 0; i < 300; i++)); do
    grep -q R "$out" 2>/dev/null && { kill $pid; wait $pid 2>/dev/null; return 0; }
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  return 1
}
probe "$accel" || die "QEMU cannot run a guest with -accel $accel here: $(tail -c 400 "$work/probe.log")"
version=$("$qemu" --version | head -1)
echo "qemu_compare: $version, -accel $accel, $size, $pattern touches every ~${touch_us} us, TSC $tsc_hz Hz" >&2

mkdir -p "$(dirname "$json_out")"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
meta=$(printf '{"qemu": "%s", "git": "%s", "pattern": "%s", "touch_us": %s, "stall_us": %s}' \
  "$version" "$rev" "$pattern" "$touch_us" "$stall_us")
# In the background so that a SIGTERM to this script reaches the driver at once (bash runs a
# trap only after its foreground child ends); the driver stops its QEMUs, then the EXIT trap
# catches any left.
python3 bench/qemu_compare.py --qemu "$qemu" --guest "$work/guest.elf" --size "${qemu_mib}M" \
  --runs "$runs" --modes "$modes" --accel "$accel" --switch "${SWITCH:-pass}" \
  --tsc-hz "$tsc_hz" --timeout "${TIMEOUT:-180}" --workdir "$work" --json "$json_out" \
  --meta "$meta" &
driver=$!
trap 'kill -TERM $driver 2>/dev/null; wait $driver; exit 143' TERM
trap 'kill -INT $driver 2>/dev/null; wait $driver; exit 130' INT
wait $driver
