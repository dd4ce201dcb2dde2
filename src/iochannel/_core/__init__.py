"""The channel abstraction every other part of iochannel is built on (private).

* :mod:`.channel` — :class:`~iochannel.Channel`: the hooks a transport
  implements (``_readv``, ``_writev``, ``_wait_fds``, ``_pending``, …) and the
  one set of blocking, non-blocking and asyncio operations built on them.
* :mod:`.watch` — waiting for readiness: blocking waits, asyncio waits that
  follow the calling coroutine's loop, and persistent watches.
* :mod:`.task` — :class:`~iochannel.Task`, an operation whose completion
  callback runs once on a loop.
* :mod:`.flags` — the flag enums of the API (conditions, features, read and
  write flags, shutdown directions).

Import the public names from :mod:`iochannel`, not from here.
"""
