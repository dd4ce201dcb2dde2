"""A vhost-user front-end for tests and benchmarks (playing QEMU's role).

Contract:

* :class:`Frontend` connects to a back-end's UNIX socket, shares a memfd as
  guest RAM (sealed as QEMU's memory-backend-memfd seals it unless asked
  otherwise; split into regions around a hole, as q35 does at
  0xa0000-0xc0000, optionally also into adjacent regions so buffers can span
  them), and speaks the protocol
  message by message: :meth:`Frontend.send` writes raw messages with any fds,
  :meth:`Frontend.call` sends one request and returns its reply, and
  :meth:`Frontend.start` runs the sequence QEMU 7.2 sends to start a
  vhost-user-blk device.
* :class:`DriverQueue` is the driver side of a split ring in that memory:
  it places descriptor chains, kicks, waits for the call eventfd and collects
  used elements.  It can also write arbitrary ring contents for negative tests.
* Everything it opens is closed by :meth:`Frontend.close` (also a context
  manager).  Waits take a timeout and raise :class:`TimeoutError`, so a
  misbehaving back-end fails a test instead of hanging it.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from .protocol import (
    HEADER,
    Flags,
    ProtocolFeature,
    Region,
    Request,
    VringAddr,
    encode_request,
    pack_config,
    pack_mem_table,
    pack_region,
    pack_u64,
    pack_vring_addr,
    pack_vring_state,
)

__all__ = ["DriverQueue", "Frontend", "Segment"]

#: Fake front-end virtual address of guest address 0.
QVA_BASE = 0x7F00_0000_0000
HOLE_START = 0xA0000
HOLE_END = 0xC0000
RING_BASE = 0x100000
RING_STRIDE = 0x10000
DATA_BASE = 0x400000

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED = struct.Struct("<II")
#: The seals QEMU's memory-backend-memfd puts on guest RAM (its ``seal=on``).
QEMU_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


@dataclass(frozen=True)
class Segment:
    """One descriptor: guest address, length, device-writable?"""

    gpa: int
    length: int
    write: bool = False


class Frontend:
    """See the module docstring.

    Guest RAM is a memfd carrying *seals*, by default those of QEMU's
    memory-backend-memfd.  ``seals=0`` leaves it sealable but unsealed;
    ``seals=None`` creates it without ``MFD_ALLOW_SEALING``, like QEMU's
    ``seal=off``.
    """

    def __init__(
        self,
        path: str,
        mem_size: int = 64 << 20,
        timeout: float = 10.0,
        split: int | None = None,
        seals: int | None = QEMU_SEALS,
    ) -> None:
        self.timeout = timeout
        self.mem_size = mem_size
        self.queues: list[DriverQueue] = []
        self.protocol = ProtocolFeature(0)
        #: Our end of the back-end request channel (:meth:`open_backend_channel`).
        self.backend_channel: socket.socket | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.memfd = -1
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
            flags = os.MFD_CLOEXEC | (0 if seals is None else os.MFD_ALLOW_SEALING)
            self.memfd = os.memfd_create("guest-ram", flags)
            os.ftruncate(self.memfd, mem_size)
            if seals:
                fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, seals)
            self.mem = mmap.mmap(self.memfd, mem_size)
        except BaseException:
            self.close()
            raise
        # Optionally cut the upper region in two adjacent ones at *split*.
        bounds = [HOLE_END, *([split] if split else []), mem_size]
        self.regions = [Region(0, HOLE_START, QVA_BASE, 0)] + [
            Region(a, b - a, QVA_BASE + a, a) for a, b in itertools.pairwise(bounds)
        ]

    def __enter__(self) -> Frontend:
        return self

    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for q in self.queues:
            q.close()
        self.queues = []
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
        if hasattr(self, "mem"):
            self.mem.close()
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1
        self.sock.close()

    def reconnect(self, path: str) -> None:
        """Drop the connection and open a new one, keeping guest memory and
        rings (what QEMU does after the back-end went away)."""
        self.sock.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(path)

    # ---- messages ----

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send raw bytes, the fds riding on the first byte."""
        if fds:
            cmsg = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            n = self.sock.sendmsg([data], cmsg)
        else:
            n = self.sock.send(data)
        if n < len(data):
            self.sock.sendall(data[n:])

    def request(
        self,
        request: int,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        need_reply: bool = False,
    ) -> None:
        flags = Flags.VERSION | (Flags.NEED_REPLY if need_reply else 0)
        self.send(encode_request(request, payload, flags), fds)

    def read_reply(self) -> tuple[int, int, bytes]:
        """``(request, flags, payload)`` of the next reply; EOFError at EOF."""
        header = self._read_exact(HEADER.size)
        request, flags, size = HEADER.unpack(header)
        return request, flags, self._read_exact(size)

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("back-end closed the connection")
            buf += chunk
        return bytes(buf)

    def call(
        self, request: int, payload: bytes = b"", fds: Sequence[int] = (), need_reply: bool = False
    ) -> bytes:
        """Send a request that has a reply (or NEED_REPLY) and return the reply payload."""
        self.request(request, payload, fds, need_reply)
        req, flags, body = self.read_reply()
        if req != request or flags != 0x5:
            raise AssertionError(f"bad reply header: request {req}, flags {flags:#x}")
        return body

    def call_u64(self, request: int, payload: bytes = b"", need_reply: bool = False) -> int:
        return int(struct.unpack("<Q", self.call(request, payload, need_reply=need_reply))[0])

    def ack(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """Send with NEED_REPLY and return the REPLY_ACK value (0 = success)."""
        return int(struct.unpack("<Q", self.call(request, payload, fds, need_reply=True))[0])

    def disconnected(self) -> bool:
        """True if the back-end closes the connection (waits up to the timeout)."""
        try:
            while self.sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    # ---- QEMU's sequence ----

    def negotiate(self, features: int | None = None) -> int:
        """GET/SET features and protocol features, SET_OWNER; return acked features."""
        offered = self.call_u64(Request.GET_FEATURES)
        proto = self.call_u64(Request.GET_PROTOCOL_FEATURES)
        self.protocol = ProtocolFeature(proto)
        self.request(Request.SET_PROTOCOL_FEATURES, pack_u64(proto))
        self.request(Request.SET_OWNER)
        acked = offered if features is None else features
        self.request(Request.SET_FEATURES, pack_u64(acked))
        return acked

    def add_memory(self) -> None:
        for r in self.regions:
            fd = os.dup(self.memfd)
            try:
                assert self.ack(Request.ADD_MEM_REG, pack_region(r), [fd]) == 0
            finally:
                os.close(fd)

    def set_mem_table(self) -> None:
        fds = [os.dup(self.memfd) for _ in self.regions]
        try:
            self.request(Request.SET_MEM_TABLE, pack_mem_table(self.regions), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def start(self, num_queues: int = 1, size: int = 128, features: int | None = None) -> None:
        """Negotiate, share memory and start *num_queues* rings of *size*."""
        self.negotiate(features)
        self.add_memory()
        for i in range(num_queues):
            q = DriverQueue(self, i, size)
            self.queues.append(q)
            q.configure()
        for q in self.queues:
            self.request(Request.SET_VRING_ENABLE, pack_vring_state(q.index, 1))
        # A reply-bearing request orders everything above before the first kick.
        self.call_u64(Request.GET_FEATURES)

    def stop(self) -> list[int]:
        """Disable the rings and GET_VRING_BASE each; return the bases."""
        for q in self.queues:
            self.request(Request.SET_VRING_ENABLE, pack_vring_state(q.index, 0))
        bases = []
        for q in self.queues:
            body = self.call(Request.GET_VRING_BASE, pack_vring_state(q.index, 0))
            bases.append(struct.unpack("<II", body)[1])
        return bases

    def open_backend_channel(self) -> socket.socket:
        """SET_SLAVE_REQ_FD as QEMU sends it; return our end (also kept in
        :attr:`backend_channel`), on which the back-end's requests arrive."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.settimeout(self.timeout)
            if self.protocol & ProtocolFeature.REPLY_ACK:
                assert self.ack(Request.SET_SLAVE_REQ_FD, b"", [theirs.fileno()]) == 0
            else:
                self.request(Request.SET_SLAVE_REQ_FD, b"", [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.backend_channel = ours
        return ours

    def read_backend_request(self) -> tuple[int, int, bytes]:
        """``(request, flags, payload)`` of the next back-end request; TimeoutError if none."""
        ch = self.backend_channel
        assert ch is not None, "open_backend_channel() first"
        header = ch.recv(HEADER.size, socket.MSG_WAITALL)
        if len(header) < HEADER.size:
            raise EOFError("back-end closed its request channel")
        request, flags, size = HEADER.unpack(header)
        return request, flags, ch.recv(size, socket.MSG_WAITALL) if size else b""

    def get_config(self, offset: int, size: int) -> bytes:
        body = self.call(Request.GET_CONFIG, pack_config(offset, 0, bytes(size)))
        return body[12:]

    # ---- guest memory ----

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa : gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        return self.mem[gpa : gpa + n]

    def qva(self, gpa: int) -> int:
        return QVA_BASE + gpa


class DriverQueue:
    """Driver side of split ring *index*; see the module docstring."""

    def __init__(self, fe: Frontend, index: int, size: int) -> None:
        self.fe = fe
        self.index = index
        self.size = size
        base = RING_BASE + index * RING_STRIDE
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 4095) & ~4095
        self.avail_idx = 0
        self.last_used = 0
        self.next_desc = 0
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.callfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.errfd = os.eventfd(0, os.EFD_CLOEXEC)
        fe.write(base, bytes(self.used + 6 + 8 * size - base))

    def close(self) -> None:
        for fd in (self.kick, self.callfd, self.errfd):
            os.close(fd)

    def addr(self) -> VringAddr:
        fe = self.fe
        return VringAddr(self.index, 0, fe.qva(self.desc), fe.qva(self.used), fe.qva(self.avail), 0)

    def configure(self, base: int = 0) -> None:
        fe, i = self.fe, self.index
        fe.request(Request.SET_VRING_CALL, pack_u64(i), [self.callfd])
        fe.request(Request.SET_VRING_ERR, pack_u64(i), [self.errfd])
        fe.request(Request.SET_VRING_NUM, pack_vring_state(i, self.size))
        fe.request(Request.SET_VRING_BASE, pack_vring_state(i, base))
        fe.request(Request.SET_VRING_ADDR, pack_vring_addr(self.addr()))
        fe.request(Request.SET_VRING_KICK, pack_u64(i), [self.kick])

    def write_desc(self, i: int, gpa: int, length: int, flags: int, nxt: int) -> None:
        self.fe.write(self.desc + 16 * i, _DESC.pack(gpa, length, flags, nxt))

    def add_chain(self, segments: Sequence[Segment], head: int | None = None) -> int:
        """Place *segments* as one chain from *head* (default: the next free
        descriptors, in ring order) and publish it; return the head."""
        if head is None:
            head = self.next_desc
        n = len(segments)
        for k, seg in enumerate(segments):
            i = (head + k) % self.size
            flags = (2 if seg.write else 0) | (1 if k + 1 < n else 0)
            self.write_desc(i, seg.gpa, seg.length, flags, (i + 1) % self.size)
        self.next_desc = (head + n) % self.size
        self.publish(head)
        return head

    def publish(self, head: int, count: int = 1) -> None:
        """Put *head* in the avail ring and move avail.idx by *count*."""
        fe = self.fe
        fe.write(self.avail + 4 + 2 * (self.avail_idx % self.size), _U16.pack(head))
        self.avail_idx = (self.avail_idx + count) & 0xFFFF
        fe.write(self.avail + 2, _U16.pack(self.avail_idx))

    def notify(self) -> None:
        os.eventfd_write(self.kick, 1)

    def used_idx(self) -> int:
        return int(_U16.unpack(self.fe.read(self.used + 2, 2))[0])

    def wait_used(self, count: int = 1) -> list[tuple[int, int]]:
        """Wait until *count* more used elements appear; return ``(head, len)`` pairs."""
        out: list[tuple[int, int]] = []
        poller = select.poll()
        poller.register(self.callfd, select.POLLIN)
        while len(out) < count:
            idx = self.used_idx()
            while self.last_used != idx and len(out) < count:
                slot = self.used + 4 + 8 * (self.last_used % self.size)
                head, length = _USED.unpack(self.fe.read(slot, 8))
                out.append((head, length))
                self.last_used = (self.last_used + 1) & 0xFFFF
            if len(out) < count:
                if not poller.poll(int(self.fe.timeout * 1000)):
                    raise TimeoutError(f"queue {self.index}: no completion")
                try:
                    os.eventfd_read(self.callfd)
                except BlockingIOError:
                    pass
        return out
