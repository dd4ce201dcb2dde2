"""The daemon as a process: signals, pid file, reload, daemonizing, the built-in default."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iochannel.daemon.cli import program


def wait_for(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def daemon(*argv: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "iochannel", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
        print(out, err, sep="\n")


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 10.0) -> None:
    """Read *proc*'s stderr until it contains *text* (what is read is not seen again)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()  # raw reads: the text wrapper's buffer would hide lines from select
    deadline = time.monotonic() + timeout
    seen = b""
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {text!r} on stderr; got {seen.decode()!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"stderr ended before {text!r}; got {seen.decode()!r}")
        seen += chunk


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    return s


def read_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data!r}")
        data += chunk
    return data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    pidfile, child = tmp_path / "pid", tmp_path / "child"
    view, qmp = tmp_path / "view.sock", tmp_path / "qmp.sock"
    argv = [
        *("-chardev", f"command,id=sh,cmd=sh -c 'echo $$ >{child}; exec sleep 1000'"),
        *("-chardev", f"socket,id=view,path={view},server=on,wait=off,connections=4"),
        *("-chardev", "hub,id=h,chardevs.0=view"),
        *("--relay", "chardev=sh,peer=h"),
        *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
        *("--pidfile", str(pidfile)),
    ]
    with daemon(*argv) as proc:
        wait_for(pidfile.exists, "the pid file")
        assert int(pidfile.read_text()) == proc.pid
        wait_for(lambda: child.exists() and child.read_text().strip(), "the command's pid")
        program = int(child.read_text())
        client = connect(view)
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        assert client.recv(100) == b""  # the viewer was disconnected
        client.close()
        assert not view.exists() and not qmp.exists() and not pidfile.exists()
        assert not alive(program)


def test_sighup_reloads_and_keeps_unchanged_chardevs_connected(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    pidfile = tmp_path / "pid"

    def write_config(second: str) -> None:
        config.write_text(
            f"""
pidfile = "{pidfile}"
chardev = [
  "socket,id=echo-view,path={tmp_path}/echo.sock,server=on,wait=off",
  "command,id=cat,pty=off,cmd=cat",
  "socket,id=second,path={tmp_path}/{second},server=on,wait=off",
]
relay = ["chardev=cat,peer=echo-view"]
"""
        )

    write_config("b.sock")
    with daemon("--config", str(config), "-chardev", "null,id=extra") as proc:
        wait_for(pidfile.exists, "the pid file")
        client = connect(tmp_path / "echo.sock")
        client.sendall(b"before\n")
        assert read_until(client, b"before\n")
        assert (tmp_path / "b.sock").exists()
        write_config("c.sock")
        proc.send_signal(signal.SIGHUP)
        # The new socket is built before the old one is taken down.
        wait_for(
            lambda: (tmp_path / "c.sock").exists() and not (tmp_path / "b.sock").exists(),
            "the changed chardev to replace the old one",
        )
        client.sendall(b"after\n")
        assert read_until(client, b"after\n")  # same connection, same program
        config.write_text("chardev = [")  # broken: the running configuration stays
        proc.send_signal(signal.SIGHUP)
        wait_for_line(proc, "reload failed, keeping the running configuration: --config")
        client.sendall(b"still\n")
        assert read_until(client, b"still\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        client.close()


def test_daemonize_returns_once_ready(tmp_path: Path) -> None:
    pidfile, sock = tmp_path / "pid", tmp_path / "s.sock"
    argv = [
        *("-chardev", f"socket,id=s,path={sock},server=on,wait=off"),
        *("--pidfile", str(pidfile), "--daemonize"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "iochannel", *argv], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert sock.exists() and pidfile.exists()  # ready before the parent returned
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), "the daemon to exit")
    assert not sock.exists() and not pidfile.exists()


def test_daemonize_reports_a_failed_start(tmp_path: Path) -> None:
    # A directory where the file should be: only opening it, after the fork, finds out.
    argv = ["-chardev", f"file,id=f,path={tmp_path}", "--daemonize"]
    done = subprocess.run(
        [sys.executable, "-m", "iochannel", *argv], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1
    assert f"-chardev file,id=f,path={tmp_path}: " in done.stderr
    assert "Is a directory" in done.stderr


def test_the_default_runs_a_shared_shell(tmp_path: Path) -> None:
    env = {"SHELL": "/bin/sh", "TMPDIR": str(tmp_path)}
    with daemon(env=env) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        last = "  web (ro):" if importlib.util.find_spec("iochannel.web") else "  qmp:"
        while not lines[-1].startswith(last):
            assert lines[-1], f"the daemon stopped printing after {lines}"
            lines.append(proc.stdout.readline())
        assert lines[0].startswith("iochannel: a shell on a pty")

        def line(prefix: str) -> str:
            return next(text for text in lines if text.startswith(prefix))

        if last == "  web (ro):":
            assert line("  web (rw): http://127.0.0.1:")
        log = Path(line("The log is ").split("The log is ", 1)[1].strip())
        unix = line("  unix:").split(f"{program()} console ", 1)[1].strip()
        client = connect(Path(unix))
        client.sendall(b"echo $((6 * 7))-marker\n")
        assert b"42-marker" in read_until(client, b"42-marker")
        wait_for(lambda: log.exists() and b"42-marker" in log.read_bytes(), "the log")
        assert log.read_text().startswith("[20")  # each line time-stamped
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        client.close()
        assert not Path(unix).exists()


def test_qmp_shell(tmp_path: Path) -> None:
    shell = Path(sys.executable).with_name("qmp-shell")
    if not shell.exists():
        pytest.skip("qmp-shell is not installed (it comes with the qemu.qmp package)")
    qmp, pidfile = tmp_path / "qmp.sock", tmp_path / "pid"
    argv = ["-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off", "--monitor", "qmp"]
    commands = (
        'chardev-add id=r1 backend={"type":"ringbuf","data":{"size":1024}}\n'
        "ringbuf-write device=r1 data=hi\n"
        "ringbuf-read device=r1 size=10\n"
        "chardev-remove id=zz\n"
    )
    with daemon(*argv, "--pidfile", str(pidfile)) as proc:
        wait_for(pidfile.exists, "the daemon")
        done = subprocess.run(
            [str(shell), str(qmp)], input=commands, capture_output=True, text=True, timeout=30
        )
        proc.terminate()
        assert proc.wait(10) == 0
    assert '{"return": "hi"}' in done.stdout
    assert '{"error": {"class": "GenericError", "desc": "Chardev \'zz\' not found"}}' in done.stdout


def test_sigterm_restores_the_terminal(tmp_path: Path) -> None:
    import termios

    pidfile = tmp_path / "pid"
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "iochannel"),
                *("-chardev", "stdio,id=term", "-chardev", "null,id=n"),
                *("--relay", "chardev=term,peer=n", "--pidfile", str(pidfile)),
            ],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(pidfile.exists, "the daemon")
            assert termios.tcgetattr(slave) != before  # raw mode while it runs
            proc.terminate()
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
