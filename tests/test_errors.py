"""The error tree: one root, the mix-ins, the OS boundary and the fields errors carry."""

from __future__ import annotations

import builtins
import errno
import importlib
import json
import pkgutil
import re
import socket

import pytest

import iochannel
from iochannel import (
    ChannelBrokenError,
    ChannelBrokenPipeError,
    ChannelBusyError,
    ChannelClosedError,
    ChannelEOFError,
    ChannelError,
    ChannelProtocolError,
    ChannelResetError,
    ChannelTimeoutError,
    ConfigurationError,
    IncompleteReadError,
    LocalProtocolError,
    RemoteProtocolError,
    SocketChannel,
    UnsupportedFeatureError,
    WebsockChannel,
    WebsockError,
    errors,
)
from iochannel._parsers import keyval
from iochannel.chardev import ChardevBusyError, ChardevOptionError
from iochannel.chardev.events import LifecycleError
from iochannel.qmp import CommandSpec, JSONSplitter, QMPServerProtocol
from iochannel.qmp.protocol import QMPError

from .test_websock import QEMU_ACCEPT, frame, recv_head, request


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class a module of the package defines under a public name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(iochannel.__path__, "iochannel."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                not name.startswith("_")
                and isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("iochannel")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_of_the_package_is_a_channel_error() -> None:
    found = _public_exceptions()
    assert len(found) > 30, "the walk must reach the subpackages"
    strays = sorted(name for name, cls in found.items() if not issubclass(cls, ChannelError))
    assert not strays, f"not under ChannelError: {strays}"


_TREE_LINE = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)\s*(?P<text>.*)$")


def test_the_tree_drawn_in_the_module_docstring_is_true() -> None:
    """Each drawn edge is a real subclass relation, each "also X" a real base."""
    assert errors.__doc__ is not None
    parents: list[type[BaseException]] = [ChannelError]
    drawn = 0
    for line in errors.__doc__.splitlines():
        m = _TREE_LINE.match(line.strip("\n")[4:])
        if m is None:
            continue
        depth = len(m["indent"]) // 5
        cls = getattr(errors, m["name"])
        assert issubclass(cls, parents[depth]), f"{m['name']} is drawn under {parents[depth]}"
        also = re.match(r"also (\w+)", m["text"])
        if also:
            assert issubclass(cls, getattr(builtins, also[1])), f"{m['name']}: {m['text']}"
        del parents[depth + 1 :]
        parents.append(cls)
        drawn += 1
    assert drawn == len(errors.__all__) - 2  # all but the root and os_error


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (ChannelBrokenError, OSError),
        (ChannelBrokenPipeError, BrokenPipeError),
        (ChannelResetError, ConnectionResetError),
        (ChannelEOFError, EOFError),
        (IncompleteReadError, EOFError),
        (ChannelBusyError, RuntimeError),
        (ChannelTimeoutError, TimeoutError),
        (UnsupportedFeatureError, ValueError),
        (ConfigurationError, ValueError),
        (keyval.KeyvalError, ValueError),
        (ChardevOptionError, ValueError),
        (ChardevBusyError, ChannelBusyError),
        (LifecycleError, AssertionError),
        (LifecycleError, LocalProtocolError),
        (WebsockError, RemoteProtocolError),
        (QMPError, RemoteProtocolError),
    ],
)
def test_mix_ins(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, ChannelError)
    assert issubclass(cls, builtin)


def test_protocol_errors_are_not_value_errors() -> None:
    """A broken protocol is not a bad argument: ``except ValueError`` does not swallow it."""
    assert not issubclass(ChannelProtocolError, ValueError)
    assert ChannelProtocolError("x").field is None
    assert ChannelProtocolError("x").reply is None


def test_peer_reset_is_a_broken_channel_naming_it() -> None:
    ch, peer = SocketChannel.pair()
    ch.name = "guest-serial"
    ch.write_all(b"unread")  # left in the peer's queue: closing it resets the connection
    peer.close()
    with pytest.raises(ChannelBrokenError) as info:
        ch.read(1)
    exc = info.value
    assert isinstance(exc, ChannelResetError)
    assert isinstance(exc, ConnectionResetError)  # code written for the builtin still works
    assert exc.errno == errno.ECONNRESET
    assert exc.channel == "guest-serial"
    assert str(exc) == f"[Errno {errno.ECONNRESET}] guest-serial: {exc.strerror}"
    cause = exc.__cause__
    assert type(cause) is ConnectionResetError
    assert exc.strerror == cause.strerror  # the OS's words, for code that shows them
    with pytest.raises(ChannelBrokenPipeError) as pipe:
        ch.write(b"more")
    assert pipe.value.errno == errno.EPIPE
    assert isinstance(pipe.value.__cause__, BrokenPipeError)
    ch.close()


def test_a_layer_passes_its_masters_error_unchanged() -> None:
    """The master names itself; the layer above does not wrap its error again."""
    a, b = socket.socketpair()
    master = SocketChannel(a)
    master.name = "tcp-master"
    server = WebsockChannel.server(master)
    try:
        b.sendall(request())
        server.handshake()
        assert f"Sec-WebSocket-Accept: {QEMU_ACCEPT}".encode() in recv_head(b)
        server.write_all(b"x")  # left unread: closing b resets the connection
        b.close()
        with pytest.raises(ChannelResetError, match="tcp-master") as info:
            server.read(10)
        assert not isinstance(info.value.__cause__, ChannelError)
    finally:
        server.close()
        b.close()


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (OSError(errno.EBADF, "Bad file descriptor"), ChannelClosedError, None),
        (OSError(errno.ENOSPC, "No space left on device"), ChannelBrokenError, errno.ENOSPC),
        (BrokenPipeError("no errno"), ChannelBrokenPipeError, None),
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), ChannelBrokenError, 110),
    ],
)
def test_os_error_mapping(exc: OSError, cls: type[ChannelError], code: int | None) -> None:
    got = errors.os_error("ch0", exc)
    assert type(got) is cls
    assert str(got).count("ch0:") == 1
    if isinstance(got, OSError):
        assert got.errno == code


def test_bad_websocket_frame_is_a_remote_protocol_error_with_reply_1002() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request())
        server.handshake()
        recv_head(b)
        b.sendall(frame(0x2, b"unmasked", mask=None))
        with pytest.raises(RemoteProtocolError) as info:
            server.read(10)
        assert info.value.reply == 1002
        assert isinstance(info.value, WebsockError)
    finally:
        server.close()
        b.close()


def test_bad_qmp_input_carries_the_error_class_as_reply() -> None:
    (error,) = JSONSplitter().feed(b"}")
    assert isinstance(error, RemoteProtocolError)
    assert error.reply == "GenericError"
    # The reply is what goes on the wire, field or not.
    proto = QMPServerProtocol({"qmp_capabilities": CommandSpec("qmp_capabilities", {}, True)})
    proto.receive_data(b'{"execute": "qmp_capabilities", "arguments": {"x": 1}}\n')
    reply = proto.next_request()
    assert isinstance(reply, bytes)
    assert json.loads(reply)["error"] == {
        "class": "GenericError",
        "desc": "Parameter 'x' is unexpected",
    }


def test_bad_keyval_key_names_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        keyval.to_tree(keyval.split("addr.path=a,addr..type=unix", short_booleans=False))
    assert isinstance(info.value, ValueError)
    assert info.value.field == "addr..type"
