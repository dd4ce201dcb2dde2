"""Test kit shipped with iochannel: the channel conformance suite.

Run :func:`check_two_way_channel` (or the one-way, half-closeable and fd-passing
variants) against a pair maker to check that a channel — including one you
write — keeps the :class:`~iochannel.Channel` contract.
"""

from ._check_channels import (
    CHUNK_COUNT,
    CHUNK_SIZE,
    ConformanceError,
    PairMaker,
    check_fd_passing_channel,
    check_half_closeable_channel,
    check_one_way_channel,
    check_transfer,
    check_two_way_channel,
    pattern,
)

__all__ = [
    "CHUNK_COUNT",
    "CHUNK_SIZE",
    "ConformanceError",
    "PairMaker",
    "check_fd_passing_channel",
    "check_half_closeable_channel",
    "check_one_way_channel",
    "check_transfer",
    "check_two_way_channel",
    "pattern",
]
