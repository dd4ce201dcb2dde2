"""Channels over operating-system objects, and their addresses (private).

Each module implements one transport by overriding the hooks of
:class:`~iochannel.Channel` and nothing else: sockets (with fd passing), files
and pipes, child processes, in-memory pairs and buffers, the null channel, a
channel stapled from a reader and a writer, listeners, and QEMU's socket
address forms.

Import the public names from :mod:`iochannel`, not from here.
"""
