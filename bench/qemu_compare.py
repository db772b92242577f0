#!/usr/bin/env python3
"""QEMU's own live migration on this machine, for the bench to set beside lazymig's.

Driven by bench/qemu_compare.sh, which installs QEMU, assembles the guest (bench/qemu_guest.S)
and measures the TSC rate. Per run and mode: a destination QEMU (`-incoming defer`) and a
source QEMU on loopback, the source's guest filled and touching memory, a migration over plain
TCP driven through QMP, and QEMU's own figures from `query-migrate` (total, setup and downtime,
bytes, postcopy requests, the destination's postcopy blocktime) plus the stalls the guest timed
itself (touches over the stall threshold, from its debug console). Only the standard library.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

MODES = {  # name: capabilities set on both sides
    "precopy": [],
    "postcopy": ["postcopy-ram"],
    "postcopy-preempt": ["postcopy-ram", "postcopy-preempt"],
}


class BenchError(Exception):
    pass


class Qmp:
    """One QMP connection over a unix socket; replies matched to commands, events kept."""

    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise BenchError(f"QMP socket {path}: no QEMU listening after {timeout}s")
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.events = []
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise BenchError("QMP: no reply in time") from None
            if not chunk:
                raise BenchError("QMP: QEMU closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise BenchError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def close(self):
        self.sock.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout, poll=0.02):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def debugcon_lines(path, offset=0):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


class Vm:
    """A QEMU process of ours; stopped (SIGKILL after a grace) however the run ends."""

    live = []

    def __init__(self, args, name, workdir, extra, timeout):
        self.qmp_path = os.path.join(workdir, f"{name}.qmp")
        self.debugcon = os.path.join(workdir, f"{name}.debugcon")
        self.log = os.path.join(workdir, f"{name}.log")
        for p in (self.qmp_path, self.debugcon):
            if os.path.exists(p):
                os.unlink(p)
        cmd = [args.qemu, "-accel", args.accel, "-M", "pc", "-m", args.size, "-smp", "1",
               "-nodefaults", "-display", "none", "-serial", "none", "-kernel", args.guest,
               "-debugcon", f"file:{self.debugcon}",
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off"] + extra
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)
        Vm.live.append(self)
        with open(os.path.join(workdir, "pids"), "a") as f:  # for the script's own cleanup
            f.write(f"{self.proc.pid}\n")
        try:
            self.qmp = Qmp(self.qmp_path, timeout)
        except BenchError as e:
            raise BenchError(f"{name} QEMU: {e}; its output: {self.output()}") from None

    def output(self):
        try:
            return open(self.log).read().strip()[-600:] or "(none)"
        except OSError:
            return "(none)"

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.qmp.command("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in Vm.live:
            Vm.live.remove(self)

    @classmethod
    def stop_all(cls):
        for vm in list(cls.live):
            if vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
            cls.live.remove(vm)


def set_capabilities(vm, names, side):
    have = {c["capability"] for c in vm.qmp.command("query-migrate-capabilities")}
    missing = [n for n in names if n not in have]
    if missing:
        raise BenchError(f"{side} QEMU lacks migration capabilities {missing}")
    if names:
        vm.qmp.command("migrate-set-capabilities",
                       capabilities=[{"capability": n, "state": True} for n in names])


def stalls_us(lines, tsc_hz):
    return sorted(int(l[1:], 16) * 1e6 / tsc_hz for l in lines if l.startswith("S") and len(l) == 9)


# The demo's CDF quantiles (kLatencyCdfQuantiles in base/latency_histogram.h), so that
# bench/plot_cdf.py --metric vcpu_stall draws QEMU's guest stalls beside lazymig's.
CDF_QUANTILES = [0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55,
                 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998,
                 0.999]


def quantile(xs, q):  # the same rank as the demo's CDFs: floor(q * (n - 1))
    return xs[int(q * (len(xs) - 1))] if xs else None


def start_pair(args, caps, workdir):
    """A destination waiting for a migration and a source whose guest has filled its memory;
    returns them and the guest's touch rate before the migration (from its progress marks)."""
    t = args.timeout
    dst = Vm(args, "dst", workdir, ["-incoming", "defer"], t)
    src = Vm(args, "src", workdir, ["-mem-prealloc"], t)
    wait_for("the source guest to fill its memory (its debug console says R)",
             lambda: "R" in debugcon_lines(src.debugcon), t)
    marks0 = debugcon_lines(src.debugcon).count("T")
    time.sleep(args.rate_window)
    touch_rate = (debugcon_lines(src.debugcon).count("T") - marks0) * 4096 / args.rate_window
    set_capabilities(dst, caps + (["postcopy-blocktime"] if caps else []), "destination")
    set_capabilities(src, caps, "source")
    # QEMU's default bandwidth cap (32 MiB/s) would measure the cap: lift it.
    src.qmp.command("migrate-set-parameters", **{"max-bandwidth": args.max_bandwidth})
    return src, dst, touch_rate


