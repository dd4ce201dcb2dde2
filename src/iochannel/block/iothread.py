"""A named thread running its own asyncio loop."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["IOThread"]


class IOThread:
    """A thread running its own asyncio loop until :meth:`stop`."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"iothread-{id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        """Stop the loop and join the thread (call from another thread)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
