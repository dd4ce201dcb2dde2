"""Random bytes sent to a TLS server always end in a TLSError, never a crash or a hang."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iochannel import SocketChannel, TLSChannel, TLSError

from .test_tls import Creds, make_creds


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Creds:
    return make_creds(str(tmp_path_factory.mktemp("fuzz")))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=400),
        # Plausible record headers with random bodies reach deeper into the parser.
        st.builds(
            lambda kind, body: bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body,
            st.sampled_from([20, 21, 22, 23, 24]),
            st.binary(max_size=300),
        ),
    )
)
def test_random_bytes_to_a_server(creds: Creds, data: bytes) -> None:
    a, b = SocketChannel.pair()
    server = TLSChannel.server(a, creds.server_creds())
    try:
        b.write_all(data)
        b.shutdown()
        try:
            server.handshake()
        except TLSError:
            return
        raise AssertionError("a handshake completed from random bytes")
    finally:
        server.close()
        b.close()
