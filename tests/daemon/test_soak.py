"""Soak: 200 clients come and go against a hub while bulk output flows (loopback only).

The daemon runs as its own process so its fds and memory can be measured
alone.  A "VM" writes a known stream into the device socket, relayed to a hub
whose viewer socket serves 256 connections; 200 clients connect, read a
little and disconnect in a loop, while three clients stay for the whole run
and must receive every byte, in order.  Afterwards the daemon holds no more
fds than before the clients came, and its memory grew by less than a bound.

The run lasts ``IOCHANNEL_SOAK_SECONDS`` (default 5 for ``make test``; the
full soak is ``IOCHANNEL_SOAK_SECONDS=60``).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from .test_process import daemon, wait_for

SECONDS = float(os.environ.get("IOCHANNEL_SOAK_SECONDS", "5"))
CHURNERS = 200
STAYERS = 3
#: RSS growth allowed over the run (the daemon's buffers are bounded; this is allocator slack).
RSS_BOUND = 32 << 20
BLOCK = os.urandom(1 << 20)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def source(path: str, stop: asyncio.Event) -> int:
    _, writer = await asyncio.open_unix_connection(path)
    sent = 0
    while not stop.is_set():
        piece = 16384
        start = sent % len(BLOCK)
        chunk = (BLOCK[start:] + BLOCK)[:piece]
        writer.write(chunk)
        await writer.drain()
        sent += piece
    writer.close()
    await writer.wait_closed()
    return sent


async def stayer(path: str, total: asyncio.Future[int]) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    got = idle = 0
    try:
        while not (total.done() and got >= total.result()):
            try:
                data = await asyncio.wait_for(reader.read(65536), 1)
            except TimeoutError:
                idle += 1
                assert idle < 30, f"output stalled after {got} bytes"
                continue
            idle = 0
            assert data, "a client that stayed was disconnected"
            start = got % len(BLOCK)
            expected = (BLOCK[start:] + BLOCK)[: len(data)]
            assert data == expected, f"corrupted or lost bytes at offset {got}"
            got += len(data)
    finally:
        writer.close()
        await writer.wait_closed()
    return got


async def churner(path: str, stop: asyncio.Event, rng: random.Random) -> int:
    rounds = 0
    while not stop.is_set():
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            for _ in range(rng.randint(0, 4)):
                try:
                    await asyncio.wait_for(reader.read(65536), 0.5)
                except TimeoutError:
                    break  # nothing flowing (the source has stopped)
        finally:
            writer.close()
            await writer.wait_closed()
        rounds += 1
        await asyncio.sleep(rng.random() * 0.01)
    return rounds


@pytest.mark.timeout(SECONDS + 120)
def test_soak_many_clients_with_bulk_output(tmp_path: Path) -> None:
    dev, view, pidfile = tmp_path / "dev.sock", tmp_path / "view.sock", tmp_path / "pid"
    argv = [
        *("-chardev", f"socket,id=dev,path={dev},server=on,wait=off"),
        *("-chardev", f"socket,id=view,path={view},server=on,wait=off,connections=256"),
        *("-chardev", "hub,id=h,chardevs.0=view"),
        *("--relay", "chardev=dev,peer=h"),
        *("--pidfile", str(pidfile)),
    ]

    async def main(pid: int) -> None:
        stop = asyncio.Event()
        total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stayers = [asyncio.ensure_future(stayer(str(view), total)) for _ in range(STAYERS)]
        await asyncio.sleep(0.3)  # the stayers are in before the first byte
        fds_before, rss_before = fds(pid), rss(pid)
        rng = random.Random(1)
        churn = [asyncio.ensure_future(churner(str(view), stop, rng)) for _ in range(CHURNERS)]
        feeding = asyncio.ensure_future(source(str(dev), stop))
        await asyncio.sleep(SECONDS)
        rss_during = rss(pid)
        stop.set()
        sent = await feeding
        rounds = sum(await asyncio.gather(*churn))
        total.set_result(sent)
        received = await asyncio.gather(*stayers)
        assert received == [sent] * STAYERS
        assert rounds >= CHURNERS and sent > 0
        wait_for(lambda: fds(pid) <= fds_before, f"the daemon's fds to return to {fds_before}")
        assert rss(pid) - rss_before < RSS_BOUND
        print(
            f"soak {SECONDS:.0f} s: {sent >> 20} MiB to each of {STAYERS} clients, "
            f"{rounds} connections by {CHURNERS} clients, fds {fds_before} -> {fds(pid)}, "
            f"RSS {rss_before >> 20} -> {rss_during >> 20} -> {rss(pid) >> 20} MiB"
        )

    with daemon(*argv) as proc:
        wait_for(pidfile.exists, "the daemon")
        # The device socket needs its client before output flows; the stayers need theirs.
        asyncio.run(main(proc.pid))
        proc.terminate()
        assert proc.wait(10) == 0
