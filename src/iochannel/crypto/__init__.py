"""Credentials and authorization for the TLS layer.

* :mod:`.creds` — the :class:`Endpoint` role and the :class:`Credentials` base.
* :mod:`.x509` — :class:`X509Credentials`, loaded from a directory with QEMU's
  file names, and :func:`distinguished_name`.
* :mod:`.psk` — :class:`PSKCredentials` from a ``keys.psk`` file.
* :mod:`.authz` — :class:`AuthzList`, a glob allow-list of client identities.
* :mod:`.certs` — making a CA and certificates; ``python -m iochannel.crypto.certs``.
"""

from .authz import AuthzList, AuthzRule, Policy
from .creds import Credentials, CredentialsError, Endpoint
from .psk import PSKCredentials
from .x509 import X509Credentials, distinguished_name

__all__ = [
    "AuthzList",
    "AuthzRule",
    "Credentials",
    "CredentialsError",
    "Endpoint",
    "PSKCredentials",
    "Policy",
    "X509Credentials",
    "distinguished_name",
]
