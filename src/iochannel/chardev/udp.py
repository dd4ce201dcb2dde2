"""The ``udp`` backend: a connected datagram socket."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .._core.channel import Channel
from .._core.flags import Condition
from .._transports.address import Address
from .._transports.socket import SocketChannel
from .channel_backend import ChannelChardev
from .chardev import READ_CHUNK
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    Field,
    Schema,
    chardev_kwargs,
    escape,
    host_port,
    qapi_address,
    register_backend,
)

__all__ = ["UdpChardev"]


_FAMILY = ("ipv4", "ipv6")


def _inet(host: str, port: str, o: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "inet",
        "data": {"host": host, "port": port, **{k: o[k] for k in _FAMILY if k in o}},
    }


def _from_cli(o: Mapping[str, Any]) -> dict[str, Any]:
    if not o.get("port"):
        raise ChardevOptionError("Parameter 'port' is missing")
    data: dict[str, Any] = {"remote": _inet(o.get("host") or "localhost", o["port"], o)}
    if o.get("localaddr") or o.get("localport"):
        data["local"] = _inet(o.get("localaddr", ""), o.get("localport") or "0", o)
    return data


def _legacy(text: str) -> str | None:
    if not text.startswith("udp:"):
        return None
    remote, at, local = text[4:].partition("@")
    host, port, end = host_port(remote)
    out = f"udp,host={escape(host)},port={escape(port)}"
    if end < len(remote):
        raise ChardevOptionError(f"invalid udp address '{remote}'")
    if at:
        lhost, lport, lend = host_port(local)
        if lend < len(local):
            raise ChardevOptionError(f"invalid udp address '{local}'")
        out += f",localaddr={escape(lhost)},localport={escape(lport)}"
    return out


@register_backend(
    Schema(
        "udp",
        "a connected datagram socket",
        {
            "host": "str",
            "port": "port",
            "localaddr": "str",
            "localport": "port",
            "ipv4": "bool",
            "ipv6": "bool",
        },
        {"remote": Field("addr", REQUIRED), "local": Field("addr")},
        cli_names={"local.data.host": "localaddr", "local.data.port": "localport"},
        from_cli=_from_cli,
        legacy=_legacy,
    )
)
class UdpChardev(ChannelChardev):
    """The ``udp`` backend: a connected datagram socket.

    Each write sends one datagram (a write larger than a datagram fails).  Each
    received datagram (up to 4096 bytes) is kept and handed to the frontend as
    ``can_read`` allows; the next one is read only when it is used up.  Datagrams
    refused by the peer (ICMP port unreachable) are lost, as datagrams may be.

    Unlike QEMU's, this chardev sends OPENED as soon as its socket exists, so
    frontends that wait for OPENED work over it.  It closes only with
    :meth:`~iochannel.chardev.Chardev.close`; writes while closed therefore default to ``error``.
    """

    type_name: ClassVar[str] = "udp"

    def __init__(
        self, id: str, remote: Address, local: Address | None = None, **kwargs: Any
    ) -> None:
        super().__init__(id, **kwargs)
        self.remote = remote
        self.local = local
        self.filename = "udp"
        self._datagram = b""
        self._drain_scheduled = False

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> UdpChardev:
        remote = qapi_address(data["remote"])
        local = qapi_address(data["local"]) if "local" in data else None
        return cls(id, remote, local, **chardev_kwargs(data, registry.loop))

    def _open(self) -> bool:
        ch = SocketChannel.dgram(self.local, self.remote)
        self._attach_channels(ch, ch)
        return True

    def _deliver_datagram(self) -> None:
        """Hand over what the frontend takes of the kept datagram."""
        want = self.be_can_read()
        if want > 0 and self._datagram:
            chunk, self._datagram = self._datagram[:want], self._datagram[want:]
            self.be_write(chunk)

    def _update_read_handler(self) -> None:
        if self._datagram and not self._drain_scheduled and self.be_can_read() > 0:
            # Deliver from the loop, not from inside the frontend's accept_input.
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)
        super()._update_read_handler()

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._in is not None:
            self._deliver_datagram()

    def _on_readable(self, channel: Channel, cond: Condition) -> bool:
        if not self._datagram:
            try:
                data = channel.read(READ_CHUNK)
            except ConnectionRefusedError:
                return True  # an earlier datagram was refused; this one may not be
            except OSError:
                self._read_watch = None
                self._on_disconnect()
                return False
            if data is None:
                return True
            self._datagram = data
        self._deliver_datagram()
        if self._in is not channel:
            return False
        if self._datagram or self.be_can_read() <= 0:
            # Wait for accept_input: the kept datagram goes first.
            self._read_watch = None
            return False
        return True

    def _chr_write(self, data: memoryview) -> int | None:
        out = self._out
        if out is None or out.closed:
            return None
        try:
            return out.write(data)
        except ConnectionRefusedError:
            return len(data)  # the peer is not listening: the datagram is lost
