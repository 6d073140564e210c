"""The game overlay: a small always-on-top window over the game listing who is talking in which
channel, in the channel's colour, and where our own voice goes ("You → Squad A", lit while we
transmit there).

It only renders: the rows come from :func:`~voipclient.ui.overlay_model.overlay_rows` (pure,
tested without a display) and the data from :meth:`Overlay.set_state`, so it knows nothing of the
controller. What it remembers (geometry, opacity, lock) is :meth:`Overlay.save_state` /
:meth:`Overlay.restore_state`, a JSON-ready dict validated by the pure
:class:`~voipclient.ui.overlay_model.OverlaySettings`.

* **Locked** (the default): frameless, on top, never focused, and transparent for input
  (``Qt.WindowType.WindowTransparentForInput``: an empty X11 input shape, ``WS_EX_TRANSPARENT``
  on Windows), so clicks go to the game underneath.
* **Unlocked**: takes the mouse; drag anywhere to move it (the window manager's move when it
  offers one), resize it from the bottom-right grip; a dashed frame shows it is unlocked, and a
  right click offers "Lock overlay" and "Hide overlay".

Readable over any game: every row sits on its own dark, rounded, semi-transparent pill with
light text and a dark drop shadow; sizes follow the widget's font; long names are elided, and the
rows that fit (at most :attr:`OverlaySettings.max_rows`) end with "+N more".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QFont,
    QFontMetrics,
    QGuiApplication,
    QMouseEvent,
    QMoveEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QScreen,
)
from PySide6.QtWidgets import QMenu, QSizeGrip, QWidget

from voipclient.ui.overlay_model import (
    MIN_HEIGHT,
    MIN_WIDTH,
    Box,
    OverlayRow,
    OverlaySettings,
    OverlayState,
    clamp_opacity,
    load_overlay_settings,
    overlay_rows,
    place_on_screens,
    save_overlay_settings,
)
from voipclient.ui.prefs import PrefsBackend

__all__ = ["LOCKED_FLAGS", "UNLOCKED_FLAGS", "DrawnRow", "Overlay"]

WF = Qt.WindowType
WA = Qt.WidgetAttribute

#: Unlocked: its own top-level window (a tool window: no taskbar entry), no frame, above other
#: windows, never taking the keyboard focus from the game.
UNLOCKED_FLAGS: Final = (
    WF.Tool | WF.FramelessWindowHint | WF.WindowStaysOnTopHint | WF.WindowDoesNotAcceptFocus
)
#: Locked: the same, and clicks go through it to the window underneath.
LOCKED_FLAGS: Final = UNLOCKED_FLAGS | WF.WindowTransparentForInput

TEXT: Final = QColor("#f2f3f5")
DIM_TEXT: Final = QColor("#b5bac1")
SHADOW: Final = QColor(0, 0, 0, 220)
#: Behind each row: dark enough for light text over a bright scene, light enough to see through.
PILL: Final = QColor(17, 18, 20, 180)
UNLOCKED_FILL: Final = QColor(30, 31, 34, 110)
UNLOCKED_BORDER: Final = QColor("#5865f2")  # the theme's accent
#: After a move, resize or setting change, this long without another one, ms: ``settings_changed``.
SAVE_DELAY_MS: Final = 400
ARROW: Final = " → "
PLACEHOLDER: Final = "Voice overlay: drag to move, right-click to lock"


@dataclass(frozen=True, slots=True)
class DrawnRow:
    """A row as laid out at the overlay's current size and font (widget coordinates)."""

    row: OverlayRow
    #: The row's rounded background.
    rect: QRect
    #: The channel-colour dot (empty for a "more" row).
    chip: QRect
    #: The texts as drawn, elided to fit: the name, the channel, what sends our voice there.
    name: str
    channel: str
    key: str

    @property
    def text(self) -> str:
        if self.row.kind == "more":
            return self.name
        text = f"{self.name}{ARROW}{self.channel}"
        return f"{text} ({self.key})" if self.key else text


