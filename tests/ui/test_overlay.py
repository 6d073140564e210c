"""The game overlay window on a real X server (Xvfb, no window manager, no compositor).

Click-through is checked for real: the X server itself decides which window a click goes to
from each window's input shape (the SHAPE extension, which Xvfb has; no compositor involved), so
the clicks here are made with XTest (a fake *device* event, hit-tested by the server), never
with ``QTest`` (which hands the event straight to the widget and would pass for any flags).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QMouseEvent
from PySide6.QtWidgets import QApplication, QSizeGrip, QWidget
from Xlib import X
from Xlib import display as xdisplay
from Xlib.ext import shape, xtest

from voipclient.ui.overlay import LOCKED_FLAGS, UNLOCKED_FLAGS, DrawnRow, Overlay
from voipclient.ui.overlay_model import (
    OVERLAY_SETTINGS_KEY,
    OverlayChannel,
    OverlaySettings,
    OverlayState,
    OverlayTalker,
    default_channel_colour,
    load_overlay_settings,
)
from voipclient.ui.prefs import MemoryBackend

pytestmark = pytest.mark.timeout(60)

WF = Qt.WindowType
WA = Qt.WidgetAttribute
GENERAL, SQUAD, AFK = 1, 2, 3
SQUAD_RED = "#e64f4f"
STATE = OverlayState(
    channels=(
        OverlayChannel(GENERAL, "General", can_transmit=True, key="f13"),
        OverlayChannel(SQUAD, "Squad A", SQUAD_RED, transmitting=True, can_transmit=True),
        OverlayChannel(AFK, "AFK"),
    ),
    talkers=(OverlayTalker("Bob", SQUAD), OverlayTalker("Alice", GENERAL)),
)
GENERAL_BLUE = default_channel_colour(GENERAL)


@pytest.fixture(autouse=True)
def on_x11(qapp: QApplication) -> None:
    if qapp.platformName() != "xcb":
        pytest.fail("the overlay tests need a real X server: DISPLAY=:N QT_QPA_PLATFORM=xcb")


@pytest.fixture
def overlay(qtbot: Any) -> Iterator[Overlay]:
    widget = Overlay()
    widget.use_system_move = False  # no window manager here anyway: our own drag
    qtbot.addWidget(widget)
    yield widget
    widget.hide()


def show_at(qtbot: Any, overlay: Overlay, rect: QRect) -> None:
    overlay.setGeometry(rect)
    overlay.show()
    qtbot.waitExposed(overlay)


def image_of(widget: QWidget) -> QImage:
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_ARGB32)
    assert image.devicePixelRatio() == 1.0  # sample points are logical = device pixels here
    return image


def alphas(image: QImage) -> bytes:
    """Every pixel's alpha (ARGB32 is B, G, R, A in memory on this little-endian machine)."""
    data = bytes(image.constBits())
    return data[3::4]


