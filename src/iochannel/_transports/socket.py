"""SocketChannel: stream and datagram sockets — inet, unix, vsock or an open fd.

Features: every socket has ``SHUTDOWN``; AF_UNIX sockets add ``FD_PASS``;
connected stream sockets add ``READ_MSG_PEEK``; listeners have ``LISTEN``;
TCP connections made by :meth:`SocketChannel.connect` add ``WRITE_ZERO_COPY``
where the kernel accepts ``SO_ZEROCOPY``.

File descriptor passing uses one ``SCM_RIGHTS`` message: at most
:data:`MAX_FDS` fds per write, received fds are close-on-exec.  Fds that arrive
on a read that did not ask for them are closed by the kernel.

A listener created by :meth:`listen` on a filesystem path unlinks that path when
closed — only if it created it, and only if the path still names the socket it
bound (a path reused by someone else is left alone).

Closing a socket never shuts it down: a socket whose fd was passed to another
process stays connected there.  To interrupt a thread blocked in a read on a
*blocking* socket, call :meth:`Channel.shutdown` first.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import secrets
import select
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Sequence
from typing import final

from .._core.channel import Buffer, Channel, close_fds
from .._core.flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from .._core.task import Task
from .._core.watch import FdSpec, forget_fd
from .address import (
    Address,
    AddressError,
    FdAddress,
    InetAddress,
    UnixAddress,
    VsockAddress,
    format_address,
    from_sockaddr,
    resolve,
)

__all__ = ["MAX_FDS", "SocketChannel"]

log = logging.getLogger(__name__)

#: Most fds one write can carry (QEMU's limit, which peers size their buffers for).
MAX_FDS = 16
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
# SCM_RIGHTS payloads of 0..MAX_FDS fds (the kernel never sends more than fit).
_FD_ARRAYS = [struct.Struct(f"{n}i") for n in range(MAX_FDS + 1)]
_IN = int(Condition.IN)
_OUT = int(Condition.OUT)
_IN_OUT = _IN | _OUT

# Linux values; the socket module does not export them on every version.
_SO_ZEROCOPY = 60
_MSG_ZEROCOPY = 0x4000000
_SO_EE_ORIGIN_ZEROCOPY = 5
_SO_EE_CODE_ZEROCOPY_COPIED = 1
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}
_EXTENDED_ERR = struct.Struct("=IBBBBII")

_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS
# socket's MSG_* are enum members; plain ints keep the hot paths free of enum arithmetic.
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_CTRUNC = int(socket.MSG_CTRUNC)
_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_MSG_PEEK = int(socket.MSG_PEEK)
_PEEK = int(ReadFlag.MSG_PEEK)
_PRESERVE = int(ReadFlag.FD_PRESERVE_BLOCKING)
_SHUT = {Shutdown.READ: socket.SHUT_RD, Shutdown.WRITE: socket.SHUT_WR}


def _family_name(sock: socket.socket) -> str:
    return {socket.AF_UNIX: "unix", socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(
        sock.family, "vsock" if sock.family == getattr(socket, "AF_VSOCK", -1) else "socket"
    )


@final
class SocketChannel(Channel):
    """A channel over a :class:`socket.socket` (see the module docstring)."""

    __slots__ = ("_fd", "_sock", "_specs", "_unlink", "_zc_copied", "_zc_queued", "_zc_sent")

    def __init__(self, sock: socket.socket, *, name: str = "") -> None:
        features = Feature.SHUTDOWN
        if sock.family == socket.AF_UNIX:
            features |= Feature.FD_PASS
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            features |= Feature.LISTEN
        elif sock.type == socket.SOCK_STREAM:
            features |= Feature.READ_MSG_PEEK
        super().__init__(features, name or f"{_family_name(sock)} socket")
        blocking = sock.getblocking()
        sock.setblocking(blocking)  # drops any timeout: waits are the channel's job
        self._blocking = blocking
        self._sock = sock
        self._fd = sock.fileno()
        fd = self._fd
        # Precomputed: readiness specs are asked for on every wait.
        self._specs = {n: ((fd, n),) for n in (_IN, _OUT, _IN | _OUT)}
        self._unlink: tuple[str, int, int] | None = None
        self._zc_queued = self._zc_sent = 0
        self._zc_copied = True

    # ---- construction ---------------------------------------------------

    @classmethod
    def from_fd(cls, fd: int, *, name: str = "") -> SocketChannel:
        """Wrap an open socket fd, taking ownership (the fd is left open on error)."""
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise OSError(exc.errno, f"fd {fd} is not usable: {exc.strerror}") from exc
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.ENOTSOCK, f"fd {fd} is not a socket")
        return cls(socket.socket(fileno=fd), name=name)

    @classmethod
    def pair(
        cls, family: int = socket.AF_UNIX, type: int = socket.SOCK_STREAM
    ) -> tuple[SocketChannel, SocketChannel]:
        """A connected pair (``socketpair``)."""
        a, b = socket.socketpair(family, type)
        return cls(a, name="socketpair[0]"), cls(b, name="socketpair[1]")

    @classmethod
    def connect(cls, addr: Address, *, name: str = "") -> SocketChannel:
        """Connect a stream socket to *addr*, trying every address a name resolves to."""
        if isinstance(addr, FdAddress):
            return cls.from_fd(addr.fd, name=name)
        if isinstance(addr, UnixAddress):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _connect(sock, addr.sockaddr(), addr)
            return cls(sock, name=name or f"unix:{addr.path}")
        if isinstance(addr, VsockAddress):
            sock = _vsock_socket()
            _connect(sock, (addr.cid, addr.port), addr)
            return cls(sock, name=name)
        last: OSError | None = None
        for cand in resolve(addr, passive=False):
            assert isinstance(cand, InetAddress)
            family = socket.AF_INET6 if cand.ipv6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                _connect(sock, (cand.host, int(cand.port)), addr)
            except OSError as exc:
                last = exc
                continue
            if addr.keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            ch = cls(sock, name=name or f"{cand.host}:{cand.port}")
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_ZEROCOPY, 1)
                ch._set_feature(Feature.WRITE_ZERO_COPY)
            except OSError:
                pass
            return ch
        assert last is not None
        raise last

    @classmethod
    def listen(cls, addr: Address, backlog: int = 1, *, name: str = "") -> SocketChannel:
        """Listen on *addr*.

        Inet: the first resolved address that binds wins, ports up to ``to``
        are tried in turn.  Unix: an empty path makes a fresh one in $TMPDIR; an
        existing *socket* at the path is replaced, any other file is an error.
        """
        if isinstance(addr, FdAddress):
            ch = cls.from_fd(addr.fd, name=name)
            ch._sock.listen(backlog)
            ch._set_feature(Feature.LISTEN)
            ch._set_feature(Feature.READ_MSG_PEEK, False)
            return ch
        if isinstance(addr, UnixAddress):
            return cls._listen_unix(addr, backlog, name)
        if isinstance(addr, VsockAddress):
            sock = _vsock_socket()
            try:
                sock.bind((addr.cid, addr.port))
                sock.listen(backlog)
            except OSError:
                sock.close()
                raise
            return cls(sock, name=name)
        return cls._listen_inet(addr, backlog, name)

    @classmethod
    def _listen_inet(cls, addr: InetAddress, backlog: int, name: str) -> SocketChannel:
        first = int(addr.port or 0) if (addr.port or "0").isdigit() else None
        last_err: OSError | None = None
        for cand in resolve(addr):
            assert isinstance(cand, InetAddress)
            family = socket.AF_INET6 if cand.ipv6 else socket.AF_INET
            start = int(cand.port) if first is None else first
            stop = addr.to if addr.to is not None and start else start
            for port in range(start, stop + 1):
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        v6only = bool(addr.ipv6) and not addr.ipv4
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                    if addr.keep_alive:  # accepted connections inherit it
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    sock.bind((cand.host, port))
                    sock.listen(backlog)
                except OSError as exc:
                    sock.close()
                    last_err = exc
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    break
                return cls(sock, name=name or f"listener {cand.host}:{sock.getsockname()[1]}")
        assert last_err is not None
        raise OSError(
            last_err.errno, f"Failed to listen on {addr.host}:{addr.port}: {last_err.strerror}"
        ) from last_err

    @classmethod
    def _listen_unix(cls, addr: UnixAddress, backlog: int, name: str) -> SocketChannel:
        if not addr.abstract and not addr.path:
            path = os.path.join(tempfile.gettempdir(), f"iochannel-socket-{secrets.token_hex(6)}")
            addr = UnixAddress(path)
        if not addr.abstract:
            try:
                if stat.S_ISSOCK(os.lstat(addr.path).st_mode):
                    os.unlink(addr.path)
                else:
                    raise FileExistsError(
                        errno.EEXIST, f"{addr.path} exists and is not a socket; not replacing it"
                    )
            except FileNotFoundError:
                pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(addr.sockaddr())
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        ch = cls(sock, name=name or f"listener unix:{addr.path}")
        if not addr.abstract:
            st = os.stat(addr.path)
            ch._unlink = (addr.path, st.st_dev, st.st_ino)
        return ch

    @classmethod
    def dgram(cls, local: Address | None, remote: Address | None) -> SocketChannel:
        """A datagram socket bound to *local* and connected to *remote* (inet or unix)."""
        ref = local or remote
        if isinstance(ref, UnixAddress):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                if isinstance(local, UnixAddress):
                    sock.bind(local.sockaddr())
                if isinstance(remote, UnixAddress):
                    sock.connect(remote.sockaddr())
            except OSError:
                sock.close()
                raise
            return cls(sock, name="unix datagram")
        if not isinstance(ref, InetAddress):
            raise AddressError("datagram sockets need inet or unix addresses")
        rem = resolve(remote, passive=False)[0] if isinstance(remote, InetAddress) else None
        loc = resolve(local)[0] if isinstance(local, InetAddress) else None
        pick = rem or loc
        assert isinstance(pick, InetAddress)
        family = socket.AF_INET6 if pick.ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if isinstance(loc, InetAddress):
                sock.bind((loc.host, int(loc.port or 0)))
            if isinstance(rem, InetAddress):
                sock.connect((rem.host, int(rem.port)))
        except OSError:
            sock.close()
            raise
        return cls(sock, name="udp socket")

    # Async forms run the blocking call (DNS included) in a worker thread.

    @classmethod
    def connect_async(
        cls,
        addr: Address,
        callback: Callable[[Task[SocketChannel]], None] | None = None,
    ) -> Task[SocketChannel]:
        """Connect in a thread; ``await`` the task or get *callback* on the loop."""
        return _in_thread(lambda: cls.connect(addr), callback)

    @classmethod
    def listen_async(
        cls,
        addr: Address,
        backlog: int = 1,
        callback: Callable[[Task[SocketChannel]], None] | None = None,
    ) -> Task[SocketChannel]:
        return _in_thread(lambda: cls.listen(addr, backlog), callback)

    @classmethod
    def dgram_async(
        cls,
        local: Address | None,
        remote: Address | None,
        callback: Callable[[Task[SocketChannel]], None] | None = None,
    ) -> Task[SocketChannel]:
        return _in_thread(lambda: cls.dgram(local, remote), callback)

    # ---- listening ------------------------------------------------------

    def accept(self) -> SocketChannel | None:
        """Accept one client, or ``None`` if a non-blocking listener has none."""
        self._check_open()
        self._require(Feature.LISTEN, "accepting connections (not a listener)")
        try:
            sock, _ = self._sock.accept()
        except BlockingIOError:
            return None
        sock.setblocking(True)
        return SocketChannel(sock, name=f"{self.name} client")

    async def aaccept(self) -> SocketChannel:
        """Wait for and accept one client on the running loop."""
        return await self._arun(self.accept, Condition.IN)

    # ---- introspection ---------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (owned by the channel)."""
        return self._sock

    def fileno(self) -> int:
        return self._fd

    @property
    def local_address(self) -> Address:
        return from_sockaddr(self._sock.family, self._sock.getsockname())

    @property
    def remote_address(self) -> Address:
        return from_sockaddr(self._sock.family, self._sock.getpeername())

    def peer_credentials(self) -> tuple[int, int, int]:
        """``(pid, uid, gid)`` of the peer of a unix socket (SO_PEERCRED)."""
        self._check_open()
        raw = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid

    def set_send_buffer(self, size: int) -> None:
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    # ---- hooks ------------------------------------------------------------

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        sock = self._sock
        rflags = _MSG_PEEK if flags and flags & _PEEK else 0
        try:
            if fds is None:
                if len(buffers) == 1:
                    return sock.recv_into(buffers[0], 0, rflags)
                return sock.recvmsg_into(buffers, 0, rflags)[0]
            n, ancdata, msg_flags, _ = sock.recvmsg_into(buffers, _FD_SPACE, rflags | _CLOEXEC)
        except BlockingIOError:
            return None
        received: tuple[int, ...] = ()
        for level, kind, data in ancdata:
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
                received += _FD_ARRAYS[len(data) >> 2].unpack_from(data)
        if msg_flags & _CTRUNC:
            log.warning("%s: peer sent more than %d fds; the rest were dropped", self.name, MAX_FDS)
        if not (flags and flags & _PRESERVE):
            try:
                for fd in received:
                    os.set_blocking(fd, True)
            except OSError:
                close_fds(received)
                raise
        fds += received
        return n

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        sock = self._sock
        try:
            if fds:
                if len(fds) > MAX_FDS:
                    raise ValueError(f"Only {MAX_FDS} FDs can be sent, got {len(fds)}")
                cmsg = ((_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds)),)
                return sock.sendmsg(buffers, cmsg, _NOSIGNAL)
            if flags:  # ZERO_COPY is the only write flag
                return self._send_zero_copy(buffers)
            if len(buffers) == 1:
                return sock.send(buffers[0], _NOSIGNAL)
            return sock.sendmsg(buffers, (), _NOSIGNAL)
        except BlockingIOError:
            return None

    def _send_zero_copy(self, buffers: Sequence[Buffer]) -> int:
        for attempt in (0, 1):
            try:
                n = self._sock.sendmsg(buffers, (), _NOSIGNAL | _MSG_ZEROCOPY)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or attempt:
                    if exc.errno == errno.ENOBUFS:
                        raise OSError(
                            exc.errno,
                            "Process can't lock enough memory for using MSG_ZEROCOPY",
                        ) from exc
                    raise
                self._drain_errqueue(block=False)
                continue
            self._zc_queued += 1
            return n
        raise AssertionError("unreachable")

    def _drain_errqueue(self, block: bool) -> None:
        while self._zc_sent < self._zc_queued:
            try:
                _, ancdata, _, _ = self._sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except BlockingIOError:
                if not block:
                    return
                _poll_err(self._fd)
                continue
            for level, kind, data in ancdata:
                if (level, kind) not in _RECVERR or len(data) < _EXTENDED_ERR.size:
                    raise OSError(errno.EPROTO, "unexpected message on the socket error queue")
                ee_errno, origin, _type, code, _pad, info, last = _EXTENDED_ERR.unpack_from(data)
                if origin != _SO_EE_ORIGIN_ZEROCOPY:
                    raise OSError(errno.EPROTO, f"unexpected socket error origin {origin}")
                if ee_errno:
                    raise OSError(ee_errno, os.strerror(ee_errno))
                if last < info:
                    raise OSError(errno.EPROTO, f"bad zero-copy range {info}..{last}")
                self._zc_sent += last - info + 1
                if code != _SO_EE_CODE_ZEROCOPY_COPIED:
                    self._zc_copied = False

    def _flush(self) -> int:
        self._drain_errqueue(block=True)
        copied = self._zc_copied and self._zc_queued > 0
        self._zc_queued = self._zc_sent = 0
        self._zc_copied = True
        return 1 if copied else 0

    def _wait_fds(self, cond: Condition) -> FdSpec:
        # Condition members hash like their int values: no enum arithmetic here.
        spec = self._specs.get(cond)
        return spec if spec is not None else self._specs.get(int(cond) & _IN_OUT, ())

    def _set_blocking(self, blocking: bool) -> None:
        self._sock.setblocking(blocking)

    def _set_delay(self, enabled: bool) -> None:
        if self._sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, not enabled)

    def _set_cork(self, enabled: bool) -> None:
        if self._sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, enabled)

    def _shutdown(self, how: Shutdown) -> None:
        try:
            self._sock.shutdown(_SHUT.get(how, socket.SHUT_RDWR))
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise

    def _close(self) -> None:
        forget_fd(self._fd)
        unlink, self._unlink = self._unlink, None
        try:
            self._sock.close()
        finally:
            if unlink is not None:
                path, dev, ino = unlink
                try:
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) == (dev, ino):
                        os.unlink(path)
                except OSError:
                    pass


def _connect(
    sock: socket.socket, target: tuple[str | int, int] | str | bytes, addr: Address
) -> None:
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise type(exc)(
            exc.errno, f"Failed to connect to {format_address(addr)}: {exc.strerror}"
        ) from exc


def _vsock_socket() -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError(errno.EAFNOSUPPORT, "vsock sockets are not supported on this system")
    return socket.socket(family, socket.SOCK_STREAM)


def _poll_err(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR is always reported: the error queue has entries
    poller.poll(None)


def _in_thread(
    make: Callable[[], SocketChannel],
    callback: Callable[[Task[SocketChannel]], None] | None,
) -> Task[SocketChannel]:
    task: Task[SocketChannel] = Task(None, callback)

    def worker(t: Task[SocketChannel]) -> None:
        ch = make()
        t.source = ch
        t.set_result(ch)

    task.run_in_thread(worker)
    return task