def migrate(args, mode, src, dst):
    """Runs the migration to completion on both sides; returns the source's and the
    destination's last `query-migrate`, the source's statuses and when postcopy was asked for."""
    caps, t = MODES[mode], args.timeout
    port = free_port()
    dst.qmp.command("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    started = time.monotonic()
    src.qmp.command("migrate", uri=f"tcp:127.0.0.1:{port}")
    switched_at = None
    if caps and args.switch == "now":
        src.qmp.command("migrate-start-postcopy")
        switched_at = 0.0
    statuses = []
    while True:
        info = src.qmp.command("query-migrate")
        status = info.get("status")
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            raise BenchError(f"{mode}: migration {status}: {info.get('error-desc', '')}")
        elapsed = time.monotonic() - started
        if elapsed > t:
            src.qmp.command("migrate_cancel")
            raise BenchError(f"{mode}: migration not completed after {t}s (status {status})")
        if caps and switched_at is None and status == "active" and (
                (args.switch == "pass" and info.get("ram", {}).get("dirty-sync-count", 0) >= 2) or
                (args.switch not in ("pass", "now") and elapsed >= float(args.switch))):
            src.qmp.command("migrate-start-postcopy")
            switched_at = elapsed
        time.sleep(0.01)

    def destination_done():
        i = dst.qmp.command("query-migrate")
        running = dst.qmp.command("query-status").get("status") == "running"
        return i if i.get("status") == "completed" and running else None
    return info, wait_for("the destination to complete and run", destination_done, t), \
        statuses, switched_at


def stall_figures(prefix, stalls):
    return {f"{prefix}_stalls": len(stalls),
            f"{prefix}_stall_us": {"p50": quantile(stalls, 0.5), "p90": quantile(stalls, 0.9),
                                   "p99": quantile(stalls, 0.99), "max": quantile(stalls, 1.0)}}


def one_run(args, mode, workdir):
    src, dst, touch_rate = start_pair(args, MODES[mode], workdir)
    limit = src.qmp.command("query-migrate-parameters").get("downtime-limit")
    src_offset = os.path.getsize(src.debugcon)
    info, dst_info, statuses, switched_at = migrate(args, mode, src, dst)
    time.sleep(args.tail)  # the guest keeps touching on the destination a moment
    src_stalls = stalls_us(debugcon_lines(src.debugcon, src_offset), args.tsc_hz)
    dst_stalls = stalls_us(debugcon_lines(dst.debugcon), args.tsc_hz)
    dst.stop()
    src.stop()
    ram, total_ms = info.get("ram", {}), info.get("total-time", 0)
    # QEMU 7.2 times a postcopy switch in whole milliseconds and, when that rounds to 0, takes
    # the downtime as "now - the start of a pre-copy stop" that never happened: the clock since
    # boot, longer than the whole migration. Such a switch took under a millisecond.
    downtime = info.get("downtime")
    downtime_under_1ms = downtime is not None and downtime > total_ms
    mib = lambda key: ram.get(key, 0) / 2**20
    return {
        "mode": mode, "postcopy": "postcopy-active" in statuses,
        "switched_after_s": switched_at, "statuses": statuses,
        "total_ms": total_ms, "setup_ms": info.get("setup-time"),
        "downtime_ms": 0 if downtime_under_1ms else downtime,
        "downtime_under_1ms": downtime_under_1ms, "downtime_reported_ms": downtime,
        "downtime_limit_ms": limit,
        "transferred_mib": mib("transferred"),
        "throughput_mib_s": mib("transferred") / (total_ms / 1000) if total_ms else 0,
        "qemu_mbps_last": ram.get("mbps"), "dirty_sync_count": ram.get("dirty-sync-count"),
        "precopy_mib": mib("precopy-bytes"), "downtime_mib": mib("downtime-bytes"),
        "postcopy_mib": mib("postcopy-bytes"),
        "postcopy_requests": ram.get("postcopy-requests"),
        "postcopy_blocktime_ms": dst_info.get("postcopy-blocktime"),
        "guest_touches_per_s": round(touch_rate),
        **stall_figures("dst", dst_stalls),
        "vcpus": f"qemu-{args.accel}",
        "vcpu_stall_cdf_us": [{"q": q, "us": round(quantile(dst_stalls, q), 1)}
                              for q in CDF_QUANTILES] if dst_stalls else [],
        "src_stalls_during": len(src_stalls),
        "src_stall_us_p50": quantile(src_stalls, 0.5),
    }


SUMMARY = [  # (key in the table, header, how to get it from a run)
    ("total_ms", "total ms", lambda r: r["total_ms"]),
    ("downtime_ms", "downtime ms", lambda r: r["downtime_ms"]),
    ("setup_ms", "setup ms", lambda r: r["setup_ms"]),
    ("throughput_mib_s", "MiB/s", lambda r: r["throughput_mib_s"]),
    ("postcopy_requests", "pc requests", lambda r: r["postcopy_requests"]),
    ("postcopy_blocktime_ms", "blocktime ms", lambda r: r["postcopy_blocktime_ms"]),
    ("dst_stalls", "dst stalls", lambda r: r["dst_stalls"]),
    ("dst_stall_p50_us", "stall p50 us", lambda r: r["dst_stall_us"]["p50"]),
    ("dst_stall_p99_us", "stall p99 us", lambda r: r["dst_stall_us"]["p99"]),
    ("src_stalls_during", "src stalls", lambda r: r["src_stalls_during"]),
]


def spread(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return {"median": xs[0], "q1": xs[0], "q3": xs[0]}
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "q1": q1, "q3": q3}


def fmt(s):
    if s is None:
        return "-"
    return f"{s['median']:.0f} ({s['q1']:.0f}-{s['q3']:.0f})"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--guest", required=True)
    ap.add_argument("--size", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="precopy,postcopy,postcopy-preempt")
    ap.add_argument("--accel", default="tcg")
    ap.add_argument("--switch", default="pass",
                    help="when postcopy starts: pass (after the first pass), now, or seconds")
    ap.add_argument("--tsc-hz", type=float, required=True)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--tail", type=float, default=0.2)
    ap.add_argument("--rate-window", type=float, default=1.0)
    ap.add_argument("--max-bandwidth", type=int, default=100 * 2**30)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json")
    ap.add_argument("--meta", default="{}", help="JSON merged into the file's top level")
    args = ap.parse_args()
    args.modes = args.modes.split(",")
    for m in args.modes:
        if m not in MODES:
            sys.exit(f"qemu_compare: unknown mode '{m}' (modes: {', '.join(MODES)})")
    if args.switch not in ("pass", "now"):
        try:
            float(args.switch)
        except ValueError:
            sys.exit(f"qemu_compare: SWITCH must be pass, now or seconds, got '{args.switch}'")
    return args


def run_all(args):
    """Every run of every mode, interleaved (run 1 of each mode, then run 2, ...) so that the
    machine's load drifts over all modes alike; a failed run is kept with its reason."""
    runs = {m: [] for m in args.modes}
    failures = {m: [] for m in args.modes}
    try:
        for i in range(args.runs):
            for m in args.modes:
                try:
                    r = one_run(args, m, args.workdir)
                    runs[m].append(r)
                    print(json.dumps(r), flush=True)
                except (BenchError, OSError, ValueError) as e:  # QEMU gone, QMP garbled
                    failures[m].append(str(e))
                    print(f"qemu_compare: {m} run {i + 1}: {e}", file=sys.stderr, flush=True)
                finally:
                    Vm.stop_all()
    finally:
        Vm.stop_all()
    return runs, failures


def summarise(args, runs, failures, load_start, load_end):
    results = []
    print(f"\nQEMU {args.size}, accel={args.accel}, postcopy switch={args.switch}, "
          f"medians (IQR) of {args.runs} runs; load {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print(f"{'mode':<17}{'ok':>3} {'postcopy':>8} " + " ".join(f"{h:>15}" for _, h, _ in SUMMARY))
    for m in args.modes:
        summary = {k: spread([get(r) for r in runs[m]]) for k, _, get in SUMMARY}
        pc = sum(r["postcopy"] for r in runs[m])
        print(f"{m:<17}{len(runs[m]):>3} {pc:>8} " +
              " ".join(f"{fmt(summary[k]):>15}" for k, _, _ in SUMMARY))
        results.append({"mode": m, "scenario": m, "summary": summary, "runs": runs[m],
                        "failed_runs": len(failures[m]), "failures": failures[m]})
    return results


def main():
    args = parse_args()

    def on_signal(signum, _frame):
        Vm.stop_all()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs, failures = run_all(args)
    load_end = os.getloadavg()
    results = summarise(args, runs, failures, load_start, load_end)
    if args.json:
        doc = {"bench": "bench/qemu_compare.sh", "size": args.size, "runs": args.runs,
               "accel": args.accel, "switch": args.switch, "started": started,
               "tsc_hz": args.tsc_hz,
               "host": {"loadavg_start": list(load_start), "loadavg_end": list(load_end),
                        "cpus": os.cpu_count(), "kernel": os.uname().release},
               "results": results}
        doc.update(json.loads(args.meta))
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"results: {args.json}", file=sys.stderr)
    return 0 if all(runs[m] for m in args.modes) else 1


if __name__ == "__main__":
    sys.exit(main())
