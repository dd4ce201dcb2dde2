"""Pre-shared-key credentials from a ``keys.psk`` file.

Each line of ``keys.psk`` is ``username:hexkey``.  A server accepts any user in
the file; a client uses *username* (default ``qemu``) and its key.  The file is
validated when loaded: a line without ``:``, an empty user or a key that is not
an even number of hex digits raises :class:`CredentialsError` naming the line.

TLS-PSK needs ``ssl.SSLContext.set_psk_client_callback``, which appeared in
Python 3.13; on older versions :meth:`PSKCredentials.ssl_context` raises
:class:`CredentialsError` saying so.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from .creds import Credentials, CredentialsError, Endpoint, new_context

__all__ = ["PSK_FILE", "PSKCredentials", "psk_supported"]

PSK_FILE = "keys.psk"
DEFAULT_USERNAME = "qemu"
# OpenSSL only offers PSK key exchange in the cipher suites named PSK.
_PSK_CIPHERS = "PSK"


def psk_supported() -> bool:
    """Whether the running Python can do TLS-PSK."""
    return hasattr(ssl.SSLContext, "set_psk_client_callback")


def parse_keys(text: str, source: str) -> dict[str, bytes]:
    """Parse ``username:hexkey`` lines; blank lines are skipped."""
    keys: dict[str, bytes] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        user, sep, hexkey = line.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{source}:{lineno}: expected 'username:hexkey'")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise CredentialsError(
                f"{source}:{lineno}: key for {user!r} is not hexadecimal"
            ) from None
        if not key:
            raise CredentialsError(f"{source}:{lineno}: key for {user!r} is empty")
        keys.setdefault(user, key)
    return keys


class PSKCredentials(Credentials):
    """Keys from *directory*/``keys.psk`` for *endpoint* (see the module doc)."""

    __slots__ = ("directory", "keys", "username")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        endpoint: Endpoint | str,
        *,
        username: str | None = None,
    ) -> None:
        super().__init__(endpoint)
        self.directory = os.fspath(directory)
        if username is not None and self.endpoint is Endpoint.SERVER:
            raise CredentialsError("a PSK username is only meaningful for a client")
        self.username = username or DEFAULT_USERNAME
        path = os.path.join(self.directory, PSK_FILE)
        try:
            with open(path, encoding="ascii") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"cannot load {PSK_FILE} from {path!r}: {exc}") from exc
        self.keys = parse_keys(text, path)
        if self.endpoint is Endpoint.CLIENT and self.username not in self.keys:
            raise CredentialsError(f"{path}: no key for PSK user {self.username!r}")

    def ssl_context(self) -> ssl.SSLContext:
        if not psk_supported():
            raise CredentialsError(
                "TLS-PSK needs Python 3.13 or later (ssl.SSLContext.set_psk_*_callback)"
            )
        ctx = new_context(self.endpoint)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers(_PSK_CIPHERS)
        # Python's PSK callbacks work with TLS 1.2 only.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        set_callback: Any
        if self.endpoint is Endpoint.CLIENT:
            user, key = self.username, self.keys[self.username]
            set_callback = ctx.set_psk_client_callback  # type: ignore[attr-defined]
            set_callback(lambda _hint: (user, key))
        else:
            keys = self.keys
            set_callback = ctx.set_psk_server_callback  # type: ignore[attr-defined]
            set_callback(lambda identity: keys.get(identity or "", b""))
        return ctx