@dataclass(frozen=True, slots=True)
class _Metrics:
    """Sizes derived from the font (px): everything scales with it."""

    font: QFont
    fm: QFontMetrics
    pad: int  # window edge to rows
    pitch: int  # row to row
    row_h: int  # a row's background height
    inner: int  # inside a row: edge to dot, dot to text, text to edge
    chip: int  # the dot's diameter

    @classmethod
    def of(cls, base: QFont) -> _Metrics:
        font = QFont(base)
        font.setWeight(QFont.Weight.DemiBold)
        fm = QFontMetrics(font)
        h = fm.height()
        return cls(
            font=font,
            fm=fm,
            pad=max(3, h // 4),
            pitch=round(h * 1.5),
            row_h=round(h * 1.5) - max(2, h // 8),
            inner=max(4, h // 3),
            chip=max(6, round(h * 0.55)),
        )


class Overlay(QWidget):
    """The overlay window (make it without a parent: a tool window with a parent is hidden when
    the main window is minimised, which is exactly when a game runs)."""

    #: The geometry, opacity, lock or another remembered setting changed (debounced by
    #: :data:`SAVE_DELAY_MS`): store :meth:`save_state` now.
    settings_changed = Signal()
    #: Locked (True) or unlocked (False), by :meth:`set_locked` or the overlay's own menu.
    locked_changed = Signal(bool)
    #: The user chose "Hide overlay" in the unlocked overlay's menu (the app hides it and
    #: updates its own switch).
    hide_requested = Signal()

    def __init__(self) -> None:
        super().__init__(None, LOCKED_FLAGS)
        self.setObjectName("voiceOverlay")
        self.setWindowTitle("Voice overlay")
        self.setAccessibleName("Voice overlay")
        self.setAttribute(WA.WA_TranslucentBackground)
        self.setAttribute(WA.WA_ShowWithoutActivating)
        self.setAttribute(WA.WA_X11DoNotAcceptFocus)
        # macOS hides tool windows while another application (the game) is active.
        self.setAttribute(WA.WA_MacAlwaysShowToolWindow)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._settings = OverlaySettings()
        self._state = OverlayState()
        self._rows: tuple[OverlayRow, ...] = ()
        self._drag_offset: QPoint | None = None
        #: Try the window manager's own move first (the only way on Wayland); tests turn it off.
        self.use_system_move = True
        self._grip = QSizeGrip(self)
        self._grip.setObjectName("overlayResizeGrip")
        self._grip.setToolTip("Drag to resize the overlay")
        self._grip.hide()
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.settings_changed)
        self.setWindowOpacity(self._settings.opacity)
        self._set_minimum_size()
        self.setGeometry(self._default_geometry())
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication):
            app.screenRemoved.connect(self._screen_removed)

    # -- data in ---------------------------------------------------------------------------------
    def set_state(self, state: OverlayState) -> None:
        """What to show (repaints only when the rows change)."""
        self._state = state
        self._relayout()

    def state(self) -> OverlayState:
        return self._state

    def rows(self) -> tuple[OverlayRow, ...]:
        """The rows shown now: :func:`overlay_rows` of the state, as many as fit the height."""
        return self._rows

    def drawn_rows(self) -> tuple[DrawnRow, ...]:
        """The rows as laid out now: where each one is painted and its texts after elision."""
        m = _Metrics.of(self.font())
        width = self.width() - 2 * m.pad
        # dot and paddings; the texts get the rest
        fixed = 3 * m.inner + m.chip
        out: list[DrawnRow] = []
        for i, row in enumerate(self._rows):
            y = m.pad + i * m.pitch
            name, channel, key = self._elide(m, row, width - fixed)
            if row.kind == "more":
                text_w = m.fm.horizontalAdvance(name)
                rect = QRect(m.pad, y, min(width, 2 * m.inner + text_w), m.row_h)
                chip = QRect()
            else:
                text_w = m.fm.horizontalAdvance(self._joined(name, channel, key))
                rect = QRect(m.pad, y, min(width, fixed + text_w), m.row_h)
                top = y + (m.row_h - m.chip) // 2
                chip = QRect(m.pad + m.inner, top, m.chip, m.chip)
            out.append(DrawnRow(row, rect, chip, name, channel, key))
        return tuple(out)

    # -- settings --------------------------------------------------------------------------------
    def is_locked(self) -> bool:
        return self._settings.locked

    @Slot(bool)
    def set_locked(self, locked: bool) -> None:
        """Locked: click-through. Unlocked: movable and resizable, with a visible frame.

        Changing window flags re-creates the native window and hides it: a visible overlay is
        shown again at the same place."""
        if locked == self._settings.locked:
            return
        self._settings = replace(self._settings, locked=locked)
        visible, geometry = self.isVisible(), self.geometry()
        self.setWindowFlags(LOCKED_FLAGS if locked else UNLOCKED_FLAGS)
        self.setGeometry(geometry)
        self._grip.setVisible(not locked)
        if locked:
            self.unsetCursor()
        else:
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        self._drag_offset = None
        if visible:
            self.show()
        self.setWindowOpacity(self._settings.opacity)  # the new native window gets it too
        self.update()
        self.locked_changed.emit(locked)
        self._save_timer.start()

    def opacity(self) -> float:
        return self._settings.opacity

    @Slot(float)
    def set_opacity(self, opacity: float) -> None:
        """The whole window's opacity, clamped to 0.2..1.0 (not a number: unchanged)."""
        value = clamp_opacity(opacity, self._settings.opacity)
        self._settings = replace(self._settings, opacity=value)
        self.setWindowOpacity(value)
        self._save_timer.start()

    def show_idle(self) -> bool:
        return self._settings.show_idle

    @Slot(bool)
    def set_show_idle(self, show: bool) -> None:
        """Show unlit "You → channel" rows for the channels a key can send to."""
        self._settings = replace(self._settings, show_idle=show)
        self._relayout()
        self._save_timer.start()

    def max_rows(self) -> int:
        return self._settings.max_rows

    def set_max_rows(self, rows: int) -> None:
        settings = OverlaySettings.from_dict({"max_rows": rows})  # clamped like a stored value
        self._settings = replace(self._settings, max_rows=settings.max_rows)
        self._relayout()
        self._save_timer.start()

    def save_state(self) -> dict[str, object]:
        """What to store (JSON-ready): geometry, opacity, lock, idle rows, row limit."""
        return replace(self._settings, geometry=_box(self.geometry())).to_dict()

    def restore_state(self, raw: object) -> None:
        """Apply what :meth:`save_state` returned (or garbage: whatever is unusable keeps its
        default, numbers are clamped). A place no screen shows enough of any more is brought
        back onto a screen (see :func:`place_on_screens`); no stored place: the default one."""
        settings = raw if isinstance(raw, OverlaySettings) else OverlaySettings.from_dict(raw)
        self.set_locked(settings.locked)
        self.set_opacity(settings.opacity)
        self._settings = replace(
            self._settings, show_idle=settings.show_idle, max_rows=settings.max_rows
        )
        box = settings.geometry  # the live geometry is the window's: kept out of _settings
        if box is None:
            self.setGeometry(self._default_geometry())
        else:
            fitted = place_on_screens(box, self._screens())
            self.setGeometry(fitted.x, fitted.y, fitted.width, fitted.height)
        self._relayout()

    def save_to(self, backend: PrefsBackend) -> None:
        """:meth:`save_state` as JSON text under ``overlay/state`` (the app's QSettings)."""
        save_overlay_settings(backend, OverlaySettings.from_dict(self.save_state()))

    def restore_from(self, backend: PrefsBackend) -> None:
        """:meth:`restore_state` from what :meth:`save_to` stored (defaults when absent/bad)."""
        self.restore_state(load_overlay_settings(backend))

    # -- layout and painting ---------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        m = _Metrics.of(self.font())
        width = m.fm.averageCharWidth() * 30 + 3 * m.inner + m.chip + 2 * m.pad
        return QSize(width, 2 * m.pad + self._settings.max_rows * m.pitch)

    def _default_geometry(self) -> QRect:
        size = self.sizeHint()
        screen = QGuiApplication.primaryScreen()
        if screen is None:
            return QRect(QPoint(24, 24), size)
        area = screen.availableGeometry()
        return QRect(area.topLeft() + QPoint(24, 24), size.boundedTo(area.size()))

    def _set_minimum_size(self) -> None:
        m = _Metrics.of(self.font())  # one short row
        self.setMinimumSize(max(MIN_WIDTH, m.fm.averageCharWidth() * 8), max(MIN_HEIGHT, m.pitch))

    @staticmethod
    def _screens(leaving: QScreen | None = None) -> list[Box]:
        """The screens' available areas (without ``leaving``, a screen being removed)."""
        return [_box(s.availableGeometry()) for s in QGuiApplication.screens() if s is not leaving]

    def _fitting_rows(self) -> int:
        m = _Metrics.of(self.font())
        fit = (self.height() - 2 * m.pad - m.row_h) // m.pitch + 1
        return max(1, min(self._settings.max_rows, fit))

    def _relayout(self) -> None:
        rows = overlay_rows(
            self._state, max_rows=self._fitting_rows(), show_idle=self._settings.show_idle
        )
        if rows != self._rows:
            self._rows = rows
            self.setAccessibleDescription("\n".join(r.text for r in rows))
            self.update()

    @staticmethod
    def _joined(name: str, channel: str, key: str) -> str:
        return f"{name}{ARROW}{channel}" + (f"  {key}" if key else "")

    def _elide(self, m: _Metrics, row: OverlayRow, room: int) -> tuple[str, str, str]:
        """Name, channel and key shortened to ``room`` px: the key goes first, then the name and
        the channel share the room (neither below half of it while the other needs more)."""
        fm = m.fm
        if row.kind == "more":
            return _fit(fm, row.name, room + m.chip + m.inner), "", ""
        key = row.key
        if key and fm.horizontalAdvance(self._joined(row.name, row.channel, key)) > room:
            key = ""
        room -= fm.horizontalAdvance(ARROW) + (fm.horizontalAdvance(f"  {key}") if key else 0)
        name_w, channel_w = fm.horizontalAdvance(row.name), fm.horizontalAdvance(row.channel)
        if name_w + channel_w <= room:
            return row.name, row.channel, key
        channel_room = min(channel_w, max(room // 2, room - name_w))
        return _fit(fm, row.name, room - channel_room), _fit(fm, row.channel, channel_room), key

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.TextAntialiasing)
        m = _Metrics.of(self.font())
        p.setFont(m.font)
        if not self._settings.locked:
            self._paint_unlocked_frame(p, m)
        for drawn in self.drawn_rows():
            self._paint_row(p, m, drawn)
        p.end()

    def _paint_unlocked_frame(self, p: QPainter, m: _Metrics) -> None:
        pen = QPen(UNLOCKED_BORDER, 2, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.setBrush(UNLOCKED_FILL)
        p.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), m.inner, m.inner)
        # the resize corner: three diagonal strokes under the (transparent-looking) size grip
        grip = self._grip.geometry()
        p.setPen(QPen(UNLOCKED_BORDER, 2, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        for i in (1, 2, 3):
            step = 4 + (grip.width() - 4) * i // 4  # inside the dashed frame
            p.drawLine(
                grip.right() - step, grip.bottom() - 4, grip.right() - 4, grip.bottom() - step
            )
        if not self._rows:
            room = self.width() - 2 * m.pad - 2 * m.inner
            text = _fit(m.fm, PLACEHOLDER, room)
            self._text(p, m, QPointF(m.pad + m.inner, self._baseline(m, m.pad)), text, DIM_TEXT)

    @staticmethod
    def _baseline(m: _Metrics, top: int) -> float:
        return top + (m.row_h - m.fm.height()) / 2 + m.fm.ascent()

    @staticmethod
    def _text(p: QPainter, m: _Metrics, at: QPointF, text: str, colour: QColor) -> float:
        """Draws ``text`` with a drop shadow; returns its advance (px)."""
        if text:
            p.setPen(SHADOW)
            p.drawText(at + QPointF(1, 1), text)
            p.setPen(colour)
            p.drawText(at, text)
        return float(m.fm.horizontalAdvance(text))

    def _paint_row(self, p: QPainter, m: _Metrics, d: DrawnRow) -> None:
        row = d.row
        colour = QColor(row.colour) if row.colour else DIM_TEXT
        radius = m.row_h / 3
        p.setPen(Qt.PenStyle.NoPen)
        lit = row.kind == "transmitting"
        p.setBrush(colour if lit else PILL)  # our voice goes there: the whole row lights up
        p.drawRoundedRect(QRectF(d.rect), radius, radius)
        if row.kind == "more":
            at = QPointF(d.rect.x() + m.inner, self._baseline(m, d.rect.y()))
            self._text(p, m, at, d.name, DIM_TEXT)
            return
        chip = QRectF(d.chip)
        if lit:  # a white "LED" on the channel-coloured row
            p.setPen(QPen(SHADOW, 1))
            p.setBrush(TEXT)
        elif row.kind == "ready":  # unlit: a ring
            p.setPen(QPen(colour, max(1.5, m.chip / 5)))
            p.setBrush(Qt.BrushStyle.NoBrush)
            chip = chip.adjusted(1, 1, -1, -1)
        else:
            p.setBrush(colour)
        p.drawEllipse(chip)
        x = float(d.chip.right() + 1 + m.inner)
        baseline = self._baseline(m, d.rect.y())
        name_colour = TEXT if row.kind != "ready" else DIM_TEXT
        channel_colour = TEXT if lit else QColor(colour)
        if row.kind == "ready":
            channel_colour.setAlpha(190)
        x += self._text(p, m, QPointF(x, baseline), d.name, name_colour)
        x += self._text(p, m, QPointF(x, baseline), ARROW, TEXT if lit else DIM_TEXT)
        x += self._text(p, m, QPointF(x, baseline), d.channel, channel_colour)
        if d.key:
            self._text(p, m, QPointF(x, baseline), f"  {d.key}", TEXT if lit else DIM_TEXT)

    # -- events ----------------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.FontChange:  # everything is sized from the font
            self._set_minimum_size()
            self._relayout()
            self.update()
        super().changeEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        hint = self._grip.sizeHint()
        self._grip.setGeometry(
            self.width() - hint.width(), self.height() - hint.height(), hint.width(), hint.height()
        )
        self._relayout()
        if self.isVisible():
            self._save_timer.start()
        super().resizeEvent(event)

    def moveEvent(self, event: QMoveEvent) -> None:
        if self.isVisible():
            self._save_timer.start()
        super().moveEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self._settings.locked or event.button() != Qt.MouseButton.LeftButton:
            event.ignore()
            return
        event.accept()
        handle = self.windowHandle()
        if self.use_system_move and handle is not None and handle.startSystemMove():
            return  # the window manager moves it (and we get moveEvents)
        self._drag_offset = event.globalPosition().toPoint() - self.pos()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag_offset is None or not event.buttons() & Qt.MouseButton.LeftButton:
            event.ignore()
            return
        event.accept()
        self.move(event.globalPosition().toPoint() - self._drag_offset)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._drag_offset is None:
            event.ignore()
            return
        event.accept()
        self._drag_offset = None

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        if self._settings.locked:
            event.ignore()
            return
        menu = self._menu()
        menu.exec(event.globalPos())
        menu.deleteLater()

    def _menu(self) -> QMenu:
        menu = QMenu(self)
        menu.setObjectName("overlayMenu")
        lock = menu.addAction("&Lock overlay (clicks go through)")
        lock.setObjectName("overlayLockAction")
        lock.triggered.connect(lambda: self.set_locked(True))
        hide = menu.addAction("&Hide overlay")
        hide.setObjectName("overlayHideAction")
        hide.triggered.connect(self.hide_requested)
        return menu

    @Slot(QScreen)
    def _screen_removed(self, screen: QScreen) -> None:
        """A monitor went away: bring the overlay back if it was there."""
        box = _box(self.geometry())
        fitted = place_on_screens(box, self._screens(leaving=screen))
        if fitted != box:
            self.setGeometry(fitted.x, fitted.y, fitted.width, fitted.height)


def _fit(fm: QFontMetrics, text: str, room: int) -> str:
    """``text``, elided at the end to ``room`` px (``elidedText`` alone elides some texts that
    fit exactly)."""
    if fm.horizontalAdvance(text) <= room:
        return text
    return fm.elidedText(text, Qt.TextElideMode.ElideRight, max(0, room))


def _box(r: QRect) -> Box:
    return Box(r.x(), r.y(), r.width(), r.height())
