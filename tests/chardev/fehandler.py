"""test-char's FeHandler: a frontend that records input and checks the OPENED/CLOSED order."""

from __future__ import annotations

from iochannel.chardev import ChardevEvent, Frontend


class FeHandler:
    def __init__(self, fe: Frontend, capacity: int = 128) -> None:
        self.fe = fe
        self.capacity = capacity
        self.read_buf = b""
        self.last_event: ChardevEvent | None = None
        self.events: list[ChardevEvent] = []
        self.openclose_count = 0
        self.mismatch = False
        self._open = False

    def can_read(self) -> int:
        return self.capacity - len(self.read_buf)

    def read(self, data: bytes) -> None:
        assert len(data) <= self.can_read(), "a backend delivered more than can_read allowed"
        self.read_buf += data

    def event(self, ev: ChardevEvent) -> None:
        self.last_event = ev
        self.events.append(ev)
        if ev == ChardevEvent.OPENED:
            self.mismatch |= self._open
            self._open = True
            self.openclose_count += 1
        elif ev == ChardevEvent.CLOSED:
            self.mismatch |= not self._open
            self._open = False
            self.openclose_count += 1

    def register(self, **kwargs: object) -> None:
        self.fe.set_handlers(self.can_read, self.read, self.event, **kwargs)  # type: ignore[arg-type]

    def take(self) -> bytes:
        data, self.read_buf = self.read_buf, b""
        return data
