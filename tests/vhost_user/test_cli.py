"""qemu-storage-daemon compatible command line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from iochannel.vhost_user.cli import UsageError, main, parse_args, parse_keyval
from iochannel.vhost_user.frontend import Frontend
from iochannel.vhost_user.protocol import Request
from tests.conftest import iochannel_process, wait_for_file


def test_keyval() -> None:
    assert parse_keyval("a=b,c.d=e,c.f=g", "--x") == {"a": "b", "c": {"d": "e", "f": "g"}}
    assert parse_keyval("filename=a,,b,,,x=", "--x") == {"filename": "a,b,", "x": ""}
    # JSON keeps its types, checked as QMP checks them.
    assert parse_keyval('{"driver": "file", "read-only": true}', "--x") == {
        "driver": "file",
        "read-only": True,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "expected 'key=value'"),
        ("a=1,a=2", "'a' given twice"),
        ("a=1,a.b=2", "conflicts"),
        ("=1", "invalid parameter name"),
        ("[1]", "expected 'key=value'"),
        ("{", "invalid JSON"),
    ],
)
def test_keyval_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_keyval(text, "--blockdev")


BLOCKDEVS = [
    "--blockdev",
    "driver=file,node-name=file0,filename=disk.img",
    "--blockdev",
    "driver=raw,node-name=disk0,file=file0",
]
EXPORT = "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=vub.sock"


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The images the command lines below name exist (parsing checks them as start-up does)."""
    monkeypatch.chdir(tmp_path)
    for name in ("disk.img", "x.img"):
        (tmp_path / name).write_bytes(bytes(4096))


@pytest.mark.usefixtures("images")
def test_parse_qsd_command_line() -> None:
    export = EXPORT + ",writable=on,num-queues=4,logical-block-size=4096,iothread=io0"
    items, pidfile = parse_args(["--object", "iothread,id=io0", *BLOCKDEVS, "--export", export])
    assert [option for option, _ in items] == ["--object", "--blockdev", "--blockdev", "--export"]
    assert pidfile is None
    # Nested file node, implied keys and the --opt=value spelling.
    items, _ = parse_args(
        [
            "--blockdev=raw,node-name=d,file.driver=file,file.filename=x.img",
            f"--export={EXPORT.replace('disk0', 'd')}",
        ]
    )
    assert len(items) == 2


def test_a_missing_image_is_reported_before_start(tmp_path: Path) -> None:
    blockdev = f"driver=file,node-name=file0,filename={tmp_path}/none.img"
    with pytest.raises(UsageError, match=r"Could not open .*none\.img': No such file"):
        parse_args(["--blockdev", blockdev, "--export", EXPORT.replace("disk0", "file0")])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nbd-server", "x"], "--nbd-server: expected 'key=value'"),
        ([*BLOCKDEVS], "at least one export"),
        ([*BLOCKDEVS, "--export", EXPORT + ",num-queues=x"], "'num-queues' expects integer"),
        ([*BLOCKDEVS, "--export", EXPORT + ",writable=maybe"], "'writable' expects 'on' or 'off'"),
        ([*BLOCKDEVS, "--export", EXPORT + ",bogus=1"], "Parameter 'bogus' is unexpected"),
        ([*BLOCKDEVS, "--export", EXPORT.replace("disk0", "nope")], "node-name='nope'"),
        ([*BLOCKDEVS, "--export", "type=nbd,id=e,node-name=disk0"], "NBD server not running"),
        ([*BLOCKDEVS, "--export", EXPORT.replace("addr.type=unix", "addr.type=inet")], "'unix'"),
        ([*BLOCKDEVS, "--export", EXPORT + ",iothread=io0"], 'iothread "io0" not found'),
        (["--object", "secret,id=s", "--export", EXPORT], "Invalid object type 'secret'"),
        (["--blockdev", "driver=qcow2,node-name=a,file=b"], "Driver 'qcow2'"),
        (["--blockdev", "driver=raw,node-name=a,file=b"], "node-name='b'"),
        (["--blockdev", "driver=file,node-name=a"], "'filename' is missing"),
        (["--export"], "--export: missing argument"),
        (["--exprot", "x"], "--exprot: unknown option; did you mean '--export'?"),
    ],
)
@pytest.mark.usefixtures("images")
def test_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(args)


def test_main_reports_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--bogus"]) == 1
    assert "--bogus: unknown option" in capsys.readouterr().err
    missing = str(tmp_path / "missing.img")
    blockdev = f"driver=file,node-name=f,filename={missing}"
    export = EXPORT.replace("disk0", "f").replace("vub.sock", str(tmp_path / "s"))
    assert main(["--blockdev", blockdev, "--export", export]) == 1
    # As qemu-storage-daemon: the option as typed, then what went wrong.
    assert f"--blockdev {blockdev}: Could not open '{missing}'" in capsys.readouterr().err


def _export(
    tmp_path: Path, export: str, pass_fds: tuple[int, ...] = ()
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The export tool serving a 1 MiB image with *export*, ready."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    return iochannel_process(
        tmp_path / "pid",
        *("--blockdev", f"driver=file,node-name=file0,filename={image}"),
        *("--blockdev", "driver=raw,node-name=disk0,file=file0"),
        *("--export", export),
        module="iochannel.vhost_user.cli",
        pass_fds=pass_fds,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    sock = tmp_path / "vub.sock"
    with _export(tmp_path, EXPORT.replace("vub.sock", str(sock)) + ",num-queues=2") as proc:
        wait_for_file(sock, proc)
        with Frontend(str(sock)) as fe:
            fe.negotiate()
            assert fe.call_u64(Request.GET_QUEUE_NUM) == 2
            proc.send_signal(sig)
            assert fe.disconnected()
        assert proc.wait(30) == 0
    assert not sock.exists()
    assert not (tmp_path / "pid").exists()


def test_listening_fd(tmp_path: Path) -> None:
    path = str(tmp_path / "fd.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        fd = listener.fileno()
        export = EXPORT.replace("addr.type=unix,addr.path=vub.sock", f"addr.type=fd,addr.str={fd}")
        with _export(tmp_path, export, pass_fds=(fd,)):
            listener.close()  # the export tool serves its own copy
            with Frontend(path) as fe:
                assert fe.call_u64(Request.GET_FEATURES) != 0
    os.unlink(path)
