"""In-window push-to-talk: an event filter on the main window (the fallback without global hooks).

Used when no global source is available (a Wayland session without evdev access, no X
display, ...): keys and mouse buttons work only while the window has focus, and the UI shows the
reason the global sources gave (:func:`voipclient.ptt.sources.choose_source`).

The filter sits on the main window's ``QWindow`` (``widget.windowHandle()``): Qt delivers every
key and mouse event of the window there first, exactly once, before it forwards it to the focused
child widget, so the filter sees keys typed into any child without double counting. Auto-repeat
events are dropped. When the window loses focus or is hidden, every input the filter saw go down
is reported up (Qt will never deliver those releases).

PySide6 is imported inside :meth:`QtShortcutSource.start` only. The callback runs on the GUI
thread. The name mapping (:func:`qt_key_name`, :func:`qt_button_name`) is pure.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from voipclient.ptt.sources import InputCallback, InputEvent

__all__ = ["QtShortcutSource", "qt_button_name", "qt_event_key_name", "qt_key_name"]

_QT_KEYS = {
    "Key_Space": "space",
    "Key_Return": "enter",
    "Key_Enter": "kp_enter",
    "Key_Tab": "tab",
    "Key_Backtab": "tab",
    "Key_Escape": "esc",
    "Key_Backspace": "backspace",
    "Key_Delete": "delete",
    "Key_Insert": "insert",
    "Key_Home": "home",
    "Key_End": "end",
    "Key_PageUp": "page_up",
    "Key_PageDown": "page_down",
    "Key_Up": "up",
    "Key_Down": "down",
    "Key_Left": "left",
    "Key_Right": "right",
    "Key_CapsLock": "caps_lock",
    "Key_NumLock": "num_lock",
    "Key_ScrollLock": "scroll_lock",
    "Key_Print": "print_screen",
    "Key_Pause": "pause",
    "Key_Menu": "menu",
    "Key_AltGr": "alt_gr",
    "Key_Control": "ctrl",
    "Key_Shift": "shift",
    "Key_Alt": "alt",
    "Key_Meta": "super",
    "Key_Super_L": "super_l",
    "Key_Super_R": "super_r",
    "Key_Tools": "f13",
    "Key_QuoteLeft": "grave",
    "Key_AsciiTilde": "grave",
    "Key_Minus": "minus",
    "Key_Underscore": "minus",
    "Key_Equal": "equal",
    "Key_Plus": "equal",
    "Key_BracketLeft": "bracket_left",
    "Key_BraceLeft": "bracket_left",
    "Key_BracketRight": "bracket_right",
    "Key_BraceRight": "bracket_right",
    "Key_Backslash": "backslash",
    "Key_Bar": "backslash",
    "Key_Semicolon": "semicolon",
    "Key_Colon": "semicolon",
    "Key_Apostrophe": "apostrophe",
    "Key_QuoteDbl": "apostrophe",
    "Key_Comma": "comma",
    "Key_Period": "period",
    "Key_Slash": "slash",
    "Key_Question": "slash",
    "Key_Less": "less",
    "Key_Greater": "less",
    "Key_Exclam": "1",
    "Key_At": "2",
    "Key_NumberSign": "3",
    "Key_Dollar": "4",
    "Key_Percent": "5",
    "Key_AsciiCircum": "6",
    "Key_Ampersand": "7",
    "Key_Asterisk": "8",
    "Key_ParenLeft": "9",
    "Key_ParenRight": "0",
    "Key_MediaPlay": "media_play_pause",
    "Key_MediaTogglePlayPause": "media_play_pause",
    "Key_MediaNext": "media_next",
    "Key_MediaPrevious": "media_previous",
    "Key_MediaStop": "media_stop",
    "Key_VolumeUp": "volume_up",
    "Key_VolumeDown": "volume_down",
    "Key_VolumeMute": "volume_mute",
}

_KEYPAD = {
    "Key_Plus": "kp_add",
    "Key_Minus": "kp_subtract",
    "Key_Asterisk": "kp_multiply",
    "Key_Slash": "kp_divide",
    "Key_Period": "kp_decimal",
    "Key_Comma": "kp_decimal",
    "Key_Enter": "kp_enter",
}

# X11 keysyms in QKeyEvent.nativeVirtualKey() that tell the side of a modifier.
_X11_SIDES = {
    0xFFE1: "shift_l",
    0xFFE2: "shift_r",
    0xFFE3: "ctrl_l",
    0xFFE4: "ctrl_r",
    0xFFE9: "alt_l",
    0xFFEA: "alt_r",
    0xFFEB: "super_l",
    0xFFEC: "super_r",
}


def qt_key_name(
    key: str, *, keypad: bool = False, native_virtual_key: int = 0, platform: str = sys.platform
) -> str:
    """Normalized name of a ``Qt.Key`` given by its enum name (``"Key_F13"``)."""
    if platform.startswith("linux") and native_virtual_key in _X11_SIDES:
        return _X11_SIDES[native_virtual_key]
    if platform == "darwin" and key in ("Key_Control", "Key_Meta"):
        # Qt on macOS reports Command as Key_Control and Control as Key_Meta.
        return "super" if key == "Key_Control" else "ctrl"
    suffix = key.removeprefix("Key_")
    if keypad:
        if len(suffix) == 1 and suffix.isdigit():
            return f"kp_{suffix}"
        if key in _KEYPAD:
            return _KEYPAD[key]
    if len(suffix) == 1 and (suffix.isdigit() or "A" <= suffix <= "Z"):
        return suffix.lower()
    if suffix.startswith("F") and suffix[1:].isdigit() and 1 <= int(suffix[1:]) <= 24:
        return suffix.lower()
    if key in _QT_KEYS:
        return _QT_KEYS[key]
    return f"key_{key.lower()}"


def qt_event_key_name(event: Any) -> str:
    """The canonical input name of a ``QKeyEvent`` (imports PySide6, so only call it from Qt
    code: the in-window source and the settings' hotkey capture)."""
    from PySide6.QtCore import Qt

    try:
        key = Qt.Key(event.key()).name
    except ValueError:
        key = f"0x{int(event.key()):x}"
    return qt_key_name(
        key,
        keypad=bool(event.modifiers() & Qt.KeyboardModifier.KeypadModifier),
        native_virtual_key=int(event.nativeVirtualKey()),
    )


def qt_button_name(button_value: int) -> str:
    """Normalized name of a ``Qt.MouseButton`` value (one bit)."""
    if button_value <= 0 or button_value & (button_value - 1):
        return "mouse_unknown"
    index = button_value.bit_length() - 1  # 0 left, 1 right, 2 middle, 3 back, 4 forward, ...
    if index < 3:
        return ("mouse_left", "mouse_right", "mouse_middle")[index]
    return f"mouse{index + 1}" if index + 1 <= 20 else "mouse_unknown"


class QtShortcutSource:
    """Key and mouse presses inside one top-level window (a ``QWidget`` or a ``QWindow``)."""

    name = "qt"

    def __init__(self, window: Any) -> None:
        self._window = window
        self._filter: Any = None
        self._target: Any = None

    def available(self) -> tuple[bool, str]:
        try:
            from PySide6.QtGui import QGuiApplication
        except ImportError as exc:
            return False, f"PySide6 cannot load: {exc}"
        if QGuiApplication.instance() is None:
            return False, "no Qt application"
        return True, "in-window shortcuts only: they work while the window has focus"

    def start(self, callback: InputCallback) -> None:
        if self._filter is not None:
            raise RuntimeError("Qt shortcut source already started")
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        from PySide6.QtCore import QEvent, QObject
        from PySide6.QtGui import QWindow

        window = self._window
        if not isinstance(window, QWindow):
            top = window.window()
            top.winId()  # create the native window so windowHandle() exists before show()
            window = top.windowHandle()
        if window is None:
            raise RuntimeError("the window has no native handle")

        key_types = {QEvent.Type.KeyPress, QEvent.Type.KeyRelease}
        button_types = {
            QEvent.Type.MouseButtonPress,
            QEvent.Type.MouseButtonDblClick,
            QEvent.Type.MouseButtonRelease,
        }
        lost_types = {QEvent.Type.FocusOut, QEvent.Type.Hide, QEvent.Type.WindowDeactivate}

        class _Filter(QObject):
            def __init__(self) -> None:
                super().__init__()
                self.held: set[str] = set()

            def _report(self, name: str, pressed: bool, at: float) -> None:
                if pressed:
                    self.held.add(name)
                else:
                    self.held.discard(name)
                callback(InputEvent(name, pressed, at))

            def eventFilter(self, _obj: Any, event: Any) -> bool:
                at = time.monotonic()
                kind = event.type()
                if kind in key_types:
                    if event.isAutoRepeat():
                        return False
                    self._report(qt_event_key_name(event), kind == QEvent.Type.KeyPress, at)
                elif kind in button_types:
                    name = qt_button_name(int(event.button().value))
                    self._report(name, kind != QEvent.Type.MouseButtonRelease, at)
                elif kind in lost_types:
                    for name in sorted(self.held):
                        self._report(name, False, at)
                return False  # observe only: the window still gets its events

        self._filter = _Filter()
        self._target = window
        window.installEventFilter(self._filter)

    def stop(self) -> None:
        if self._filter is None:
            return
        if self._target is not None:
            self._target.removeEventFilter(self._filter)
        self._filter.deleteLater()
        self._filter = None
        self._target = None
