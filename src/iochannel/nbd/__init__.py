"""NBD (Network Block Device): the sans-I/O protocol core and the export server.

:mod:`.protocol` speaks the protocol for either side without doing I/O;
:mod:`.server` serves block nodes to NBD clients over asyncio; :mod:`.client`
reads and writes exports of any NBD server, and :mod:`.node` makes one a
block node (``--blockdev driver=nbd``).
"""
