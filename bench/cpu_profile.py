#!/usr/bin/env python3
"""Where a migrated GiB's CPU goes: reads `perf script -F comm,pid,tid,ip,sym,dso` of a
demo run (bench/cpu_profile.sh records it) and groups each agent's samples by what the
sampled code was doing, from its stack: AES-GCM, TLS record handling, memcpy, the send and
receive syscalls, UFFDIO_COPY, libevent/epoll, ... Prints a table per agent and one JSON
object (the last line).

Usage: cpu_profile.py PERF_SCRIPT_TEXT SAMPLE_HZ [GIB_MOVED]
"""
import bisect
import collections
import functools
import json
import re
import subprocess
import sys

# Kernel frames anywhere on the stack name the syscall the time was spent in; the first that
# matches, walking from the leaf up, wins.
KERNEL_GROUPS = [
    ("UFFDIO_COPY", re.compile(r"userfaultfd_ioctl|mfill_atomic|mcopy_atomic|uffd")),
    ("send (TCP, kernel)", re.compile(r"tcp_sendmsg|sock_sendmsg|sock_write_iter|__sys_sendto")),
    ("recv (TCP, kernel)", re.compile(r"tcp_recvmsg|sock_recvmsg|sock_read_iter|__sys_recvfrom")),
    ("epoll / wake-ups (kernel)", re.compile(r"ep_poll|do_epoll_wait|__x64_sys_epoll|futex|eventfd")),
    ("page faults on guest memory (kernel)", re.compile(r"handle_mm_fault|exc_page_fault|do_user_addr_fault")),
    ("pread / file reads (kernel)", re.compile(r"ksys_pread|filemap_read|shmem_file_read")),
]
# Otherwise the leaf's symbol and library say it.
LEAF_GROUPS = [
    ("memcpy / memmove", re.compile(r"memcpy|memmove|__memcpy|__memmove"), None),
    ("TLS record handling (OpenSSL)", re.compile(r"ssl|tls|SSL|BIO|bio_|ossl_|EVP_|CRYPTO_|RECORD|record", re.I), None),
    ("libevent", None, re.compile(r"libevent")),
    ("OpenSSL other (EVP, buffers, record layer)", None, re.compile(r"libcrypto|libssl")),
    ("RocksDB", None, re.compile(r"librocksdb")),
    ("malloc / free", re.compile(r"malloc|free|_int_|cfree|tcache"), re.compile(r"libc")),
    ("libc other", None, re.compile(r"libc[.-]")),
    ("agent code", None, re.compile(r"lazymig-agent")),
    ("kernel other", None, re.compile(r"kernel|vmlinux")),
]


def samples(lines):
    """Yields (comm, pid, tid, [(sym, dso, address in the dso), ...] leaf first)."""
    head = None
    stack = []
    header = re.compile(r"^(\S.*?)\s+(\d+)/(\d+)\s*$")
    frame = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head:
                yield (*head, stack)
            head, stack = None, []
            continue
        m = header.match(line)
        if m and head is None:
            head = (m.group(1).strip(), int(m.group(2)), int(m.group(3)))
            continue
        f = frame.match(line)
        if f and head:
            stack.append((f.group(2), f.group(3), int(f.group(1), 16)))
    if head:
        yield (*head, stack)


@functools.lru_cache(maxsize=None)
def cipher_instructions(dso):
    """Addresses of AES and carry-less multiply (GHASH) instructions in `dso`. Debian's
    libcrypto is stripped of its local symbols, so perf names its AES-GCM assembly [unknown]
    or after the nearest exported symbol; the instructions around a sample say what it is."""
    try:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", dso], capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    pattern = re.compile(r"^\s*([0-9a-f]+):\s+v?(aesenc|aesdec|aesenclast|aesdeclast|pclmul|vpclmul)")
    return sorted(int(m.group(1), 16) for m in map(pattern.match, text.splitlines()) if m)


def is_cipher(dso, address, reach=64):
    marks = cipher_instructions(dso)
    i = bisect.bisect_left(marks, address - reach)
    return i < len(marks) and marks[i] <= address + reach


def group(stack):
    if stack and re.search(r"libcrypto", stack[0][1]) and is_cipher(stack[0][1], stack[0][2]):
        return "AES-GCM"
    for sym, dso, _ in stack:
        for name, pattern in KERNEL_GROUPS:
            if ("kernel" in dso or "vmlinux" in dso) and pattern.search(sym):
                return name
    if not stack:
        return "unknown"
    sym, dso, _ = stack[0]
    for name, sym_re, dso_re in LEAF_GROUPS:
        if sym_re and not sym_re.search(sym):
            continue
        if dso_re and not dso_re.search(dso):
            continue
        if sym_re is None and dso_re is None:
            continue
        return name
    return "other: " + dso.rsplit("/", 1)[-1]


def main():
    path, hz = sys.argv[1], float(sys.argv[2])
    gib = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    all_samples = list(samples(open(path, errors="replace")))
    # The agents: processes with a "peer" loop thread; the destination is the one that also
    # runs an urgent-<id> loop.
    agent_pids = {pid for comm, pid, _, _ in all_samples if comm == "peer"}
    agent_pids |= {pid for comm, pid, _, _ in all_samples if comm.startswith(("urgent-", "bulk-"))}
    dest_pids = {pid for comm, pid, _, _ in all_samples if comm.startswith(("urgent-", "bulk-"))}
    roles = {pid: ("destination" if pid in dest_pids else "source") for pid in agent_pids}
    out = {"sample_hz": hz, "gib_moved": gib, "agents": {}}
    for role in ("source", "destination"):
        groups = collections.Counter()
        threads = collections.Counter()
        symbols = collections.Counter()
        for comm, pid, _, stack in all_samples:
            if roles.get(pid) != role:
                continue
            groups[group(stack)] += 1
            threads[comm] += 1
            if stack:
                symbols[f"{stack[0][0]} ({stack[0][1].rsplit('/', 1)[-1]})"] += 1
        total = sum(groups.values())
        if not total:
            continue
        cpu_s = total / hz
        print(f"{role}: {total} samples = {cpu_s:.2f} CPU s ({cpu_s / gib:.2f} s/GiB)")
        print("  by thread: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common()))
        for name, n in groups.most_common():
            print(f"  {name:40s} {100 * n / total:5.1f}%  {n / hz / gib:6.3f} s/GiB")
        print("  top symbols:")
        for sym, n in symbols.most_common(12):
            print(f"    {100 * n / total:5.1f}%  {sym}")
        out["agents"][role] = {
            "samples": total, "cpu_s_per_gib": cpu_s / gib,
            "threads": {t: n / total for t, n in threads.items()},
            "groups": {g: n / total for g, n in groups.most_common()},
            "top_symbols": {s: n / total for s, n in symbols.most_common(12)},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
