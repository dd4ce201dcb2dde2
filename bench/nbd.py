"""NBD export throughput: our daemon against qemu-storage-daemon, copied with nbdcopy.

Both daemons export a copy of the same 1 GiB raw image (512 MiB of data in
64 MiB runs, the rest holes) over a unix socket with the same command line.
``nbdcopy`` (libnbd) copies the export to ``null:`` (read) and a 1 GiB file of
data into the export (write), with one connection (the goal) and with four
(multi-conn, for information); then both daemons again with TLS (x509).
Figures are MB/s of wall time, best of ``ROUNDS`` runs, alternating the two
daemons so load changes hit both alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import report  # type: ignore[import-not-found]

from iochannel.crypto.certs import make_credentials_dir

ROUNDS = 5
SIZE = 1 << 30
RUN = 64 << 20
GOAL = 0.8


def make_image(path: Path, sparse: bool) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for start in range(0, SIZE, RUN * (2 if sparse else 1)):
            f.seek(start)
            for _ in range(RUN >> 20):
                f.write(chunk)


@contextlib.contextmanager
def daemon(kind: str, d: Path, image: Path, tls: Path | None) -> Iterator[str]:
    sock = d / f"{kind}.sock"
    binary = ["qemu-storage-daemon"] if kind == "qsd" else [sys.executable, "-m", "iochannel"]
    objects = [] if tls is None else ["--object", f"tls-creds-x509,id=t0,endpoint=server,dir={tls}"]
    pidfile = d / f"{kind}.pid"
    argv = [
        *binary,
        *objects,
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--nbd-server", f"addr.type=unix,addr.path={sock}" + (",tls-creds=t0" if tls else ""),
        "--export", "type=nbd,id=e0,node-name=f0,name=disk,writable=on",
        "--pidfile", str(pidfile),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start")
            time.sleep(0.05)
        if tls is None:
            yield f"nbd+unix:///disk?socket={sock}"
        else:
            yield f"nbds+unix:///disk?socket={sock}&tls-certificates={tls}"
    finally:
        proc.terminate()
        proc.wait(30)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


def timed(*argv: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def compare(name: str, ours: Callable[[], float], theirs: Callable[[], float], nbytes: int,
            goal: float | None) -> None:  # fmt: skip
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(ours())
        b.append(theirs())
    report(name, nbytes / min(a) / 1e6, nbytes / min(b) / 1e6, "MB/s", goal, "qsd")


def main() -> int:
    if not (shutil.which("nbdcopy") and shutil.which("qemu-storage-daemon")):
        print("SKIP: nbdcopy (libnbd-bin) and qemu-storage-daemon are needed")
        return 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        d = Path(tmp)
        images = {k: d / f"{k}.img" for k in ("ours", "qsd")}
        for image in images.values():
            make_image(image, sparse=True)
        source = d / "source.img"
        make_image(source, sparse=False)
        pki = d / "pki"
        make_credentials_dir(pki, hostnames=["localhost"])
        for tls in (None, pki):
            label = " TLS" if tls else ""
            with (
                daemon("ours", d, images["ours"], tls) as ours,
                daemon("qsd", d, images["qsd"], tls) as qsd,
            ):
                for conns, goal in ((1, GOAL if tls is None else None), (4, None)):
                    c = f"--connections={conns}"
                    compare(
                        f"nbd read{label} {conns} conn",
                        lambda c=c, u=ours: timed("nbdcopy", c, u, "null:"),  # type: ignore[misc]
                        lambda c=c, u=qsd: timed("nbdcopy", c, u, "null:"),  # type: ignore[misc]
                        SIZE // 2,
                        goal,
                    )
                    compare(
                        f"nbd write{label} {conns} conn",
                        lambda c=c, u=ours: timed("nbdcopy", c, str(source), u),  # type: ignore[misc]
                        lambda c=c, u=qsd: timed("nbdcopy", c, str(source), u),  # type: ignore[misc]
                        SIZE,
                        goal,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
