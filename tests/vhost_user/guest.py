"""Builds and boots a tiny test guest: Debian's kernel plus a busybox initramfs.

The initramfs loads the virtio modules in dependency order, runs the shell
script given to :func:`build_initrd` as ``/test.sh`` with ``/dev/vda``
available, and powers off.  The guest prints to the serial console, which
:class:`Guest` reads line by line.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ..conftest import require_tool

MODULES = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
]
APPLETS = [
    *("sh", "mount", "insmod", "dd", "cat", "grep", "cmp", "sleep", "ls", "sync"),
    *("poweroff", "reboot", "echo", "head", "wc", "seq", "tr", "od", "test", "taskset"),
]

INIT = """#!/bin/sh
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in {modules}; do insmod /lib/modules/$m.ko; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
echo GUEST-START
sh /test.sh
echo GUEST-END
sync
poweroff -f
"""


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def find_kernel() -> tuple[Path, Path]:
    """Debian's kernel image and its module directory."""
    for image in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        version = image.removeprefix("/boot/vmlinuz-")
        moddir = Path("/lib/modules") / version / "kernel" / "drivers"
        if (moddir / "block" / "virtio_blk.ko").exists() and os.access(image, os.R_OK):
            return Path(image), moddir
    _missing("no readable /boot/vmlinuz-* with virtio_blk.ko (apt-get install linux-image-amd64)")
    raise AssertionError("unreachable")


def build_initrd(workdir: Path, script: str, extra: Sequence[Path] = ()) -> tuple[Path, Path]:
    """Return (kernel, initrd) for a guest running *script*."""
    kernel, moddir = find_kernel()
    busybox = Path(require_tool("busybox"))
    require_tool("cpio")
    root = workdir / "initrd"
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    for m in MODULES:
        sub = "block" if m == "virtio_blk" else "virtio"
        shutil.copy(moddir / sub / f"{m}.ko", root / "lib" / "modules" / f"{m}.ko")
    for path in extra:
        shutil.copy(path, root / "bin" / path.name)
    (root / "init").write_text(INIT.format(modules=" ".join(MODULES)))
    (root / "init").chmod(0o755)
    (root / "test.sh").write_text(script)
    files = subprocess.run(
        ["find", "."], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=root,
        input=files.encode(),
        check=True,
        capture_output=True,
    ).stdout
    initrd = workdir / "initrd.gz"
    initrd.write_bytes(gzip.compress(archive, compresslevel=1))
    return kernel, initrd


class Guest:
    """A QEMU process booting the test guest against a vhost-user-blk socket."""

    def __init__(
        self,
        kernel: Path,
        initrd: Path,
        socket: str,
        *,
        num_queues: int = 1,
        smp: int = 2,
        reconnect: int | None = None,
        reboot: bool = False,
        mem: str = "256M",
        mem_path: str | None = None,
    ) -> None:
        """Guest RAM is a sealed memfd, or a file in the directory *mem_path*."""
        qemu = require_tool("qemu-system-x86_64")
        ram = f"memory-backend-memfd,id=mem,size={mem},share=on"
        if mem_path is not None:
            ram = f"memory-backend-file,id=mem,size={mem},mem-path={mem_path},share=on"
        chardev = f"socket,id=char0,path={socket}"
        if reconnect is not None:
            chardev += f",reconnect={reconnect}"
        args = [
            qemu,
            "-machine", "q35,accel=tcg,memory-backend=mem",
            "-smp", str(smp),
            "-m", mem,
            "-object", ram,
            "-chardev", chardev,
            "-device", f"vhost-user-blk-pci,chardev=char0,num-queues={num_queues}",
            "-kernel", str(kernel),
            "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet",
            "-nographic", "-nodefaults", "-serial", "stdio",
        ]  # fmt: skip
        if not reboot:
            args.append("-no-reboot")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="qemu-console")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def expect(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """Wait for a console line matching *pattern*; fail on EOF or timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        del self.lines[: self.lines.index(line) + 1]
                        return m
                    if line == "<EOF>":
                        raise AssertionError(f"guest ended before {pattern!r}")
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}")
                self._cond.wait(left)

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class Backend:
    """An export of *image* on *socket*: ours (``iochannel``) or ``qsd``."""

    def __init__(
        self,
        kind: str,
        image: Path,
        socket: str,
        *,
        writable: bool = True,
        num_queues: int = 1,
        objects: Sequence[str] = (),
        export: str = "",
    ) -> None:
        """*objects* are ``--object`` values; *export* adds keys to the export."""
        if kind == "qsd":
            cmd = [require_tool("qemu-storage-daemon")]
        else:
            cmd = [os.environ.get("PYTHON", _python()), "-m", "iochannel.vhost_user.cli"]
        for obj in objects:
            cmd += ["--object", obj]
        cmd += [
            "--blockdev", f"driver=file,node-name=file0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk0,file=file0",
            "--export",
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
            f"addr.path={socket},writable={'on' if writable else 'off'},num-queues={num_queues}"
            + (f",{export}" if export else ""),
        ]  # fmt: skip
        if os.path.exists(socket):
            os.unlink(socket)
        self.log = image.parent / f"{kind}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{kind} did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM and wait; return the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _python() -> str:
    import sys

    return sys.executable
