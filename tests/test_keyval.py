"""The shared keyval splitter: both QEMU dialects and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel._parsers import keyval


def test_dialects() -> None:
    assert keyval.split("socket,id=a,path=x,,y,server,nowait", implied="backend") == [
        ("backend", "socket"),
        ("id", "a"),
        ("path", "x,y"),
        ("server", "on"),
        ("wait", "off"),
    ]
    with pytest.raises(keyval.KeyvalError, match="expected 'key=value' at 'server'"):
        keyval.split("id=a,server", short_booleans=False)
    assert keyval.to_tree(keyval.split("addr.type=unix,addr.path=s,id=e")) == {
        "addr": {"type": "unix", "path": "s"},
        "id": "e",
    }


@given(st.text(max_size=80), st.booleans())
def test_any_text_splits_or_raises_keyval_error(text: str, short: bool) -> None:
    try:
        pairs = keyval.split(text, short_booleans=short)
        keyval.to_tree(pairs)
    except keyval.KeyvalError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
