"""Channels that translate the bytes of another channel (private).

:mod:`.layer` is the base every layer shares (ownership of the master channel,
readiness passed through, one reader and one writer at a time); :mod:`.tls`
and :mod:`.websock` (with :mod:`.websock_handshake`) are the layers.

Import the public names from :mod:`iochannel`, not from here.
"""
