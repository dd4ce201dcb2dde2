"""QMP, QEMU's JSON management protocol: a sans-I/O server core and a monitor on any chardev."""

from .monitor import MAX_QUEUED, QMPMonitor
from .protocol import CommandSpec, JSONSplitter, QMPError, QMPServerProtocol, Request, SessionState

__all__ = [
    "MAX_QUEUED",
    "CommandSpec",
    "JSONSplitter",
    "QMPError",
    "QMPMonitor",
    "QMPServerProtocol",
    "Request",
    "SessionState",
]
