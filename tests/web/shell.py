"""Shell: ``sh`` on a pty as a hub's frontend, the guest side of a test console."""

from __future__ import annotations

import os

from iochannel import Channel, CommandChannel, Condition
from iochannel.chardev import ChardevEvent, Frontend, HubChardev


class Shell:
    """Runs ``sh`` on a pty; its output goes to *hub*, the hub's input to it."""

    def __init__(self, hub: HubChardev) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": "$ ", "TERM": "xterm"}
        self.command = CommandChannel.spawn(["sh", "-i"], "rw", pty=True, env=env)
        self.command.set_blocking(False)
        self.frontend = Frontend(hub)
        self.frontend.set_handlers(lambda: 4096, self._input, self._event)
        self._watch = self.command.add_watch(Condition.IN, self._output, loop=hub.loop)

    def _event(self, event: ChardevEvent) -> None:
        pass

    def _input(self, data: bytes) -> None:
        self.command.write_all(data)

    def _output(self, channel: Channel, _cond: Condition) -> bool:
        try:
            data = channel.read(4096)
        except OSError:  # EIO: the shell is gone
            return False
        if data is None:
            return True
        if data:
            self.frontend.write(data)
        return bool(data)

    def resize(self, rows: int, cols: int) -> None:
        self.command.resize(rows, cols)

    async def aclose(self) -> None:
        self._watch.cancel()
        self.frontend.deinit()
        await self.command.aclose()
