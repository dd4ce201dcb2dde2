"""PairChardev: a channel-backed chardev over a channel the test already holds."""

from __future__ import annotations

from typing import Any

from iochannel.chardev import ChannelChardev


class PairChardev(ChannelChardev):
    """A channel-backed chardev over one end of a pair, open at once."""

    type_name = "pair"

    def __init__(self, id: str, channel: Any, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self._channel = channel

    def _open(self) -> bool:
        self._attach_channels(self._channel, self._channel)
        return True
