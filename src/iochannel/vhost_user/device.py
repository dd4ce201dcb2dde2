"""The device API: what a vhost-user device implements.

Contract:

* A device subclasses :class:`VhostUserBackend` and overrides the hooks it
  needs.  The server owns the protocol: it negotiates features, maps guest
  memory, configures virtqueues and calls the hooks.
* :meth:`VhostUserBackend.handle_queue` runs in the worker thread that owns the
  queue (see :meth:`VhostUserBackend.queues_per_thread`) after a kick or after
  the queue was (re-)enabled.  It pops every available request and completes
  each with :meth:`Virtqueue.push`, then signals with :meth:`Virtqueue.notify`.
  Completing later, from another thread, is allowed: the server counts
  requests in flight and waits for them before it stops a queue
  (GET_VRING_BASE) or unmaps guest memory, so a request must always be
  completed eventually.  Blocking system calls such as ``os.preadv`` release
  the GIL, so queues in different worker threads do run in parallel.
* Hooks other than ``handle_queue`` run in the connection's control context;
  raising :class:`DeviceError` refuses the request (the front-end gets a failure
  reply when it asked for one).
"""

from __future__ import annotations

import abc

from ..errors import RemoteProtocolError
from .protocol import ProtocolFeature
from .virtqueue import MAX_QUEUE_SIZE, Virtqueue

__all__ = ["DeviceError", "VhostUserBackend"]

#: Virtio feature bits every device gets from the server.
F_VERSION_1 = 1 << 32
F_INDIRECT_DESC = 1 << 28
#: VHOST_USER_F_PROTOCOL_FEATURES.
F_PROTOCOL_FEATURES = 1 << 30


class DeviceError(RemoteProtocolError):
    """A device hook refuses a request."""


class VhostUserBackend(abc.ABC):
    """Base class of vhost-user devices (modelled on rust-vmm's trait)."""

    #: Queues the device has (GET_QUEUE_NUM).
    num_queues: int = 1
    #: Largest ring size accepted in SET_VRING_NUM (a power of two).
    max_queue_size: int = MAX_QUEUE_SIZE

    @abc.abstractmethod
    def features(self) -> int:
        """Device-specific virtio feature bits to offer.

        The server adds VERSION_1, INDIRECT_DESC and PROTOCOL_FEATURES.
        """

    def protocol_features(self) -> ProtocolFeature:
        """Extra protocol features; MQ, REPLY_ACK and CONFIGURE_MEM_SLOTS are
        always offered, CONFIG when :meth:`get_config` is overridden."""
        return ProtocolFeature(0)

    def acked_features(self, features: int) -> None:  # noqa: B027 - optional hook
        """The front-end acknowledged *features* (SET_FEATURES)."""

    def get_config(self, offset: int, size: int) -> bytes:
        """Return *size* bytes of config space from *offset*.

        Raise :class:`DeviceError` for a range outside the config space.
        """
        raise DeviceError("device has no config space")

    def set_config(self, offset: int, data: bytes, flags: int) -> None:
        """Write config space (SET_CONFIG); refuse with :class:`DeviceError`."""
        raise DeviceError("config space is read-only")

    def queues_per_thread(self) -> list[int]:
        """Bit masks of queue indexes, one per worker thread.

        The default is one worker thread for all queues.
        """
        return [(1 << self.num_queues) - 1]

    @abc.abstractmethod
    def handle_queue(self, vq: Virtqueue, thread_id: int) -> None:
        """Process every available request of *vq*; see the module docstring."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """The front-end disconnected or reset the device."""
