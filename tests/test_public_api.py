"""The public surface: what each public package exports is deliberate.

``iochannel`` and ``iochannel.console`` are built from private modules
(``iochannel._core``, ``_transports``, ``_layers``, ``_parsers`` and
``console._*``) and re-export their public names; the other packages are
public with their modules.  This test pins each package's ``__all__``: a name
added or removed fails it until :data:`SURFACE` says so, so a change of the
public API is always a decision.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import iochannel

#: Every package's public names (sorted).
SURFACE: dict[str, tuple[str, ...]] = {
    "iochannel": (
        "Address",
        "AddressError",
        "BufferChannel",
        "Channel",
        "ChannelAbortedError",
        "ChannelBrokenError",
        "ChannelBrokenPipeError",
        "ChannelBusyError",
        "ChannelClosedError",
        "ChannelEOFError",
        "ChannelError",
        "ChannelProtocolError",
        "ChannelRefusedError",
        "ChannelResetError",
        "ChannelTimeoutError",
        "CommandChannel",
        "Condition",
        "ConfigurationError",
        "FdAddress",
        "Feature",
        "FileChannel",
        "IncompleteReadError",
        "InetAddress",
        "LocalProtocolError",
        "MAX_FDS",
        "MemoryChannel",
        "NetListener",
        "NullChannel",
        "ReadFlag",
        "RemoteProtocolError",
        "Shutdown",
        "SocketChannel",
        "StapledChannel",
        "TLSChannel",
        "TLSError",
        "Task",
        "UnixAddress",
        "UnsupportedFeatureError",
        "VsockAddress",
        "Watch",
        "WebsockChannel",
        "WebsockError",
        "WriteFlag",
        "format_address",
        "from_fd",
        "memory_pair",
        "parse_address",
        "pipe_pair",
        "resolve",
    ),
    "iochannel.errors": (
        "ChannelAbortedError",
        "ChannelBrokenError",
        "ChannelBrokenPipeError",
        "ChannelBusyError",
        "ChannelClosedError",
        "ChannelEOFError",
        "ChannelError",
        "ChannelProtocolError",
        "ChannelRefusedError",
        "ChannelResetError",
        "ChannelTimeoutError",
        "ConfigurationError",
        "IncompleteReadError",
        "LocalProtocolError",
        "RemoteProtocolError",
        "UnsupportedFeatureError",
        "os_error",
    ),
    "iochannel.console": (
        "AsyncConsole",
        "CommandFailedError",
        "Console",
        "ExpectEOF",
        "ExpectError",
        "ExpectFailure",
        "ExpectMatch",
        "ExpectTimeout",
        "Expecter",
        "Pattern",
        "Reconnect",
        "Searcher",
        "control_byte",
    ),
    "iochannel.block": (
        "BlockError",
        "BlockNode",
        "FileNode",
        "NullNode",
        "Options",
        "RawNode",
        "open_file",
    ),
    "iochannel.chardev": (
        "Backoff",
        "ChannelChardev",
        "Chardev",
        "ChardevBusyError",
        "ChardevClosedError",
        "ChardevError",
        "ChardevEvent",
        "ChardevLookup",
        "ChardevOptionError",
        "ChardevRef",
        "ChardevRegistry",
        "ChardevServer",
        "ClosedWrites",
        "CommandChardev",
        "FileChardev",
        "Frontend",
        "HubChardev",
        "LifecycleError",
        "MemberPolicy",
        "MuxChardev",
        "NullChardev",
        "PipeChardev",
        "PtyChardev",
        "RingbufChardev",
        "Schema",
        "SerialChardev",
        "SessionChardev",
        "SessionSetup",
        "SlowConsumer",
        "SocketChardev",
        "Stats",
        "StdioChardev",
        "TelnetEvent",
        "TelnetFilter",
        "UdpChardev",
        "WhileClosed",
        "parse_chardev",
        "parse_legacy",
        "register_backend",
        "set_strict",
        "validate_spec",
    ),
    "iochannel.crypto": (
        "AuthzList",
        "AuthzRule",
        "Credentials",
        "CredentialsError",
        "Endpoint",
        "PSKCredentials",
        "Policy",
        "X509Credentials",
        "distinguished_name",
    ),
    "iochannel.qmp": (
        "CommandSpec",
        "JSONSplitter",
        "MAX_QUEUED",
        "QMPError",
        "QMPMonitor",
        "QMPServerProtocol",
        "Request",
        "SessionState",
    ),
    "iochannel.testing": (
        "CHUNK_COUNT",
        "CHUNK_SIZE",
        "ConformanceError",
        "PairMaker",
        "check_fd_passing_channel",
        "check_half_closeable_channel",
        "check_one_way_channel",
        "check_transfer",
        "check_two_way_channel",
        "pattern",
    ),
    "iochannel.vhost_user": (
        "DescriptorChain",
        "DeviceError",
        "ProtocolError",
        "ProtocolFeature",
        "Request",
        "VhostUserBackend",
        "Virtqueue",
        "VirtqueueError",
    ),
    "iochannel.web": (
        "Role",
        "ViewerChardev",
        "WebConsole",
    ),
    "iochannel.daemon": (
        "Config",
        "ConfigError",
        "Daemon",
        "Relay",
        "main",
        "parse_args",
        "run",
    ),
}

#: The modules and packages directly under ``iochannel`` that are public.
PUBLIC_CHILDREN = {
    "__main__",
    "block",
    "chardev",
    "console",
    "crypto",
    "daemon",
    "errors",
    "nbd",
    "qmp",
    "testing",
    "vhost_user",
    "web",
}

#: Packages whose namespace is exactly their ``__all__`` (they only re-export).
REEXPORTING = ("iochannel", "iochannel.console")


def test_every_other_module_under_the_root_is_private() -> None:
    children = {info.name for info in pkgutil.iter_modules(iochannel.__path__)}
    public = {name for name in children if not name.startswith("_") or name == "__main__"}
    assert public == PUBLIC_CHILDREN


@pytest.mark.parametrize("package", sorted(SURFACE))
def test_all_is_the_surface(package: str) -> None:
    module = importlib.import_module(package)
    assert tuple(sorted(module.__all__)) == SURFACE[package]
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"
    for name in module.__all__:
        assert not name.startswith("_")
        assert hasattr(module, name), f"{package}.__all__ names {name}, which is not there"


@pytest.mark.parametrize("package", REEXPORTING)
def test_a_reexporting_package_exports_everything_it_holds(package: str) -> None:
    """A public name imported into the package but left out of __all__ is a leak."""
    module = importlib.import_module(package)
    held = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations",)
    }
    assert held == set(module.__all__)


@pytest.mark.parametrize("package", sorted(SURFACE))
def test_every_exported_class_and_function_states_its_contract(package: str) -> None:
    """The reference is generated from docstrings: each public name needs its own."""
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            own = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
            if not (own or "").strip():
                missing.append(name)
    assert not missing, f"{package}: no docstring for {missing}"
