# A hostile (or merely unusual) VMM for the end-to-end tests: it speaks Firecracker's uffd
# handshake on the agent's socket the way a real VMM could, but with the details the tests
# choose. Real kernel objects throughout: a real userfaultfd registered over real memory.
#
#   hostile_vmm.py SOCKET MODE [ARGS...]
#   blocking SIZE MEMFILE GOFILE  a uffd created WITHOUT O_NONBLOCK (legal) over SIZE bytes of
#                                 anonymous memory; touches a few pages (faults the agent must
#                                 serve), prints "touched"; once GOFILE exists compares every
#                                 byte with MEMFILE and prints "mismatches N"
#   wrong-fd KIND                 a well-formed handshake whose uffd is KIND: devnull, pipe,
#                                 file, memfd; prints the agent's answer (the socket closes)
#   wrong-memory KIND             two fds: a real uffd, and KIND where the shared memory goes
#   wrong-bitmap KIND             three fds: a real uffd, a memfd, and KIND as the bitmap
#   wrong-size SIZE               a real uffd over SIZE bytes: regions that are not the size
#                                 of the memory the source serves
#   idle                          connects and never says anything
#   garbage                       sends malformed JSON with a uffd and keeps the socket open
import ctypes
import fcntl
import json
import mmap
import os
import socket
import struct
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

SYS_USERFAULTFD = 323  # x86_64
PAGE = 4096


def iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


def userfaultfd(blocking):
    flags = os.O_CLOEXEC | (0 if blocking else os.O_NONBLOCK)
    fd = libc.syscall(SYS_USERFAULTFD, flags)
    if fd < 0:
        sys.exit("userfaultfd: errno %d" % ctypes.get_errno())
    api = bytearray(struct.pack("QQQ", 0xAA, 0, 0))
    fcntl.ioctl(fd, iowr(0x3F, 24), api)
    return fd


def anonymous(size, uffd):
    addr = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    reg = bytearray(struct.pack("QQQQ", addr, size, 1, 0))  # UFFDIO_REGISTER_MODE_MISSING
    fcntl.ioctl(uffd, iowr(0x00, 32), reg)
    return addr


def mappings(addr, size, guest_memfd=False):
    region = {"base_host_virt_addr": addr, "size": size, "offset": 0, "page_size": PAGE}
    if guest_memfd:
        region.update({"gpa_start": 0, "is_guest_memfd": True})
    return json.dumps([region]).encode()


def not_a_uffd(kind):
    if kind == "devnull":
        return os.open("/dev/null", os.O_RDWR)
    if kind == "pipe":
        return os.pipe()[0]
    if kind == "file":
        return os.open(sys.argv[0], os.O_RDONLY)
    if kind == "memfd":
        fd = os.memfd_create("not-a-uffd")
        os.ftruncate(fd, PAGE)
        return fd
    sys.exit("unknown kind " + kind)


def answer(s):
    s.settimeout(20)
    try:
        print("answer", s.recv(100), flush=True)
    except OSError as e:
        print("answer error", e, flush=True)


def main():
    path, mode = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    if mode == "idle":
        print("connected", flush=True)
        s.recv(1)  # until the agent gives up on us
        return
    if mode == "garbage":
        socket.send_fds(s, [b"[{not json"], [userfaultfd(False)])
        print("sent", flush=True)
        s.recv(1)
        return
    if mode == "wrong-fd":
        socket.send_fds(s, [mappings(PAGE * 16, PAGE)], [not_a_uffd(sys.argv[3])])
        return answer(s)
    if mode in ("wrong-memory", "wrong-bitmap"):
        uffd = userfaultfd(False)
        memory = os.memfd_create("guest")
        os.ftruncate(memory, PAGE)
        fds = [uffd, not_a_uffd(sys.argv[3])]
        if mode == "wrong-bitmap":
            fds = [uffd, memory, not_a_uffd(sys.argv[3])]
        socket.send_fds(s, [mappings(PAGE * 16, PAGE, mode == "wrong-bitmap")], fds)
        return answer(s)
    if mode == "wrong-size":
        size = int(sys.argv[3])
        uffd = userfaultfd(False)
        socket.send_fds(s, [mappings(anonymous(size, uffd), size)], [uffd])
        return answer(s)
    if mode == "blocking":
        size, memfile, gofile = int(sys.argv[3]), sys.argv[4], sys.argv[5]
        uffd = userfaultfd(True)
        addr = anonymous(size, uffd)
        socket.send_fds(s, [mappings(addr, size)], [uffd])
        buf = ctypes.create_string_buffer(PAGE)
        # Each read faults; a CDLL call releases the GIL while the vCPU-like thread waits.
        for page in (0, 1, 7, size // PAGE // 2, size // PAGE - 1):
            libc.memcpy(buf, addr + page * PAGE, PAGE)
        print("touched", flush=True)
        while not os.path.exists(gofile):
            time.sleep(0.05)
        mismatches = 0
        with open(memfile, "rb") as f:
            for off in range(0, size, 1 << 20):
                want = f.read(1 << 20)
                if ctypes.string_at(addr + off, len(want)) != want:
                    mismatches += 1
        print("mismatches", mismatches, flush=True)
        return
    sys.exit("unknown mode " + mode)


main()
