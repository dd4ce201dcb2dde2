"""Per-connection vhost-user state machine (sans-I/O).

Contract:

* :class:`Handler` receives decoded :class:`~.protocol.Message` objects from
  one front-end through :meth:`Handler.handle` and returns the reply bytes to
  send (``None`` when no reply is due).  It never touches the socket.
* Queue processing happens elsewhere; the handler drives it through a
  :class:`RingControl` (start, which also re-scans, and stop).  ``stop`` must return only
  once the queue's worker no longer touches it, which is what makes it safe to
  reconfigure a ring, to answer GET_VRING_BASE and to unmap memory.
* A request that breaks the protocol raises
  :class:`~.protocol.ProtocolError`: the connection must end.  A valid
  request that cannot be carried out is answered with a non-zero REPLY_ACK when
  the front-end asked for one (NEED_REPLY) and continues; without NEED_REPLY the
  front-end could not learn of the failure, so it is a ``ProtocolError`` too.
* Replies are produced only for requests that have a reply or carry
  NEED_REPLY after REPLY_ACK was negotiated: never unsolicited.
* :meth:`Handler.config_changed` (thread-safe) tells the front-end that the
  config space changed (BACKEND_CONFIG_CHANGE_MSG on the channel given by
  SET_SLAVE_REQ_FD), if it negotiated CONFIG and SLAVE_REQ; QEMU then reads
  the config again.  It never waits for the front-end.
* :meth:`Handler.close` stops every queue, then unmaps memory and closes every
  fd the handler holds.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from .device import F_INDIRECT_DESC, F_PROTOCOL_FEATURES, F_VERSION_1, DeviceError, VhostUserBackend
from .memory import MAX_MEM_SLOTS, GuestMemory, GuestMemoryError
from .protocol import (
    VRING_NOFD,
    BackendRequest,
    ConfigPayload,
    Message,
    ProtocolError,
    ProtocolFeature,
    Region,
    Request,
    VringAddr,
    encode_reply,
    encode_request,
    pack_config,
    pack_u64,
    pack_vring_state,
)
from .virtqueue import Virtqueue, VirtqueueError

__all__ = ["Handler", "RingControl"]

log = logging.getLogger(__name__)

#: Offered to every front-end; devices may add more.
BASE_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS
)

#: Requests that are errors unless this protocol feature was negotiated.
_NEEDS_FEATURE = {
    Request.GET_QUEUE_NUM: ProtocolFeature.MQ,
    Request.GET_CONFIG: ProtocolFeature.CONFIG,
    Request.SET_CONFIG: ProtocolFeature.CONFIG,
    Request.GET_MAX_MEM_SLOTS: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.ADD_MEM_REG: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.REM_MEM_REG: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.SET_SLAVE_REQ_FD: ProtocolFeature.SLAVE_REQ,
    Request.GET_INFLIGHT_FD: ProtocolFeature.INFLIGHT_SHMFD,
    Request.SET_INFLIGHT_FD: ProtocolFeature.INFLIGHT_SHMFD,
    Request.RESET_DEVICE: ProtocolFeature.RESET_DEVICE,
    Request.SET_STATUS: ProtocolFeature.STATUS,
    Request.GET_STATUS: ProtocolFeature.STATUS,
}


class RingControl(Protocol):
    """How a handler starts and stops queue processing."""

    def start(self, vq: Virtqueue) -> None:
        """Begin watching ``vq.kick_fd`` and process what is already queued."""

    def stop(self, vq: Virtqueue) -> None:
        """Stop processing *vq*; return once no worker touches it."""


class _Failed(Exception):
    """A valid request could not be carried out."""


class Handler:
    """State of one front-end connection; see the module docstring."""

    def __init__(
        self, backend: VhostUserBackend, rings: RingControl, *, name: str = "vhost-user"
    ) -> None:
        #: Names the export in log lines.
        self.name = name
        self.backend = backend
        self.rings = rings
        self.memory = GuestMemory()
        self.queues = [Virtqueue(i, self.memory) for i in range(backend.num_queues)]
        self.offered_features = (
            backend.features() | F_VERSION_1 | F_INDIRECT_DESC | F_PROTOCOL_FEATURES
        )
        protocol = BASE_PROTOCOL_FEATURES | backend.protocol_features()
        if type(backend).get_config is not VhostUserBackend.get_config:
            protocol |= ProtocolFeature.CONFIG
        self.offered_protocol = protocol
        self.acked_features = 0
        self.acked_protocol = ProtocolFeature(0)
        self.owner = False
        #: The back-end request channel (SET_SLAVE_REQ_FD); swapped under the lock.
        self._backend_req: socket.socket | None = None
        self._backend_lock = threading.Lock()
        self._handlers: dict[Request, Callable[[Message], bytes | None]] = {
            Request.GET_FEATURES: lambda m: pack_u64(self.offered_features),
            Request.SET_FEATURES: self._set_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.GET_PROTOCOL_FEATURES: lambda m: pack_u64(self.offered_protocol),
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.GET_QUEUE_NUM: lambda m: pack_u64(self.backend.num_queues),
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.SET_SLAVE_REQ_FD: self._set_slave_req_fd,
            Request.GET_MAX_MEM_SLOTS: lambda m: pack_u64(MAX_MEM_SLOTS),
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
        }

    # ---- dispatch ----

    def handle(self, msg: Message) -> bytes | None:
        """Carry out *msg* and return the reply to send, if any."""
        try:
            return self._dispatch(msg)
        finally:
            msg.close_fds()

    def _dispatch(self, msg: Message) -> bytes | None:
        name = msg.request.name
        needed = _NEEDS_FEATURE.get(msg.request)
        if needed is not None and not self.acked_protocol & needed:
            raise ProtocolError("header.request", f"{name} needs protocol feature {needed.name}")
        handler = self._handlers.get(msg.request)
        if handler is None:
            raise ProtocolError("header.request", f"{name} is not supported by this device")
        ack = msg.need_reply and bool(self.acked_protocol & ProtocolFeature.REPLY_ACK)
        try:
            body = handler(msg)
        except _Failed as exc:
            if not ack:
                raise ProtocolError(name, str(exc)) from exc
            log.warning("%s: %s failed: %s", self.name, name, exc)
            return encode_reply(msg.request, pack_u64(1))
        if body is not None:
            return encode_reply(msg.request, body)
        return encode_reply(msg.request, pack_u64(0)) if ack else None

    def _queue(self, index: int, request: str) -> Virtqueue:
        if index >= len(self.queues):
            raise ProtocolError(f"{request}.index", f"queue {index} >= {len(self.queues)} queues")
        return self.queues[index]

    def _reconfigure(self, vq: Virtqueue, change: Callable[[], None]) -> None:
        """Apply *change* to *vq* with its worker stopped, then restart it if ready."""
        self.rings.stop(vq)
        try:
            change()
        except (VirtqueueError, GuestMemoryError) as exc:
            raise _Failed(str(exc)) from exc
        finally:
            if vq.ready:
                self.rings.start(vq)

    # ---- handlers ----

    def _set_features(self, msg: Message) -> None:
        assert isinstance(msg.payload, int)
        features = msg.payload
        if features & ~self.offered_features:
            raise ProtocolError("SET_FEATURES.u64", f"{features:#x} has bits never offered")
        self.acked_features = features
        protocol = bool(features & F_PROTOCOL_FEATURES)
        for vq in self.queues:
            vq.indirect = bool(features & F_INDIRECT_DESC)
            if not protocol and not vq.enabled:
                # Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings
                # are enabled from the start.
                self._reconfigure(vq, functools.partial(setattr, vq, "enabled", True))
        try:
            self.backend.acked_features(features)
        except DeviceError as exc:
            raise _Failed(str(exc)) from exc

    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    def _reset_owner(self, msg: Message) -> None:
        self._stop_all()
        self.owner = False

    def _set_protocol_features(self, msg: Message) -> None:
        assert isinstance(msg.payload, int)
        if msg.payload & ~self.offered_protocol:
            raise ProtocolError(
                "SET_PROTOCOL_FEATURES.u64", f"{msg.payload:#x} has bits never offered"
            )
        self.acked_protocol = ProtocolFeature(msg.payload)

    def _change_memory(self, change: Callable[[], None]) -> None:
        """Apply a memory-table change with every running queue stopped.

        Rings are re-translated afterwards, as their addresses may now lie in
        a different mapping.
        """
        running = [vq for vq in self.queues if vq.ready]
        for vq in running:
            self.rings.stop(vq)
        try:
            change()
            for vq in self.queues:
                try:
                    vq.map_rings()
                except VirtqueueError:
                    # A stopped ring may point at removed memory; it cannot be
                    # started until its memory is back.
                    if vq in running:
                        raise
        except (VirtqueueError, GuestMemoryError) as exc:
            raise _Failed(str(exc)) from exc
        finally:
            for vq in running:
                if vq.ready:
                    self.rings.start(vq)

    def _set_mem_table(self, msg: Message) -> None:
        regions = msg.payload
        assert isinstance(regions, list)
        fds = msg.fds
        msg.fds = []
        self._change_memory(lambda: self.memory.set_table(regions, fds))

    def _add_mem_reg(self, msg: Message) -> None:
        assert isinstance(msg.payload, Region)
        region, fd = msg.payload, msg.take_fd()
        self._change_memory(lambda: self.memory.add(region, fd))

    def _rem_mem_reg(self, msg: Message) -> None:
        assert isinstance(msg.payload, Region)
        region = msg.payload
        self._change_memory(lambda: self.memory.remove(region))

    def _state(self, msg: Message) -> tuple[Virtqueue, int]:
        assert isinstance(msg.payload, tuple)
        index, num = msg.payload
        return self._queue(index, msg.request.name), num

    def _set_vring_num(self, msg: Message) -> None:
        vq, num = self._state(msg)
        limit = self.backend.max_queue_size
        if num == 0 or num & (num - 1) or num > limit:
            raise ProtocolError("SET_VRING_NUM.num", f"{num} is not a power of two in 1..{limit}")
        if vq.started:
            raise _Failed(f"queue {vq.index} is running")
        vq.num = num

    def _set_vring_base(self, msg: Message) -> None:
        vq, num = self._state(msg)
        if num > 0xFFFF:
            raise ProtocolError("SET_VRING_BASE.num", f"{num:#x} is not a split-ring index")
        if vq.started:
            raise _Failed(f"queue {vq.index} is running")
        vq.last_avail = num

    def _set_vring_addr(self, msg: Message) -> None:
        addr = msg.payload
        assert isinstance(addr, VringAddr)
        vq = self._queue(addr.index, "SET_VRING_ADDR")
        if addr.flags & ~1:
            raise ProtocolError("SET_VRING_ADDR.flags", f"unknown flags {addr.flags:#x}")
        self._reconfigure(vq, lambda: vq.set_addr(addr))

    def _get_vring_base(self, msg: Message) -> bytes:
        vq, _ = self._state(msg)
        self.rings.stop(vq)
        base = vq.last_avail
        # The ring is stopped: the next start brings new kick and call fds.
        vq.set_call_fd(None)
        if vq.kick_fd is not None:
            os.close(vq.kick_fd)
            vq.kick_fd = None
        vq.started = False
        return pack_vring_state(vq.index, base)

    def _vring_file(self, msg: Message) -> tuple[Virtqueue, int | None]:
        value = msg.payload
        assert isinstance(value, int)
        vq = self._queue(value & 0xFF, msg.request.name)
        return vq, None if value & VRING_NOFD else msg.take_fd()

    def _set_vring_kick(self, msg: Message) -> None:
        vq, fd = self._vring_file(msg)
        if fd is None:
            raise _Failed("polling without a kick fd is not supported")
        # The worker reads it only after poll() reported it readable, but the
        # front-end may drain it in between; QEMU creates it non-blocking anyway.
        os.set_blocking(fd, False)

        def change() -> None:
            if vq.kick_fd is not None:
                os.close(vq.kick_fd)
            vq.kick_fd = fd
            vq.started = True

        self._reconfigure(vq, change)

    def _set_vring_call(self, msg: Message) -> None:
        vq, fd = self._vring_file(msg)
        vq.set_call_fd(fd)
        if vq.started:
            # A notification may have gone to the previous fd while the front-end
            # switched (e.g. after a reconnect); a spurious one is harmless.
            vq.notify()

    def _set_vring_err(self, msg: Message) -> None:
        vq, fd = self._vring_file(msg)
        if vq.err_fd is not None:
            os.close(vq.err_fd)
        vq.err_fd = fd

    def _set_vring_enable(self, msg: Message) -> None:
        vq, num = self._state(msg)
        if num > 1:
            raise ProtocolError("SET_VRING_ENABLE.num", f"{num} is neither 0 nor 1")
        # Enabling restarts the worker, which re-scans the ring: QEMU 7.2 does
        # not wait for this message to be processed before kicking.
        self._reconfigure(vq, functools.partial(setattr, vq, "enabled", bool(num)))

    def _get_config(self, msg: Message) -> bytes:
        cfg = msg.payload
        assert isinstance(cfg, ConfigPayload)
        try:
            if cfg.size == 0:
                raise DeviceError("empty config read")
            data = self.backend.get_config(cfg.offset, cfg.size)
        except DeviceError as exc:
            # An empty reply is how back-ends refuse: the front-end checks the size.
            log.warning("vhost-user GET_CONFIG refused: %s", exc)
            return b""
        if len(data) != cfg.size:
            raise RuntimeError(f"get_config returned {len(data)} bytes, not {cfg.size}")
        return pack_config(cfg.offset, cfg.flags, data)

    def _set_config(self, msg: Message) -> None:
        cfg = msg.payload
        assert isinstance(cfg, ConfigPayload)
        try:
            self.backend.set_config(cfg.offset, cfg.data, cfg.flags)
        except DeviceError as exc:
            raise _Failed(str(exc)) from exc

    def _set_slave_req_fd(self, msg: Message) -> None:
        fd = msg.take_fd()
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            os.close(fd)
            raise _Failed(f"the back-end request fd is not a socket: {exc.strerror}") from None
        with self._backend_lock:
            old, self._backend_req = self._backend_req, sock
        if old is not None:
            old.close()

    def config_changed(self) -> bool:
        """Send CONFIG_CHANGE_MSG if the front-end can take it; True if sent."""
        wanted = ProtocolFeature.CONFIG | ProtocolFeature.SLAVE_REQ
        if self.acked_protocol & wanted != wanted:
            return False
        data = encode_request(BackendRequest.CONFIG_CHANGE_MSG)
        with self._backend_lock:
            if self._backend_req is None:
                return False
            try:
                # Never blocks: a front-end that does not read its channel
                # must not stall the caller (a QMP command).
                sent = self._backend_req.send(data, socket.MSG_DONTWAIT)
            except OSError as exc:
                log.warning("%s: config change not sent: %s", self.name, exc)
                return False
        if sent != len(data):
            log.warning("%s: config change cut short (%d of %d bytes)", self.name, sent, len(data))
            return False
        return True

    # ---- teardown ----

    def _stop_all(self) -> None:
        for vq in self.queues:
            self.rings.stop(vq)
            vq.close()
            vq.enabled = False

    def close(self) -> None:
        """Stop every queue, unmap memory and close all fds; idempotent."""
        self._stop_all()
        self.memory.close()
        with self._backend_lock:
            sock, self._backend_req = self._backend_req, None
        if sock is not None:
            sock.close()
        self.backend.reset()
