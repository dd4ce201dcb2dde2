"""The ``serial`` backend: a host serial line (``/dev/ttyS0``, a USB adapter, a pty slave)."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import termios
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .._transports.file import FileChannel
from .channel_backend import ChannelChardev
from .chardev import ChardevError
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    Field,
    Schema,
    chardev_kwargs,
    escape,
    register_backend,
)
from .terminal import CFLAG, ISPEED, OSPEED, raw_mode

__all__ = ["MODEM_LINES", "SerialChardev"]

log = logging.getLogger(__name__)

#: Modem control lines by name, as ``get-tiocm``/``set-tiocm`` spell them.
MODEM_LINES = {
    "CTS": termios.TIOCM_CTS,
    "CAR": termios.TIOCM_CAR,
    "DSR": termios.TIOCM_DSR,
    "RI": termios.TIOCM_RI,
    "DTR": termios.TIOCM_DTR,
    "RTS": termios.TIOCM_RTS,
}
_DATA_BITS = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}
_PARITY = {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}


def _baud(speed: int) -> int:
    """The termios constant for the highest standard rate not above *speed*."""
    rates: list[tuple[int, int]] = sorted(
        (int(name[1:]), getattr(termios, name))
        for name in dir(termios)
        if name[0] == "B" and name[1:].isdigit() and int(name[1:]) > 0
    )
    best = rates[0][1]
    for rate, const in rates:
        if rate <= speed:
            best = const
    return best


def _legacy(text: str) -> str | None:
    if text.startswith(("/dev/parport", "/dev/ppi")):
        # QEMU's parallel backend; a parallel port is not a serial line.
        raise ChardevOptionError(f"'{text}': parallel ports are not supported")
    return f"serial,path={escape(text)}" if text.startswith("/dev/") else None


@register_backend(
    Schema(
        "serial",
        "a host serial line (/dev/ttyS0, a USB adapter, a pty slave)",
        {"path": "str"},
        {"device": Field("str", REQUIRED)},
        cli_names={"device": "path"},
        legacy=_legacy,
    )
)
class SerialChardev(ChannelChardev):
    """The ``serial`` backend: a host serial line (``/dev/ttyS0``, a USB adapter, a pty slave).

    The device is opened read-write, non-blocking, without becoming the
    controlling terminal, and set to raw 115200 8N1; a device that is not a
    terminal (``/dev/null``) is used as it is.  The chardev is open from the
    start; end of input closes it.  Writes while closed default to ``error``.

    Controls (:meth:`~iochannel.chardev.SerialChardev.ioctl`), QEMU's ``CHR_IOCTL_SERIAL_*``:

    * ``"set-params"``, ``{"speed": int, "parity": "N"|"E"|"O", "data-bits": 5-8,
      "stop-bits": 1|2}`` (all keys optional);
    * ``"set-break"``, a bool: send a break when true;
    * ``"get-tiocm"`` → the set of modem lines that are up, among
      ``CTS CAR DSR RI DTR RTS``; ``"set-tiocm"``, such a set.

    A control the device refuses raises :class:`ChardevError` naming it.
    """

    type_name: ClassVar[str] = "serial"

    def __init__(self, id: str, device: str, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.device = device
        self.filename = f"serial:{device}"
        self._fd = -1

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> SerialChardev:
        return cls(id, data["device"], **chardev_kwargs(data, registry.loop))

    def _open(self) -> bool:
        ch = FileChannel.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._fd = ch.fileno()
        try:
            self._set_params({"speed": 115200, "parity": "N", "data-bits": 8, "stop-bits": 1})
        except ChardevError as exc:
            log.debug("chardev '%s': %s is not a terminal: %s", self.id, self.device, exc)
        self._attach_channels(ch, ch)
        return True

    def _close(self) -> None:
        self._fd = -1
        super()._close()

    def _tty(self, what: str) -> int:
        if self._fd < 0:
            raise ChardevError(f"chardev '{self.id}': {what}: the device is not open")
        return self._fd

    def _set_params(self, params: Mapping[str, Any]) -> None:
        fd = self._tty("set-params")
        unknown = set(params) - {"speed", "parity", "data-bits", "stop-bits"}
        if unknown:
            raise ChardevError(
                f"chardev '{self.id}': set-params: unknown key '{sorted(unknown)[0]}'"
            )
        parity = params.get("parity", "N")
        bits = params.get("data-bits", 8)
        stop = params.get("stop-bits", 1)
        speed = params.get("speed", 115200)
        if parity not in _PARITY:
            raise ChardevError(
                f"chardev '{self.id}': set-params: parity must be N, E or O, not {parity!r}"
            )
        if bits not in _DATA_BITS:
            raise ChardevError(
                f"chardev '{self.id}': set-params: data-bits must be 5 to 8, not {bits!r}"
            )
        if stop not in (1, 2):
            raise ChardevError(
                f"chardev '{self.id}': set-params: stop-bits must be 1 or 2, not {stop!r}"
            )
        if isinstance(speed, bool) or not isinstance(speed, int) or speed <= 0:
            raise ChardevError(
                f"chardev '{self.id}': set-params: speed must be positive, not {speed!r}"
            )
        try:
            attrs = raw_mode(termios.tcgetattr(fd))
            cflag = attrs[CFLAG] & ~(
                termios.CSIZE | termios.PARENB | termios.PARODD | termios.CSTOPB
            )
            cflag |= _DATA_BITS[bits] | _PARITY[parity] | termios.CREAD | termios.CLOCAL
            if stop == 2:
                cflag |= termios.CSTOPB
            attrs[CFLAG] = cflag
            attrs[ISPEED] = attrs[OSPEED] = _baud(speed)
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error as exc:
            raise ChardevError(f"chardev '{self.id}': set-params: {exc.args[-1]}") from exc

    def _lines(self, what: str, lines: object) -> int:
        if isinstance(lines, str) or not isinstance(lines, Iterable):
            raise ChardevError(f"chardev '{self.id}': {what}: expected a set of line names")
        bits = 0
        for name in lines:
            if name not in MODEM_LINES:
                raise ChardevError(f"chardev '{self.id}': {what}: unknown modem line {name!r}")
            bits |= MODEM_LINES[name]
        return bits

    def ioctl(self, command: str, argument: object = None) -> object:
        if command == "set-params":
            if not isinstance(argument, Mapping):
                raise ChardevError(f"chardev '{self.id}': set-params: expected a mapping")
            self._set_params(argument)
            return None
        try:
            if command == "set-break":
                if argument:
                    termios.tcsendbreak(self._tty(command), 0)
                return None
            if command == "get-tiocm":
                raw = fcntl.ioctl(self._tty(command), termios.TIOCMGET, struct.pack("i", 0))
                state = struct.unpack("i", raw)[0]
                return {name for name, bit in MODEM_LINES.items() if state & bit}
            if command == "set-tiocm":
                bits = self._lines(command, argument)
                fcntl.ioctl(self._tty(command), termios.TIOCMSET, struct.pack("i", bits))
                return None
        except (OSError, termios.error) as exc:
            raise ChardevError(f"chardev '{self.id}': {command}: {exc}") from exc
        return super().ioctl(command, argument)
