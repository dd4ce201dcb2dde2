"""The common shape of TLS credentials.

A :class:`Credentials` object is made for one :class:`Endpoint` (server or
client) and hands out a ready :class:`ssl.SSLContext`.  A TLS channel refuses
credentials made for the other role.  File problems raise
:class:`CredentialsError` naming the file.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping

from ..errors import ConfigurationError

__all__ = ["Credentials", "CredentialsError", "Endpoint", "find_credentials"]


class CredentialsError(ConfigurationError):
    """Credentials could not be loaded, or do not fit the requested use."""


class Endpoint(enum.Enum):
    """Which side of a TLS connection credentials are for."""

    SERVER = "server"
    CLIENT = "client"


class Credentials:
    """Base class: an endpoint role and an :class:`ssl.SSLContext` for it."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint | str) -> None:
        try:
            self.endpoint = Endpoint(endpoint)
        except ValueError:
            raise CredentialsError(
                f"endpoint must be 'server' or 'client', not {endpoint!r}"
            ) from None

    @property
    def verifies_peer(self) -> bool:
        """Whether the peer's certificate is checked (only x509 credentials do)."""
        return False

    def ssl_context(self) -> ssl.SSLContext:
        """The context TLS connections with these credentials are made from."""
        raise NotImplementedError

    def check_endpoint(self, endpoint: Endpoint) -> None:
        """Raise unless these credentials were made for *endpoint*."""
        if endpoint is not self.endpoint:
            raise CredentialsError(
                f"credentials are for a TLS {self.endpoint.value}, "
                f"not a {endpoint.value}: endpoint doesn't match session"
            )


def find_credentials(objects: Mapping[str, object], ident: str, endpoint: Endpoint) -> Credentials:
    """The ``tls-creds`` object *ident* of *objects*, made for *endpoint*.

    Every user of a ``tls-creds`` option (socket chardevs, the NBD server and
    client) looks its object up here, so each refuses in QEMU's words with
    what to fix; raises :class:`CredentialsError`.
    """
    obj = objects.get(ident)
    if obj is None:
        raise CredentialsError(f"No TLS credentials with id '{ident}'")
    if not isinstance(obj, Credentials):
        raise CredentialsError(f"Object with id '{ident}' is not TLS credentials")
    if obj.endpoint is not endpoint:
        raise CredentialsError(
            f"Expecting TLS credentials with a {endpoint.value} endpoint: "
            f"set endpoint={endpoint.value} on '{ident}'"
        )
    return obj


def new_context(endpoint: Endpoint) -> ssl.SSLContext:
    """A context with safe defaults for *endpoint*: TLS 1.2 or later, no tickets."""
    proto = ssl.PROTOCOL_TLS_SERVER if endpoint is Endpoint.SERVER else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(proto)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint is Endpoint.SERVER:
        # No session resumption: TLS 1.3 tickets would be unsolicited bytes that
        # make a fresh client's channel look readable with nothing to read.
        ctx.num_tickets = 0
    return ctx
