"""Daemon tests run with lifecycle violations raised, not absorbed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iochannel.chardev import set_strict


@pytest.fixture(autouse=True)
def strict_lifecycle() -> Iterator[None]:
    set_strict(True)
    yield
    set_strict(False)
