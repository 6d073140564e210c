"""Issue 17 through the real app: the game overlay shows who talks where, in the channel's colour.

bob turns the overlay on from its menu. alice talks in A: bob's overlay lists "alice → A" in A's
colour; bob transmits into B: his own row "You → B" lights. The window is frameless, on top and
click-through while locked; unlocked it takes input. A colour chosen for A is used by the tree,
the chat tab and the overlay alike. After a restart the overlay is shown again where it was,
with its opacity.
"""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import Qt

from ..conftest import A, B, Starter
from .conftest import AppFactory, pair_in, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]


def rows(app: Any) -> list[tuple[str, str, str]]:
    return [(r.kind, r.text, r.colour) for r in app.overlay.rows()]


def test_overlay_shows_talkers_and_own_transmit_in_channel_colours(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice, bob = pair_in(qtbot, make_app, server, A)
    ctl = bob.controller
    ctl.join(B)
    qtbot.waitUntil(lambda: (row := ctl.model.row(B)) is not None and row.joined, timeout=10_000)
    overlay = bob.overlay
    assert not overlay.isVisible()
    bob.window.overlay_show_action.trigger()  # Overlay → Show game overlay
    qtbot.waitUntil(overlay.isVisible, timeout=5_000)
    flags = overlay.windowFlags()
    for flag in (
        Qt.WindowType.WindowStaysOnTopHint,
        Qt.WindowType.FramelessWindowHint,
        Qt.WindowType.WindowTransparentForInput,
    ):
        assert flags & flag, flag
    assert overlay.testAttribute(Qt.WidgetAttribute.WA_TranslucentBackground)

    ctl.set_channel_colour(A, "#E4572E")
    colour_a = ctl.model.row(A).colour  # type: ignore[union-attr]
    assert colour_a == "#e4572e"
    assert bob.window.chat.tab_colour(A) == colour_a  # the chat tab shows it too

    alice.controller.ptt.handle_command(f"press {A}")
    try:
        qtbot.waitUntil(lambda: talking(bob, A, "alice"), timeout=10_000)
        qtbot.waitUntil(lambda: ("talking", "alice → A", colour_a) in rows(bob), timeout=5_000)
    finally:
        alice.controller.ptt.handle_command(f"release {A}")
    qtbot.waitUntil(lambda: all(kind != "talking" for kind, _, _ in rows(bob)), timeout=10_000)

    colour_b = ctl.model.row(B).colour  # type: ignore[union-attr]
    assert colour_b and colour_b != colour_a  # the default palette tells them apart
    ctl.ptt.handle_command(f"press {B}")
    try:
        qtbot.waitUntil(
            lambda: any(
                kind == "transmitting" and text.startswith("You → B") and colour == colour_b
                for kind, text, colour in rows(bob)
            ),
            timeout=10_000,
        )
    finally:
        ctl.ptt.handle_command(f"release {B}")
    qtbot.waitUntil(
        lambda: not any(kind == "transmitting" for kind, _, _ in rows(bob)), timeout=10_000
    )

    # unlocked: it takes clicks (to be moved and sized); locked again: click-through
    bob.window.overlay_lock_action.trigger()
    qtbot.waitUntil(lambda: not overlay.is_locked(), timeout=2_000)
    assert not overlay.windowFlags() & Qt.WindowType.WindowTransparentForInput
    overlay.move(overlay.x() + 40, overlay.y() + 30)
    bob.window.overlay_opacity.setValue(60)
    bob.window.overlay_lock_action.trigger()
    qtbot.waitUntil(overlay.is_locked, timeout=2_000)
    assert overlay.windowFlags() & Qt.WindowType.WindowTransparentForInput
    assert overlay.opacity() == pytest.approx(0.6)
    where = overlay.pos()

    # a restart: shown again, in the same place, as opaque as it was
    bob.shutdown()
    again = make_app("bob")
    qtbot.waitUntil(again.overlay.isVisible, timeout=5_000)
    assert again.window.overlay_show_action.isChecked()
    assert again.overlay.opacity() == pytest.approx(0.6)
    assert again.window.overlay_opacity.value() == 60
    assert (again.overlay.pos() - where).manhattanLength() <= 2
    again.window.overlay_show_action.trigger()  # hidden, and remembered as hidden
    assert not again.overlay.isVisible() and again.controller.prefs.overlay is False
