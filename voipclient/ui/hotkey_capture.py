"""A button that records a push-to-talk chord: keys and mouse buttons pressed together.

Click it (or press Enter or Space while it has focus) and it grabs the keyboard and the mouse.
Every key and button pressed while at least one is held joins the chord; when all are up again the
chord is final and :attr:`HotkeyCaptureWidget.captured` carries its canonical text
(``"ctrl+shift+f13"``, ``"mouse4"``), normalised by :meth:`voipclient.ptt.router.Binding.describe`.

* Esc on its own cancels; so does losing focus or the window losing activation.
* Auto-repeat events are ignored.
* The left click that starts the capture ends before it starts (capture begins on the release), so
  it never counts. A left click during capture binds ``mouse_left`` only together with a modifier
  (Ctrl, Shift, Alt, Super); a plain left click cancels, so a stray click cannot make the left
  button talk.
* Modifier sides are dropped (``ctrl_l`` → ``ctrl``): a binding with ``ctrl`` matches either key.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal, Slot
from PySide6.QtGui import QFocusEvent, QHideEvent, QKeyEvent, QMouseEvent
from PySide6.QtWidgets import QPushButton, QWidget

from voipclient.ptt.keys import KEY_NAMES
from voipclient.ptt.qt_shortcuts import qt_button_name, qt_event_key_name
from voipclient.ptt.router import Binding, PttConfigError

__all__ = ["HotkeyCaptureWidget", "normalise_chord"]

PROMPT = "Press a key, combination or mouse button… (Esc cancels)"
EMPTY_TEXT = "Click to set a hotkey"
_MODIFIERS = ("ctrl", "shift", "alt", "super")
_SIDED = {f"{m}{side}": m for m in _MODIFIERS for side in ("_l", "_r")}
_QT_MODIFIERS = (
    (Qt.KeyboardModifier.ControlModifier, "ctrl"),
    (Qt.KeyboardModifier.ShiftModifier, "shift"),
    (Qt.KeyboardModifier.AltModifier, "alt"),
    (Qt.KeyboardModifier.MetaModifier, "super"),
)
_TOOLTIP = (
    "Click, or press Enter or Space, then press the key, key combination or mouse button to use. "
    "The hotkey is set when you let go of everything. Esc cancels. A left click counts only "
    "together with a modifier (for example Ctrl + left click); a plain left click cancels."
)


def normalise_chord(names: set[str] | frozenset[str]) -> str:
    """Canonical chord text for input names (modifiers first); ValueError if one is unknown."""
    try:
        return Binding.parse("hotkey", sorted(names), [0]).describe()
    except PttConfigError as exc:
        raise ValueError(str(exc)) from None


def _key_name(event: QKeyEvent) -> str:
    name = qt_event_key_name(event)
    return _SIDED.get(name, name)


class HotkeyCaptureWidget(QPushButton):
    """Shows the current chord; click to record a new one."""

    #: The new chord's canonical text, e.g. ``"ctrl+f13"``; emitted once per completed capture.
    captured = Signal(str)
    #: Capture ended without a chord (Esc, a plain left click, focus loss, :meth:`cancel_capture`).
    cancelled = Signal()
    #: Capture began (the widget now holds the keyboard and mouse grab).
    capture_started = Signal()

    def __init__(self, keys: str = "", parent: QWidget | None = None) -> None:
        # Set before QPushButton.__init__: Qt calls event() from within the setters below.
        self._keys = keys
        self._capturing = False
        self._held: set[str] = set()  # inputs down now (also ones that cannot be bound)
        self._chord: set[str] = set()  # bindable inputs pressed during this capture
        super().__init__(parent)
        self.setObjectName("hotkeyCapture")
        self.setAutoDefault(False)  # Enter starts a capture instead of pressing the dialog's OK
        self.setDefault(False)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setToolTip(_TOOLTIP)
        self.setAccessibleName("Hotkey")
        self.setAccessibleDescription(_TOOLTIP)
        self.clicked.connect(self._on_clicked)
        self._show_keys()

    # -- public API --------------------------------------------------------------------------

    def keys(self) -> str:
        """The current chord text ("" if none)."""
        return self._keys

    def set_keys(self, keys: str) -> None:
        self._keys = keys
        if not self._capturing:
            self._show_keys()

    def is_capturing(self) -> bool:
        return self._capturing

    @Slot()
    def start_capture(self) -> None:
        """Grab keyboard and mouse and wait for a chord."""
        if self._capturing:
            return
        self._capturing = True
        self._held.clear()
        self._chord.clear()
        self.setDown(False)
        self.setFocus(Qt.FocusReason.OtherFocusReason)
        self.grabKeyboard()
        self.grabMouse()
        self.setText(PROMPT)
        self.setAccessibleDescription(PROMPT)
        self.capture_started.emit()

    @Slot()
    def cancel_capture(self) -> None:
        """Stop capturing without changing the chord."""
        if self._end_capture():
            self.cancelled.emit()

    # -- capture state -----------------------------------------------------------------------

    @Slot()
    def _on_clicked(self) -> None:
        self.start_capture()

    def _end_capture(self) -> bool:
        if not self._capturing:
            return False
        self._capturing = False
        self.releaseKeyboard()
        self.releaseMouse()
        self._held.clear()
        self._chord.clear()
        self.setAccessibleDescription(_TOOLTIP)
        self._show_keys()
        return True

    def _show_keys(self) -> None:
        self.setText(self._keys or EMPTY_TEXT)

    def _show_progress(self) -> None:
        if self._chord:
            self.setText(f"{normalise_chord(self._chord)}+…")

    def _press(self, name: str) -> None:
        self._held.add(name)
        if name in KEY_NAMES:
            self._chord.add(name)
            self._show_progress()

    def _release(self, name: str) -> None:
        if name not in self._held:
            return  # released a key pressed before the capture began (the Enter that started it)
        self._held.discard(name)
        if self._held or not self._chord:
            return
        chord = normalise_chord(self._chord)
        self._end_capture()
        self._keys = chord
        self._show_keys()
        self.captured.emit(chord)

    def _modifier_held(self, event: QMouseEvent) -> bool:
        return bool(self._held & set(_MODIFIERS)) or any(
            event.modifiers() & flag for flag, _ in _QT_MODIFIERS
        )

    # -- events --------------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        if self._capturing:
            kind = event.type()
            if kind == QEvent.Type.ShortcutOverride:
                event.accept()  # no shortcut or mnemonic fires while a chord is recorded
                return True
            # Tab/Backtab would move focus in QWidget.event() before keyPressEvent sees them.
            if kind == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
                self.keyPressEvent(event)
                return True
            if kind == QEvent.Type.KeyRelease and isinstance(event, QKeyEvent):
                self.keyReleaseEvent(event)
                return True
        return super().event(event)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.ActivationChange and not self.isActiveWindow():
            self.cancel_capture()  # another window took the focus: our grab is no use any more
        super().changeEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if not self._capturing:
            if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not event.isAutoRepeat():
                event.accept()
                self.start_capture()
                return
            super().keyPressEvent(event)
            return
        event.accept()
        if event.isAutoRepeat():
            return
        name = _key_name(event)
        if name == "esc" and not self._held:
            self.cancel_capture()
            return
        self._press(name)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if not self._capturing:
            super().keyReleaseEvent(event)
            return
        event.accept()
        if event.isAutoRepeat():
            return
        self._release(_key_name(event))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if not self._capturing:
            super().mousePressEvent(event)
            return
        event.accept()
        name = qt_button_name(int(event.button().value))
        if name == "mouse_left" and not self._modifier_held(event):
            self.cancel_capture()
            return
        for flag, modifier in _QT_MODIFIERS:
            # A modifier held before the capture began (or sent without a key event) still counts.
            if event.modifiers() & flag:
                self._chord.add(modifier)
        self._press(name)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if not self._capturing:
            super().mouseDoubleClickEvent(event)
            return
        self.mousePressEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if not self._capturing:
            super().mouseReleaseEvent(event)
            return
        event.accept()
        self._release(qt_button_name(int(event.button().value)))

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self.cancel_capture()
        super().focusOutEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self.cancel_capture()
        super().hideEvent(event)
