"""Credentials and authorization for the TLS layer.

* ``creds`` — the :class:`Endpoint` role and the :class:`Credentials` base.
* ``x509`` — :class:`X509Credentials`, loaded from a directory with QEMU's
  file names, and :func:`distinguished_name`.
* ``psk`` — :class:`PSKCredentials` from a ``keys.psk`` file.
* ``authz`` — :class:`AuthzList`, a glob allow-list of client identities.
* ``certs`` — making a CA and certificates; ``python -m iochannel.crypto.certs``.
"""

from .authz import AuthzDeniedError, AuthzList, AuthzRule, Format, Policy
from .creds import Credentials, CredentialsError, Endpoint, find_credentials
from .psk import PSKCredentials
from .x509 import X509Credentials, distinguished_name

__all__ = [
    "AuthzDeniedError",
    "AuthzList",
    "AuthzRule",
    "Credentials",
    "CredentialsError",
    "Endpoint",
    "Format",
    "PSKCredentials",
    "Policy",
    "X509Credentials",
    "distinguished_name",
    "find_credentials",
]
