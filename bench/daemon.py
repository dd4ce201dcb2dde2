"""The daemon: start-to-ready time and RSS at rest of the default, and 1,000 socket viewers.

* **Start to ready**: ``python -m iochannel`` with no arguments (the built-in
  default: a shell on a pty relayed to a hub with a unix socket, a telnet port,
  a time-stamped log and the web console, plus a QMP socket), from spawning the
  process to the first line of its banner, which it prints once everything
  listens.  Best and median of ``ROUNDS`` runs.  **RSS at rest**: the daemon
  process's VmRSS one second later (its shell and log writer are separate
  processes and not counted).
* **1,000 read-only socket viewers** of one console: the daemon relays a
  device socket to a hub whose member is a unix socket serving 1,024
  connections; this process connects ``VIEWERS`` plain sockets (one thread,
  one selector), then writes one 64-byte line every 20 ms into the device
  socket, each carrying its ``CLOCK_MONOTONIC`` send time, and every viewer
  timestamps every line it receives.  Reported: the daemon's RSS growth per
  viewer, and delivery latency p50/p99/max over all lines and viewers (an
  upper bound: it includes the time the single client thread takes to get
  round to each socket).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 5
VIEWERS = 1000
LINES = 100
INTERVAL = 0.02


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_to_ready() -> None:
    times, rest = [], []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "TMPDIR": tmp, "SHELL": "/bin/sh"}
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "iochannel"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            assert proc.stdout is not None
            proc.stdout.readline()
            times.append(time.perf_counter() - t0)
            time.sleep(1)
            rest.append(rss(proc.pid))
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    print(
        f"default config start to ready      best {min(times) * 1000:7.1f} ms  "
        f"median {statistics.median(times) * 1000:7.1f} ms",
        flush=True,
    )
    print(
        f"default config RSS at rest         {statistics.median(rest) / 2**20:7.1f} MiB", flush=True
    )


def viewers() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dev, view, pid = f"{tmp}/dev.sock", f"{tmp}/view.sock", f"{tmp}/pid"
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "iochannel"),
                *("-chardev", f"socket,id=dev,path={dev},server=on,wait=off"),
                *("-chardev", f"socket,id=view,path={view},server=on,wait=off,connections=1024"),
                *("-chardev", "hub,id=h,chardevs.0=view"),
                *("--relay", "chardev=dev,peer=h", "--pidfile", pid),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not os.path.exists(pid):
                time.sleep(0.01)
            measure_viewers(proc.pid, dev, view)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def measure_viewers(pid: int, dev: str, view: str) -> None:
    source = socket.socket(socket.AF_UNIX)
    source.connect(dev)
    time.sleep(0.2)
    before = rss(pid)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(VIEWERS):
        s = socket.socket(socket.AF_UNIX)
        s.connect(view)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
        socks.append(s)
    time.sleep(1)
    connected = rss(pid)
    latencies: list[float] = []
    sent = 0
    next_send = time.monotonic()
    deadline = next_send + LINES * INTERVAL + 5
    while len(latencies) < LINES * VIEWERS and time.monotonic() < deadline:
        now = time.monotonic()
        if sent < LINES and now >= next_send:
            source.sendall(f"{time.monotonic():.9f}".encode().ljust(63) + b"\n")
            sent += 1
            next_send += INTERVAL
        for key, _ in sel.select(max(0.0, next_send - time.monotonic()) if sent < LINES else 0.1):
            buf = key.data
            buf += key.fileobj.recv(65536)  # type: ignore[union-attr]
            stamp = time.monotonic()
            while (end := buf.find(b"\n")) >= 0:
                latencies.append(stamp - float(buf[:end]))
                del buf[: end + 1]
    after = rss(pid)
    for s in socks:
        sel.unregister(s)
        s.close()
    source.close()
    latencies.sort()
    lost = LINES * VIEWERS - len(latencies)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        f"{VIEWERS} socket viewers: memory per viewer "
        f"{(connected - before) / VIEWERS / 1024:6.1f} KiB idle, "
        f"{(after - before) / VIEWERS / 1024:6.1f} KiB after the run",
        flush=True,
    )
    print(
        f"{VIEWERS} socket viewers: latency p50 {pct(0.5):6.2f} ms  p99 {pct(0.99):6.2f} ms  "
        f"max {latencies[-1] * 1000:6.2f} ms  lines lost {lost}",
        flush=True,
    )


if __name__ == "__main__":
    start_to_ready()
    viewers()
