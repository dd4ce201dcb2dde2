"""vhost-user back-end server and devices.

Layers, each usable on its own:

* ``protocol`` — sans-I/O message codec with strict validation;
* ``memory``, ``virtqueue`` — guest memory and split rings;
* ``device`` — :class:`VhostUserBackend`, the API devices implement;
* ``handler`` — the per-connection state machine (sans-I/O);
* ``worker`` — queue worker threads;
* ``server`` — the UNIX-socket server on channels;
* ``blk`` — the vhost-user-blk device; ``cli`` — its command line.
"""

from __future__ import annotations

from .device import DeviceError, VhostUserBackend
from .memory import Bounce, FdSpan, GuestMemory, GuestMemoryError, GuestRegion
from .protocol import ProtocolError, ProtocolFeature, Region, Request, VringAddr
from .virtqueue import DescriptorChain, Virtqueue, VirtqueueError

__all__ = [
    "Bounce",
    "DescriptorChain",
    "DeviceError",
    "FdSpan",
    "GuestMemory",
    "GuestMemoryError",
    "GuestRegion",
    "ProtocolError",
    "ProtocolFeature",
    "Region",
    "Request",
    "VhostUserBackend",
    "Virtqueue",
    "VirtqueueError",
    "VringAddr",
]
