"""vhost-user back-end server and devices.

Layers, each usable on its own:

* :mod:`.protocol` — sans-I/O message codec with strict validation;
* :mod:`.memory`, :mod:`.virtqueue` — guest memory and split rings;
* :mod:`.device` — :class:`VhostUserBackend`, the API devices implement;
* :mod:`.handler` — the per-connection state machine (sans-I/O);
* :mod:`.worker` — queue worker threads;
* :mod:`.server` — the UNIX-socket server on channels;
* :mod:`.blk` — the vhost-user-blk device; :mod:`.cli` — its command line.
"""

from __future__ import annotations

from .device import DeviceError, VhostUserBackend
from .protocol import ProtocolError, ProtocolFeature, Request
from .virtqueue import DescriptorChain, Virtqueue, VirtqueueError

__all__ = [
    "DescriptorChain",
    "DeviceError",
    "ProtocolError",
    "ProtocolFeature",
    "Request",
    "VhostUserBackend",
    "Virtqueue",
    "VirtqueueError",
]
