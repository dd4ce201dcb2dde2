"""The web console: a hub's console in the browser (see :mod:`iochannel.web.console`)."""

from .console import WebConsole
from .viewer import Role, ViewerChardev

__all__ = ["Role", "ViewerChardev", "WebConsole"]
