"""Telnet and TN3270 for the socket chardev, sans-I/O.

:class:`TelnetFilter` is fed the bytes a telnet peer sent and returns, in
order, the data bytes and the events they contain; :meth:`TelnetFilter.greeting`
is what the chardev sends when a connection starts.  Nothing here reads or
writes: the caller moves the bytes.

Greeting (the options QEMU asks for):

* telnet: ``IAC WILL ECHO``, ``IAC WILL SGA``, ``IAC WILL BINARY``,
  ``IAC DO BINARY`` — character mode, no local echo (12 bytes);
* tn3270: ``IAC DO/WILL EOR``, ``IAC DO/WILL BINARY``, ``IAC DO TTYPE`` and
  ``IAC SB TTYPE SEND IAC SE`` (21 bytes).

Input, after RFC 854:

* ``IAC IAC`` is a data byte 0xFF;
* ``IAC BREAK`` is a :attr:`TelnetEvent.BREAK`;
* ``IAC WILL|WONT|DO|DONT <option>`` is dropped (we never renegotiate);
* telnet: a subnegotiation ``IAC SB … IAC SE`` is dropped whole, and the other
  two-byte commands (NOP, GA, IP …) are dropped;
* tn3270: ``IAC EOR``, ``IAC SB`` and ``IAC SE`` stay in the data, because
  the 3270 frontend parses records and the terminal type itself; ``IAC IP``,
  ``IAC NOP`` and the other commands are dropped.

QEMU treats every command but ``IAC IAC`` and ``IAC BREAK`` as three bytes
long, so a telnet ``IAC NOP`` there eats the next data byte, and it passes
subnegotiation contents to the guest; this filter follows the RFC instead.

The parser state survives any split of the input, so it can be fed whatever
each read returns; input that ends inside a command (a truncated ``IAC``)
just produces nothing.
"""

from __future__ import annotations

import enum

from .._core.channel import Buffer

__all__ = ["TelnetEvent", "TelnetFilter"]

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
BREAK = 243
SE = 240
EOR = 239

OPT_BINARY = 0
OPT_ECHO = 1
OPT_SGA = 3
OPT_TTYPE = 24
OPT_EOR = 25
TTYPE_SEND = 1

_NEGOTIATION = frozenset({WILL, WONT, DO, DONT})
# tn3270 frontends parse these themselves: records end with EOR, TTYPE replies are SB … SE.
_TN3270_KEPT = frozenset({EOR, SB, SE})

TELNET_GREETING = bytes(
    [IAC, WILL, OPT_ECHO, IAC, WILL, OPT_SGA, IAC, WILL, OPT_BINARY, IAC, DO, OPT_BINARY]
)
TN3270_GREETING = bytes(
    [IAC, DO, OPT_EOR, IAC, WILL, OPT_EOR, IAC, DO, OPT_BINARY, IAC, WILL, OPT_BINARY]
) + bytes([IAC, DO, OPT_TTYPE, IAC, SB, OPT_TTYPE, TTYPE_SEND, IAC, SE])


class TelnetEvent(enum.Enum):
    """A command found in the input that the chardev turns into an event."""

    BREAK = "break"


class _State(enum.Enum):
    DATA = 0
    #: After an IAC.
    COMMAND = 1
    #: After IAC WILL/WONT/DO/DONT: the option byte is dropped.
    OPTION = 2
    #: Inside a telnet subnegotiation, dropped until IAC SE.
    SUB = 3
    #: After an IAC inside a subnegotiation.
    SUB_COMMAND = 4


class TelnetFilter:
    """The input side of a telnet (or tn3270) connection; see the module docstring."""

    __slots__ = ("_state", "tn3270")

    def __init__(self, *, tn3270: bool = False) -> None:
        self.tn3270 = tn3270
        self._state = _State.DATA

    def greeting(self) -> bytes:
        """The negotiation bytes to send when the connection starts."""
        return TN3270_GREETING if self.tn3270 else TELNET_GREETING

    @property
    def in_command(self) -> bool:
        """Whether the input so far ends inside a command."""
        return self._state is not _State.DATA

    def feed(self, data: Buffer) -> list[bytes | TelnetEvent]:
        """Filter *data*: the data bytes and events in it, in order (no empty chunks)."""
        src = bytes(data)
        if self._state is _State.DATA and IAC not in src:
            return [src] if src else []
        out: list[bytes | TelnetEvent] = []
        chunk = bytearray()
        pos, size = 0, len(src)
        state = self._state
        while pos < size:
            if state is _State.DATA:
                end = src.find(IAC, pos)
                if end < 0:
                    chunk += src[pos:]
                    break
                chunk += src[pos:end]
                pos = end + 1
                state = _State.COMMAND
                continue
            if state is _State.SUB:
                end = src.find(IAC, pos)
                if end < 0:
                    break
                pos = end + 1
                state = _State.SUB_COMMAND
                continue
            byte = src[pos]
            pos += 1
            if state is _State.OPTION:
                state = _State.DATA
            elif state is _State.SUB_COMMAND:
                # IAC SE ends it; IAC IAC is an escaped data byte of the subnegotiation.
                state = _State.DATA if byte == SE else _State.SUB
            elif byte == IAC:
                chunk.append(IAC)
                state = _State.DATA
            elif byte in _NEGOTIATION:
                state = _State.OPTION
            elif byte == BREAK:
                if chunk:
                    out.append(bytes(chunk))
                    chunk.clear()
                out.append(TelnetEvent.BREAK)
                state = _State.DATA
            elif self.tn3270:
                if byte in _TN3270_KEPT:
                    chunk += bytes((IAC, byte))
                state = _State.DATA
            else:
                state = _State.SUB if byte == SB else _State.DATA
        self._state = state
        if chunk:
            out.append(bytes(chunk))
        return out
