"""NBD servers for the client tests: ``qemu-nbd`` on a qcow2 image, qemu-storage-daemon, and
a server written by hand that misbehaves on cue."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_tool, wait_for_file


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``qemu-img``; a failure fails the test with its output."""
    proc = subprocess.run(
        [require_tool("qemu-img"), *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout
    return proc


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    """Run ``qemu-io -c CMD …`` on *image* (a write there is what the client must read)."""
    argv = [require_tool("qemu-io"), "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    proc = subprocess.run([*argv, str(image)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def make_qcow2(path: Path, size: str, *writes: str) -> Path:
    """A qcow2 image of *size* with qemu-io *writes* (``write -P 0x5a 64k 64k``) done."""
    qemu_img("create", "-q", "-f", "qcow2", str(path), size)
    if writes:
        qemu_io(path, *writes)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class QemuNbd:
    """``qemu-nbd`` serving *image* as *export* on a unix socket (or 127.0.0.1:*port*)."""

    image: Path
    sock: Path
    export: str = "disk"
    fmt: str = "qcow2"
    port: int | None = None
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        """The iochannel address text of the server."""
        return f"127.0.0.1:{self.port}" if self.port else f"unix:{self.sock}"

    @property
    def uri(self) -> str:
        if self.port:
            return f"nbd://127.0.0.1:{self.port}/{self.export}"
        return f"nbd+unix:///{self.export}?socket={self.sock}"

    def start(self) -> QemuNbd:
        listen = ["-b", "127.0.0.1", "-p", str(self.port)] if self.port else ["-k", str(self.sock)]
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        pidfile = self.sock.with_suffix(".pid")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        argv = [require_tool("qemu-nbd"), "-f", self.fmt, "-x", self.export, "-t", "-e", "8"]
        argv += [*listen, "--pid-file", str(pidfile), *self.extra, str(self.image)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        # The pid file is written once the server listens.
        wait_for_file(pidfile, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


@contextlib.contextmanager
def qemu_nbd(image: Path, sock: Path, **options: object) -> Iterator[QemuNbd]:
    server = QemuNbd(image, sock, **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def qsd_nbd(image: Path, sock: Path, export: str = "disk", fmt: str = "raw") -> Iterator[str]:
    """qemu-storage-daemon exporting *image* writable over NBD; yields the socket address."""
    qsd = require_tool("qemu-storage-daemon")
    pidfile = sock.with_suffix(".pid")
    node = f"driver={fmt},node-name=n0,file.driver=file,file.filename={image}"
    argv = [
        qsd,
        "--blockdev", node,
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", f"type=nbd,id=e0,node-name=n0,name={export},writable=on",
        "--pidfile", str(pidfile),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        wait_for_file(pidfile, proc)
        yield f"unix:{sock}"
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


# ---- a server written by hand, to misbehave --------------------------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
SIMPLE = 0x67446698
STRUCTURED = 0x668E33EF
OPT_GO, OPT_STRUCTURED, OPT_SET_META = 7, 8, 10
REP_ACK, REP_INFO, REP_META, REP_ERR_UNSUP = 1, 3, 4, (1 << 31) | 1
SIZE = 1 << 20
#: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, DF.
EXPORT_FLAGS = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80

Request = tuple[int, int, int, int, int]  # flags, type, cookie, offset, length
Behaviour = Callable[[socket.socket, Request], bool]  # False: stop serving


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def opt_reply(conn: socket.socket, opt: int, kind: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, kind, len(data)) + data)


def negotiate(conn: socket.socket) -> None:
    """A correct fixed-newstyle handshake ending in GO (structured replies if asked)."""
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    recv_exact(conn, 4)
    while True:
        _, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        recv_exact(conn, length)
        if opt == OPT_STRUCTURED:
            opt_reply(conn, opt, REP_ACK)
        elif opt == OPT_SET_META:
            name = b"base:allocation"
            opt_reply(conn, opt, REP_META, struct.pack(">I", 1) + name)
            opt_reply(conn, opt, REP_ACK)
        elif opt == OPT_GO:
            opt_reply(conn, opt, REP_INFO, struct.pack(">HQH", 0, SIZE, EXPORT_FLAGS))
            opt_reply(conn, opt, REP_ACK)
            return
        else:
            opt_reply(conn, opt, REP_ERR_UNSUP)


class BadServer:
    """Accepts one client at a time on a unix socket and plays *script* (in a thread)."""

    def __init__(self, path: Path, script: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.script = script
        self.thread = threading.Thread(target=self._run, name="bad-nbd-server")
        self.thread.start()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self.script(conn)
                except (OSError, EOFError):
                    pass

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


def transmission(behaviour: Behaviour) -> Callable[[socket.socket], None]:
    """Negotiate, then hand each request to *behaviour* until it returns False."""

    def script(conn: socket.socket) -> None:
        negotiate(conn)
        while True:
            _magic, flags, kind, cookie, offset, length = struct.unpack(
                ">IHHQQI", recv_exact(conn, 28)
            )
            if kind == 1:  # WRITE
                recv_exact(conn, length)
            if kind == 2 or not behaviour(conn, (flags, kind, cookie, offset, length)):
                return

    return script