def centre(rect: QRect) -> QPoint:
    return QPoint(rect.x() + rect.width() // 2, rect.y() + rect.height() // 2)


def grip_of(overlay: Overlay) -> QSizeGrip:
    grip = overlay.findChild(QSizeGrip, "overlayResizeGrip")
    assert grip is not None
    return grip


def by_text(overlay: Overlay) -> dict[str, DrawnRow]:
    return {d.text: d for d in overlay.drawn_rows()}


# --- window flags --------------------------------------------------------------------------------


def test_locked_by_default_click_through_on_top_frameless(qtbot: Any, overlay: Overlay) -> None:
    assert overlay.is_locked()
    flags = overlay.windowFlags()
    for flag in (
        WF.WindowTransparentForInput,
        WF.WindowStaysOnTopHint,
        WF.FramelessWindowHint,
        WF.WindowDoesNotAcceptFocus,
    ):
        assert flags & flag, flag
    assert overlay.windowType() == WF.Tool  # no taskbar entry
    assert flags == LOCKED_FLAGS
    assert overlay.testAttribute(WA.WA_TranslucentBackground)
    assert overlay.testAttribute(WA.WA_ShowWithoutActivating)
    assert overlay.isWindow() and overlay.parent() is None
    assert not overlay.testAttribute(WA.WA_QuitOnClose)  # never keeps the app running

    show_at(qtbot, overlay, QRect(300, 200, 260, 180))
    handle = overlay.windowHandle()
    assert handle is not None
    assert handle.flags() & WF.WindowTransparentForInput
    assert handle.format().hasAlpha()  # a translucent (ARGB) native window
    assert QGuiApplication.focusWindow() is not handle
    assert not grip_of(overlay).isVisible()


def test_unlocking_and_locking_re_applies_flags_and_stays_shown(
    qtbot: Any, overlay: Overlay
) -> None:
    rect = QRect(320, 210, 250, 170)
    show_at(qtbot, overlay, rect)
    grip = grip_of(overlay)
    with qtbot.waitSignal(overlay.locked_changed, timeout=1000) as unlocked:
        overlay.set_locked(False)
    assert unlocked.args == [False]
    assert not overlay.is_locked()
    assert overlay.windowFlags() == UNLOCKED_FLAGS
    assert not overlay.windowFlags() & WF.WindowTransparentForInput
    assert overlay.windowFlags() & WF.WindowStaysOnTopHint
    assert overlay.windowFlags() & WF.FramelessWindowHint
    qtbot.waitExposed(overlay)  # shown again after setWindowFlags hid it
    assert overlay.isVisible()
    assert overlay.geometry() == rect
    assert overlay.testAttribute(WA.WA_TranslucentBackground)
    handle = overlay.windowHandle()
    assert handle is not None and not handle.flags() & WF.WindowTransparentForInput
    assert grip.isVisible()
    assert grip.geometry().bottomRight() == overlay.rect().bottomRight()
    assert overlay.cursor().shape() == Qt.CursorShape.SizeAllCursor

    with qtbot.waitSignal(overlay.locked_changed, timeout=1000) as locked:
        overlay.set_locked(True)
    assert locked.args == [True]
    assert overlay.windowFlags() == LOCKED_FLAGS
    qtbot.waitExposed(overlay)
    assert overlay.geometry() == rect
    assert not grip.isVisible()
    handle = overlay.windowHandle()
    assert handle is not None and handle.flags() & WF.WindowTransparentForInput

    # a hidden overlay stays hidden
    overlay.hide()
    overlay.set_locked(False)
    assert not overlay.isVisible()
    assert overlay.windowFlags() == UNLOCKED_FLAGS


# --- click-through, for real ---------------------------------------------------------------------


class Presses(QObject):
    """Counts the mouse presses a widget receives."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self.count = 0
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.MouseButtonPress:
            self.count += 1
        return False


def x_click(x: int, y: int) -> None:
    """A left click at the screen position, as a device event: the X server picks the window."""
    conn = xdisplay.Display()
    try:
        xtest.fake_input(conn, X.MotionNotify, x=x, y=y)
        xtest.fake_input(conn, X.ButtonPress, 1)
        xtest.fake_input(conn, X.ButtonRelease, 1)
        conn.sync()
    finally:
        conn.close()


def input_shape(widget: QWidget) -> list[tuple[int, int, int, int]]:
    """The X window's input region as the server has it (window coordinates)."""
    conn = xdisplay.Display()
    try:
        window = conn.create_resource_object("window", int(widget.winId()))
        reply = window.shape_get_rectangles(shape.SK.Input)
        return [(r.x, r.y, r.width, r.height) for r in reply.rectangles]
    finally:
        conn.close()


def test_clicks_go_through_a_locked_overlay_to_the_window_below(
    qtbot: Any, overlay: Overlay
) -> None:
    game = QWidget()
    game.setWindowTitle("game")
    qtbot.addWidget(game)
    game.setGeometry(100, 100, 600, 450)
    game.show()
    qtbot.waitExposed(game)
    game_presses = Presses(game)

    overlay.set_state(STATE)
    show_at(qtbot, overlay, QRect(200, 180, 260, 180))  # shown after: above the game
    overlay_presses = Presses(overlay)
    inside = (overlay.x() + 40, overlay.y() + 20)  # on a row, where the overlay paints

    assert input_shape(overlay) == []  # locked: an empty input region
    x_click(*inside)
    qtbot.waitUntil(lambda: game_presses.count == 1, timeout=5000)
    assert overlay_presses.count == 0

    overlay.set_locked(False)
    qtbot.waitExposed(overlay)
    assert input_shape(overlay) == [(0, 0, overlay.width(), overlay.height())]
    x_click(*inside)
    qtbot.waitUntil(lambda: overlay_presses.count == 1, timeout=5000)
    assert game_presses.count == 1
    assert overlay.pos() == QPoint(200, 180)  # a click without a drag does not move it

    overlay.set_locked(True)
    qtbot.waitExposed(overlay)
    assert input_shape(overlay) == []
    x_click(inside[0] + 5, inside[1] + 5)
    qtbot.waitUntil(lambda: game_presses.count == 2, timeout=5000)
    assert overlay_presses.count == 1
    game.hide()


# --- what is drawn -------------------------------------------------------------------------------


def test_rows_for_a_state(qtbot: Any, overlay: Overlay) -> None:
    show_at(qtbot, overlay, QRect(100, 100, 300, 240))
    overlay.set_state(STATE)
    assert overlay.state() is STATE
    assert [(r.kind, r.text, r.colour) for r in overlay.rows()] == [
        ("ready", "You → General (f13)", GENERAL_BLUE),
        ("transmitting", "You → Squad A", SQUAD_RED),
        ("talking", "Alice → General", GENERAL_BLUE),
        ("talking", "Bob → Squad A", SQUAD_RED),
    ]
    assert [d.text for d in overlay.drawn_rows()] == [r.text for r in overlay.rows()]
    assert overlay.accessibleDescription().splitlines() == [r.text for r in overlay.rows()]

    overlay.set_show_idle(False)
    assert overlay.rows()[0].text == "You → Squad A"
    overlay.set_state(OverlayState())
    assert overlay.rows() == () and overlay.drawn_rows() == ()


def test_the_channel_colour_is_painted_on_each_row(qtbot: Any, overlay: Overlay) -> None:
    show_at(qtbot, overlay, QRect(100, 100, 300, 240))
    overlay.set_state(STATE)
    image = image_of(overlay)
    rows = by_text(overlay)

    for text, colour in (("Alice → General", GENERAL_BLUE), ("Bob → Squad A", SQUAD_RED)):
        drawn = rows[text]
        # the dot is the channel's colour, opaque
        assert image.pixelColor(centre(drawn.chip)) == QColor(colour), text
        # and so is the channel's name: count pixels of that hue in the text after the arrow
        tinted = 0
        for x in range(drawn.chip.right() + 1, drawn.rect.right()):
            for y in range(drawn.rect.top(), drawn.rect.bottom()):
                if _close(image.pixelColor(x, y), QColor(colour)):
                    tinted += 1
        assert tinted > 20, text

    # our voice goes into Squad A: the whole row is lit in its colour, with a white dot
    lit = rows["You → Squad A"]
    assert image.pixelColor(lit.rect.right() - 2, centre(lit.rect).y()) == QColor(SQUAD_RED)
    assert image.pixelColor(centre(lit.chip)) == QColor("#f2f3f5")
    # General can take our voice, but we are silent: a dark row and a hollow ring
    ready = rows["You → General (f13)"]
    background = image.pixelColor(ready.rect.right() - 2, centre(ready.rect).y())
    assert background.alpha() < 255 and background.lightness() < 40
    assert not _close(image.pixelColor(centre(ready.chip)), QColor(GENERAL_BLUE))
    assert _close(image.pixelColor(ready.chip.left() + 1, centre(ready.chip).y()), GENERAL_BLUE)

    # below the last row and right of the rows: nothing (click-through and see-through)
    assert image.pixelColor(overlay.width() - 3, overlay.height() - 3).alpha() == 0
    last = overlay.drawn_rows()[-1].rect
    assert image.pixelColor(last.right() + 4, last.center().y()).alpha() == 0


def _close(a: QColor, b: QColor | str, tolerance: int = 40) -> bool:
    b = QColor(b)
    return (
        a.alpha() > 200
        and abs(a.red() - b.red()) + abs(a.green() - b.green()) + abs(a.blue() - b.blue())
        <= tolerance
    )


def test_empty_overlay_draws_nothing_locked_and_a_frame_unlocked(
    qtbot: Any, overlay: Overlay
) -> None:
    show_at(qtbot, overlay, QRect(100, 100, 240, 160))
    assert max(alphas(image_of(overlay))) == 0

    overlay.set_locked(False)
    qtbot.waitExposed(overlay)
    image = image_of(overlay)
    assert overlay.drawn_rows() == ()
    assert image.pixelColor(1, overlay.height() // 2).alpha() > 0  # the frame
    assert image.pixelColor(overlay.width() // 2, overlay.height() // 2).alpha() > 0  # tint
    # the placeholder line: light text in the top row
    light = sum(
        1
        for x in range(overlay.width() // 2)
        for y in range(4, 24)
        if image.pixelColor(x, y).lightness() > 150 and image.pixelColor(x, y).alpha() > 150
    )
    assert light > 20


def test_long_names_are_elided_and_extra_rows_become_more(qtbot: Any, overlay: Overlay) -> None:
    long_name = "Bartholomew the Exceedingly Long-Named"
    long_channel = "The Channel With The Longest Name On The Server"
    channels = (OverlayChannel(1, long_channel, transmitting=True, key="ctrl+shift+f13"),)
    talkers = tuple(OverlayTalker(f"{long_name} {i}", 1) for i in range(12))
    show_at(qtbot, overlay, QRect(100, 100, 220, 600))
    overlay.set_state(OverlayState(channels, talkers))

    drawn = overlay.drawn_rows()
    assert len(drawn) == 8  # the most rows by default
    assert drawn[-1].text == "+6 more"  # 13 rows: 7 shown and 6 more
    assert drawn[0].row.kind == "transmitting"
    for d in drawn[1:-1]:
        assert d.name.endswith("…") and d.channel.endswith("…"), d.text
        assert long_name.startswith(d.name[:-1])
        assert long_channel.startswith(d.channel[:-1])
        assert d.rect.right() < overlay.width()
    ours = drawn[0]
    assert ours.name == "You" and ours.channel.endswith("…")  # the short name stays whole
    assert ours.key == ""  # the key gives way first
    assert ours.rect.right() < overlay.width()

    # a lower window shows fewer rows; the last still says how many are left out
    overlay.resize(220, drawn[3].rect.bottom() + 8)
    assert [d.text for d in overlay.drawn_rows()][-1] == "+10 more"
    assert len(overlay.drawn_rows()) == 4

    # everything scales with the font: a bigger font, taller rows, fewer of them
    overlay.resize(220, drawn[-1].rect.bottom() + 8)  # 8 rows fit exactly
    assert len(overlay.drawn_rows()) == 8
    before = overlay.drawn_rows()[1].rect.height()
    font = QFont(overlay.font())
    font.setPointSizeF(font.pointSizeF() * 2)
    overlay.setFont(font)
    assert overlay.drawn_rows()[1].rect.height() >= 2 * before - 2
    assert len(overlay.drawn_rows()) < 8

    # short names are not elided
    overlay.setFont(QFont())
    overlay.set_state(STATE)
    assert [d.name for d in overlay.drawn_rows()] == ["You", "You", "Alice", "Bob"]


# --- opacity, geometry, saving -------------------------------------------------------------------


def test_opacity_is_clamped(qtbot: Any, overlay: Overlay) -> None:
    assert overlay.opacity() == pytest.approx(0.9)
    for asked, expected in ((0.5, 0.5), (0.05, 0.2), (-3.0, 0.2), (7.0, 1.0)):
        overlay.set_opacity(asked)
        assert overlay.opacity() == expected
        assert overlay.windowOpacity() == pytest.approx(expected, abs=0.01)
    overlay.set_opacity(float("nan"))
    assert overlay.opacity() == 1.0  # not a number: unchanged


def test_save_and_restore_round_trip(qtbot: Any, overlay: Overlay) -> None:
    show_at(qtbot, overlay, QRect(410, 230, 290, 210))
    overlay.set_opacity(0.55)
    overlay.set_locked(False)
    overlay.set_show_idle(False)
    overlay.set_max_rows(5)
    with qtbot.waitSignal(overlay.settings_changed, timeout=2000):
        pass  # debounced: one signal after the changes
    saved = overlay.save_state()
    assert saved == {
        "version": 1,
        "x": 410,
        "y": 230,
        "width": 290,
        "height": 210,
        "opacity": 0.55,
        "locked": False,
        "show_idle": False,
        "max_rows": 5,
    }
    backend = MemoryBackend()
    overlay.save_to(backend)  # JSON text under one key, like every preference
    assert json.loads(backend.values[OVERLAY_SETTINGS_KEY]) == saved
    assert load_overlay_settings(backend) == OverlaySettings.from_dict(saved)

    other = Overlay()
    qtbot.addWidget(other)
    other.restore_from(backend)
    assert other.save_state() == saved
    third = Overlay()
    qtbot.addWidget(third)
    third.restore_state(saved)  # the plain dict works too
    assert third.save_state() == saved
    assert other.geometry() == QRect(410, 230, 290, 210)
    assert other.windowFlags() == UNLOCKED_FLAGS
    assert other.windowOpacity() == pytest.approx(0.55, abs=0.01)
    assert not other.show_idle() and other.max_rows() == 5
    other.show()
    qtbot.waitExposed(other)
    assert other.geometry() == QRect(410, 230, 290, 210)
    other.hide()


@pytest.mark.parametrize(
    "garbage",
    [None, "junk", [], {"opacity": "high", "locked": "maybe", "x": "left", "max_rows": None}],
)
def test_restoring_garbage_gives_defaults(qtbot: Any, overlay: Overlay, garbage: object) -> None:
    default = overlay.save_state()
    overlay.set_locked(False)
    overlay.set_opacity(0.3)
    overlay.restore_state(garbage)
    assert overlay.save_state() == default
    assert overlay.is_locked() and overlay.opacity() == pytest.approx(0.9)
    backend = MemoryBackend({OVERLAY_SETTINGS_KEY: json.dumps(garbage) + "}"})
    overlay.set_opacity(0.3)
    overlay.restore_from(backend)  # not even JSON
    assert overlay.save_state() == default


def test_an_off_screen_place_comes_back_onto_the_screen(qtbot: Any, overlay: Overlay) -> None:
    screen = QGuiApplication.primaryScreen().availableGeometry()
    assert screen == QRect(0, 0, 1280, 800)  # the Xvfb screen, no panels

    overlay.restore_state({"x": -3000, "y": 300, "width": 260, "height": 180})
    assert overlay.geometry() == QRect(0, 300, 260, 180)  # the monitor on the left is gone
    overlay.restore_state({"x": 5000, "y": -4000, "width": 260, "height": 180})
    assert overlay.geometry() == QRect(1020, 0, 260, 180)
    overlay.restore_state({"x": 10, "y": 10, "width": 9000, "height": 9000})
    assert overlay.geometry() == screen  # larger than the screen: shrunk onto it
    overlay.restore_state({"x": 1250, "y": 780, "width": 260, "height": 180})  # a sliver
    assert screen.contains(overlay.geometry())
    overlay.restore_state({"x": 1200, "y": 700, "width": 260, "height": 180})  # enough shows
    assert overlay.pos() == QPoint(1200, 700)
    overlay.show()
    qtbot.waitExposed(overlay)
    assert overlay.geometry().intersects(screen)


# --- moving and the menu -------------------------------------------------------------------------


def _mouse(overlay: Overlay, kind: QEvent.Type, at: QPoint, held: bool) -> None:
    """A mouse event at the screen position ``at`` (the left button pressed, held or let go)."""
    button = Qt.MouseButton.LeftButton
    event = QMouseEvent(
        kind,
        QPointF(overlay.mapFromGlobal(at)),
        QPointF(at),
        Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else button,
        button if held else Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(overlay, event)


def _drag(overlay: Overlay, start: QPoint, *steps: QPoint) -> None:
    _mouse(overlay, QEvent.Type.MouseButtonPress, start, True)
    for step in steps:
        _mouse(overlay, QEvent.Type.MouseMove, start + step, True)
    _mouse(overlay, QEvent.Type.MouseButtonRelease, start + steps[-1], False)


def test_dragging_moves_only_an_unlocked_overlay(qtbot: Any, overlay: Overlay) -> None:
    show_at(qtbot, overlay, QRect(200, 200, 240, 160))
    grab_at = QPoint(260, 230)  # on the overlay, 60 px right and 30 down of its corner
    _drag(overlay, grab_at, QPoint(50, 40))
    assert overlay.pos() == QPoint(200, 200)  # locked: not movable

    overlay.set_locked(False)
    qtbot.waitExposed(overlay)
    with qtbot.waitSignal(overlay.settings_changed, timeout=2000):
        _drag(overlay, grab_at, QPoint(50, 40), QPoint(100, 40))
        assert overlay.pos() == QPoint(300, 240)
    assert overlay.save_state()["x"] == 300 and overlay.save_state()["y"] == 240


def test_the_corner_grip_resizes_an_unlocked_overlay(qtbot: Any, overlay: Overlay) -> None:
    show_at(qtbot, overlay, QRect(200, 200, 240, 160))
    overlay.set_locked(False)
    qtbot.waitExposed(overlay)
    grip = grip_of(overlay)
    corner = grip.mapToGlobal(centre(grip.rect()))
    with qtbot.waitSignal(overlay.settings_changed, timeout=2000):
        for kind, at, held in (
            (QEvent.Type.MouseButtonPress, corner, True),
            (QEvent.Type.MouseMove, corner + QPoint(60, 30), True),
            (QEvent.Type.MouseButtonRelease, corner + QPoint(60, 30), False),
        ):
            button = Qt.MouseButton.LeftButton
            QApplication.sendEvent(
                grip,
                QMouseEvent(
                    kind,
                    QPointF(grip.mapFromGlobal(at)),
                    QPointF(at),
                    Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else button,
                    button if held else Qt.MouseButton.NoButton,
                    Qt.KeyboardModifier.NoModifier,
                ),
            )
    qtbot.waitUntil(lambda: overlay.size() == QSize(300, 190), timeout=2000)
    assert overlay.pos() == QPoint(200, 200)
    assert grip.geometry().bottomRight() == overlay.rect().bottomRight()
    assert overlay.save_state()["width"] == 300


def test_the_unlocked_menu_locks_and_hides(qtbot: Any, overlay: Overlay) -> None:
    overlay.set_locked(False)
    menu = overlay._menu()
    actions = {a.objectName(): a for a in menu.actions()}
    with qtbot.waitSignal(overlay.hide_requested, timeout=1000):
        actions["overlayHideAction"].trigger()
    with qtbot.waitSignal(overlay.locked_changed, timeout=1000):
        actions["overlayLockAction"].trigger()
    assert overlay.is_locked()
    menu.deleteLater()
