"""The documentation's generated pages: the chardev lifecycle and the QEMU support matrix.

docs/conf.py draws them from the code at build time; these tests check that what it draws is
what the code does, and that the support matrix's hand-written gaps cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from iochannel.chardev import LIFECYCLE, ChardevEvent
from iochannel.chardev.events import LifecycleView

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def conf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_event_in_every_state_is_in_the_table() -> None:
    assert set(LIFECYCLE) == {(state, event) for state in (False, True) for event in ChardevEvent}


@pytest.mark.parametrize(("state", "event"), list(LIFECYCLE))
def test_a_registration_does_what_the_table_says(state: bool, event: ChardevEvent) -> None:
    view = LifecycleView("c")
    view.open = state
    after = LIFECYCLE[state, event]
    assert view.filter(event, duplicate_ok=True) is not isinstance(after, str)
    assert view.open is (state if isinstance(after, str) else after)


def test_the_lifecycle_page_draws_the_table(conf: ModuleType) -> None:
    assert (
        "<!-- generated: chardev-lifecycle -->"
        in (DOCS / "explanation" / "chardev-lifecycle.md").read_text()
    )
    drawn = conf.lifecycle()
    assert "──▶│ closed │" in drawn and "OPENED" in drawn.splitlines()[1]
    for (state, event), after in LIFECYCLE.items():
        was = "open" if state else "closed"
        if isinstance(after, str):
            assert f"| {was} | `{event.name}` | no: {after} | {was} |" in drawn
        else:
            assert f"| {was} | `{event.name}` | yes | {'open' if after else 'closed'} |" in drawn


def test_the_support_matrix_explains_every_gap(conf: ModuleType) -> None:
    page = (DOCS / "support.md").read_text()
    assert conf.check_gaps(page) == []
    gaps = conf.gaps(page)
    assert "parallel" in gaps["chardev-backends"] and "blockdev-mirror" in gaps["qmp-commands"]
    assert all(gaps[kind] for kind in ("chardev-backends", "qmp-commands"))
    commands = conf.qmp_commands()
    assert {"chardev-add", "blockdev-add", "query-hub-members"} <= set(commands)
    assert "| `socket` |" in conf.backends_table()


def test_a_gap_table_that_drifted_fails_the_build(conf: ModuleType) -> None:
    page = (DOCS / "support.md").read_text()
    drifted = page.replace("| `testdev` |", "| `socket` |").replace("`transaction`", "`quit`")
    assert conf.check_gaps(drifted) == [
        "chardev-backends: QEMU's 'testdev' is neither supported nor explained",
        "chardev-backends: 'socket' is supported but listed as a gap",
        "qmp-commands: QEMU's 'transaction' is neither supported nor explained",
        "qmp-commands: 'quit' is supported but listed as a gap",
    ]


def test_the_build_fills_in_the_pages_and_refuses_a_drifted_one(conf: ModuleType) -> None:
    page = (DOCS / "support.md").read_text()
    source = [page]
    conf._generate(None, "support", source)
    assert "<!-- generated:" not in source[0] and "| `query-hub-members` | no |" in source[0]
    with pytest.raises(conf.ExtensionError, match="'quit' is supported but listed as a gap"):
        conf._generate(None, "support", [page.replace("`transaction`", "`quit`")])
    with pytest.raises(conf.ExtensionError, match="nothing generates 'bogus'"):
        conf._generate(None, "x", ["<!-- generated: bogus -->\n"])
