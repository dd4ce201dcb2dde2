"""1,000 read-only WebSocket viewers of one web console: memory and latency.

The console runs in a child process (this script with ``--serve``): a hub
whose frontend writes one 64-byte line every ``--interval`` (20 ms), each carrying its
``CLOCK_MONOTONIC`` send time, and a :class:`~iochannel.web.WebConsole` on it.
This process opens ``--viewers`` WebSocket connections with the read-only
token (plain sockets and the ``websockets`` sans-I/O protocol, one thread,
one selector), then every viewer timestamps every line it receives.

Reported:

* server memory per viewer: the child's RSS with all viewers connected
  (idle, then after the run) minus its RSS before any connected, divided by
  the number of viewers;
* delivery latency p50/p99/max over all lines and viewers, from the console's
  write to the viewer's receipt — this includes the time the single client
  thread takes to get round to each socket, so it is an upper bound;
* lines lost (none expected: nothing is slow enough to hit the drop policy).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import selectors
import socket
import subprocess
import sys
import time

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from iochannel.chardev import Frontend, HubChardev
from iochannel.web import WebConsole

LINE = 64
RO_TOKEN = "bench-ro"


# ---- the console (child process) --------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _serve() -> None:
    hub = HubChardev("bench")
    hub.open()
    guest = Frontend(hub)
    guest.set_handlers(lambda: 0, lambda _data: None, lambda _event: None)
    console = WebConsole(hub, ro_token=RO_TOKEN)
    await console.start()
    loop = asyncio.get_running_loop()
    print(console.address.port, flush=True)
    while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if command[0] == "stats":
            times = os.times()
            print(_rss_kib(), len(console.viewers), times.user + times.system, flush=True)
        elif command[0] == "emit":
            interval = float(command[2])
            for seq in range(int(command[1])):
                line = b"%d %d" % (seq, time.monotonic_ns())
                guest.write(line.ljust(LINE - 2) + b"\r\n")
                await asyncio.sleep(interval)
            print("done", flush=True)
    console.close()
    guest.deinit()
    hub.close()


# ---- the viewers (this process) ------------------------------------------------------------


class Viewer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?token={RO_TOKEN} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("console closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101 "):
            raise ConnectionError(f"handshake refused: {head[:80]!r}")
        self.sock.setblocking(False)
        self.proto = Protocol(Side.CLIENT)
        self.pending = bytearray(head.partition(b"\r\n\r\n")[2])
        self.text = bytearray()
        self.lines = 0

    def receive(self, latencies: list[int]) -> None:
        data = self.sock.recv(262144)
        now = time.monotonic_ns()
        self.proto.receive_data(bytes(self.pending) + data)
        self.pending.clear()
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                self.text += event.data
        *lines, rest = self.text.split(b"\r\n")
        self.text = bytearray(rest)
        for line in lines:
            latencies.append(now - int(line.split()[1]))
            self.lines += 1


def _percentile(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between lines")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout

    def ask(command: str) -> list[str]:
        stdin.write(command + "\n")
        stdin.flush()
        return stdout.readline().split()

    try:
        port = int(stdout.readline())
        rss0 = int(ask("stats")[0])
        start = time.monotonic()
        viewers = [Viewer(port) for _ in range(args.viewers)]
        connect_s = time.monotonic() - start
        while int(ask("stats")[1]) < args.viewers:
            time.sleep(0.05)
        rss1, _, cpu0 = ask("stats")
        selector = selectors.DefaultSelector()
        for v in viewers:
            selector.register(v.sock, selectors.EVENT_READ, v)
        latencies: list[int] = []
        stdin.write(f"emit {args.lines} {args.interval}\n")
        stdin.flush()
        deadline = time.monotonic() + args.lines * args.interval * 3 + 30
        while sum(v.lines for v in viewers) < args.lines * args.viewers:
            if time.monotonic() > deadline:
                break
            for key, _mask in selector.select(timeout=0.1):
                key.data.receive(latencies)
        assert stdout.readline().strip() == "done"
        rss2, _, cpu1 = ask("stats")
        for v in viewers:
            v.sock.close()
    finally:
        stdin.close()
        server.wait(timeout=30)
    n = args.viewers
    lost = args.lines * n - len(latencies)
    print(f"viewers: {n} read-only WebSocket viewers, connected in {connect_s:.2f} s")
    print(f"server RSS: {rss0} KiB alone, {rss1} KiB with viewers, {rss2} KiB after the run")
    print(
        f"memory per viewer: {(int(rss1) - rss0) / n:.1f} KiB idle, "
        f"{(int(rss2) - rss0) / n:.1f} KiB after the run"
    )
    print(
        f"delivery latency over {len(latencies)} deliveries ({args.lines} lines x {n} viewers, "
        f"one line every {args.interval * 1000:.0f} ms): p50 {_percentile(latencies, 0.5):.2f} ms, "
        f"p99 {_percentile(latencies, 0.99):.2f} ms, max {max(latencies) / 1e6:.2f} ms"
    )
    busy = float(cpu1) - float(cpu0)
    print(f"server CPU during the run: {busy:.2f} s; lines lost: {lost}")


if __name__ == "__main__":
    main()
