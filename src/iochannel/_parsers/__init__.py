"""Sans-I/O parsers of formats several packages share (private).

:mod:`.keyval` reads QEMU's ``key=value,…`` option syntax (chardevs, the
daemon's command line, vhost-user devices); :mod:`.http11` reads one HTTP/1.1
request head with h11 (the web console and the WebSocket server).
"""
